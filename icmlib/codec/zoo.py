"""CompressAI's pretrained zoo codecs as ``icm`` codecs: ``--model zoo:mbt2018-mean:3``.

The codec shipped with icmlib learned the synthetic world only; on real photos it does
worse than JPEG. CompressAI publishes codecs trained on natural photos (256×256 patches of
the Vimeo-90k dataset, 4-5 M steps), whose hyperprior models write the same two rANS
streams as ours, so an ``.icm`` file can hold their output. This module says where such a
model's weights are cached (torch's hub cache, where CompressAI itself would put them),
loads them, and names what is missing when they are not there.

Downloading is not done here: it belongs to :mod:`icmlib.data.download`, a layer above
the codec. Callers that may download (the ``icm`` command) pass a ``download`` function
(``icmlib.data.hub_checkpoint``); without one, a missing file is a :class:`ModelError`
that says what to download and where to put it.

The ``.icm`` file names its model by :func:`icmlib.codec.model.fingerprint`, a hash of the
weights and CDF tables: each zoo model and quality has its own weights, so a file written
by ``zoo:mbt2018-mean:3`` is refused by ``zoo:mbt2018-mean:4`` or by the default codec.
As in our codec, h_s runs in float64 on the CPU (:class:`ExactHyperSynthesis`), so a file
decodes alike on every device.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch

from compressai.models import MeanScaleHyperprior

from icmlib.codec.determinism import ExactHyperSynthesis
from icmlib.codec.pretrained import ModelError

ZOO_PREFIX = "zoo:"
#: CompressAI zoo models an ``.icm`` file can hold: hyperpriors without a context model
#: (two streams, ŷ then ẑ, coded through CompressAI's entropy coder)
ZOO_MODELS = ("bmshj2018-hyperprior", "mbt2018-mean")
#: what the zoo's codecs learned from (CompressAI's model zoo documentation)
ZOO_TRAINING = "natural photos (256×256 patches of Vimeo-90k, CompressAI's model zoo)"
#: λ each MSE zoo codec was trained with, quality 1..8, in the loss R + λ·255²·MSE (ours):
#: CompressAI's model zoo page (https://interdigitalinc.github.io/CompressAI/zoo.html, "the
#: following loss functions and lambda values were used for training"); the same list is
#: ``ScaleHyperpriorVbr.lmbda`` in compressai/models/vbr.py
ZOO_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)


def is_zoo_spec(model) -> bool:
    """Whether ``--model``'s value names a zoo codec (``zoo:NAME:QUALITY``)."""
    return isinstance(model, str) and model.startswith(ZOO_PREFIX)


def parse_zoo_spec(spec: str) -> Tuple[str, int]:
    """``"zoo:mbt2018-mean:3"`` → ``("mbt2018-mean", 3)``, or a :class:`ModelError` that
    lists what can be chosen."""
    parts = spec.split(":")
    choices = f"NAME one of {', '.join(ZOO_MODELS)}; QUALITY 1 (lowest rate) to 8"
    if len(parts) != 3 or not parts[2].isdigit():
        raise ModelError(f"--model {spec}: a zoo codec is zoo:NAME:QUALITY, e.g. "
                         f"zoo:mbt2018-mean:3 ({choices})")
    name, quality = parts[1], int(parts[2])
    if name not in ZOO_MODELS or not 1 <= quality <= 8:
        raise ModelError(f"--model {spec}: no such zoo codec ({choices})")
    return name, quality


