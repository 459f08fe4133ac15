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

from icmlib.codec.determinism import ExactHyperSynthesis
from icmlib.codec.pretrained import ModelError

ZOO_PREFIX = "zoo:"
#: CompressAI zoo models an ``.icm`` file can hold: hyperpriors without a context model
#: (two streams, ŷ then ẑ, coded through CompressAI's entropy coder)
ZOO_MODELS = ("bmshj2018-hyperprior", "mbt2018-mean")
#: what the zoo's codecs learned from (CompressAI's model zoo documentation)
ZOO_TRAINING = "natural photos (256×256 patches of Vimeo-90k, CompressAI's model zoo)"


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