def zoo_weights(name: str, quality: int, metric: str = "mse") -> Tuple[str, Path]:
    """``(url, file)``: where CompressAI publishes a zoo model's weights, and the file in
    torch's hub cache (``$TORCH_HOME/hub/checkpoints``) they are loaded from."""
    from compressai.zoo import image as zoo_image

    urls = zoo_image.model_urls.get(name, {})
    if metric not in urls or quality not in urls[metric]:
        raise ModelError(f"no pretrained CompressAI weights for {name!r}, metric={metric!r}, "
                         f"quality={quality!r}; available: "
                         f"{ {n: {m: sorted(q) for m, q in u.items()} for n, u in zoo_image.model_urls.items()} }")
    url = urls[metric][quality]
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_zoo_weights(name: str, quality: int, path: Path, metric: str = "mse"):
    """A zoo model from its weights file (CompressAI's own loading: its key renames, the
    architecture's ``from_state_dict``), h_s exact, in eval mode with CDF tables ready."""
    from compressai.zoo.image import model_architectures
    from compressai.zoo.pretrained import load_pretrained

    try:
        state = load_pretrained(torch.load(path, map_location="cpu", weights_only=True))
        net = model_architectures[name].from_state_dict(state)
    except Exception as e:  # a damaged or foreign file: say which one
        raise ModelError(f"{path} is not usable {name} weights ({type(e).__name__}: {e}); "
                         f"delete it to download it again") from None
    net.h_s = ExactHyperSynthesis(*net.h_s)  # same state-dict keys: same fingerprint
    net.eval()
    net.update(force=False)
    net.meta = {"source": "compressai-zoo", "name": name, "quality": quality,
                "metric": metric, "trained_on": ZOO_TRAINING}
    return net


def zoo_codec(spec: str, download: Optional[Callable[[str], Path]] = None):
    """The zoo codec ``spec`` names (``zoo:NAME:QUALITY``), from torch's hub cache.

    A missing weights file is fetched with ``download(url)`` where one is given (e.g.
    ``icmlib.data.hub_checkpoint``: resumes, checks the sha256 the file name carries);
    otherwise, or when that fails, a one-line :class:`ModelError` says what to download
    and where to put it.
    """
    name, quality = parse_zoo_spec(spec)
    url, path = zoo_weights(name, quality)
    if not path.is_file():
        by_hand = f"download {url} and put it at {path}"
        if download is None:
            raise ModelError(f"the weights of {spec} are not cached and downloads are off: "
                             f"{by_hand}")
        try:
            download(url)
        except OSError as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelError(f"the weights of {spec} are not cached and the download failed: "
                             f"{why.rstrip('.')}; without network, {by_hand}") from None
    return load_zoo_weights(name, quality, path)


def zoo_quality(lmbda: float) -> int:
    """The zoo quality (1..8) trained with ``lmbda`` (:data:`ZOO_LAMBDAS`), or a
    :class:`ModelError` listing the λs there are."""
    for quality, trained in enumerate(ZOO_LAMBDAS, start=1):
        if abs(float(lmbda) - trained) <= 1e-9 + 1e-6 * trained:
            return quality
    raise ModelError(f"no CompressAI zoo codec was trained with λ={lmbda:g}; the zoo's "
                     f"qualities 1-8 have λ = {list(ZOO_LAMBDAS)}")


def zoo_architecture(name: str, quality: int) -> Tuple[int, int]:
    """``(N, M)``: the channels of zoo model ``name`` at ``quality`` (CompressAI's ``cfgs``;
    mbt2018-mean has N=128, M=192 at qualities 1-4 and 192, 320 above)."""
    from compressai.zoo.image import cfgs

    if name not in cfgs or quality not in cfgs[name]:
        raise ModelError(f"no CompressAI zoo architecture {name!r} at quality {quality}")
    n, m = cfgs[name][quality]
    return int(n), int(m)


def zoo_as_icm_codec(zoo_net) -> "ICMCodec":
    """A zoo ``mbt2018-mean`` as an :class:`~icmlib.codec.model.ICMCodec` with
    ``transforms="gdn"``: the same modules under the same names, so its weights load key for
    key; the CDF tables are then rebuilt on our finer scale table, and ``net.meta`` keeps
    the zoo's. Our training loop can fine-tune it like any codec of ours."""
    from icmlib.codec.model import ICMCodec

    if not isinstance(zoo_net, MeanScaleHyperprior):
        raise ModelError(f"only a mean-scale hyperprior (the zoo's mbt2018-mean) has the "
                         f"transforms of ICMCodec(transforms='gdn'), not "
                         f"{type(zoo_net).__name__}")
    n, m = zoo_net.N, zoo_net.M
    net = ICMCodec(n, m, transforms="gdn")
    net.load_state_dict(zoo_net.state_dict())
    net.update(force=True)
    net.eval()
    net.meta = dict(getattr(zoo_net, "meta", None) or {})
    return net
