"""The ICM codec: residual-CNN transforms and a mean & scale hyperprior, in CompressAI's API.

Pipeline (Le et al., ICASSP 2021, after Minnen et al. 2018)::

    x --g_a--> y --h_a--> z --Q--> ẑ --(factorized bottleneck, rANS)--> side bits
                                   ẑ --h_s--> (σ, μ)
    y --Q around μ--> ŷ --(Gaussian N(μ, σ) conditional, rANS)--> main bits
    ŷ --g_s--> x̂

``ICMCodec`` subclasses CompressAI's ``MeanScaleHyperprior``: the hyper-transforms,
the ``EntropyBottleneck`` for ẑ, the ``GaussianConditional`` for ŷ and the
``forward / compress / decompress / update / aux_loss`` methods are CompressAI's own;
only the analysis and synthesis transforms are replaced by residual CNNs. Anything that
works with a CompressAI model works with ours, and a CompressAI zoo model can stand in
for ours (``encode_image`` / ``decode_image`` take either).

Quantization: in ``train()`` mode CompressAI adds uniform noise U(-½, ½) to y (and z); in
``eval()`` mode and in ``compress`` it rounds y - μ, so ŷ = round(y - μ) + μ.

The same class trained with ``w_task = 0`` is the human-vision (MSE) baseline, so the
ICM and MSE codecs differ only in the loss.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

# CompressAI 1.2.8 calls torch.jit.script, which recent torch deprecates: noise for readers.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
from compressai.layers import (ResidualBlock, ResidualBlockUpsample, ResidualBlockWithStride,
                               conv3x3, subpel_conv3x3)
from compressai.models import MeanScaleHyperprior
from compressai.ops import quantize_ste

from icmlib.codec.determinism import ExactHyperSynthesis, TableGaussianConditional, on_one_thread
from icmlib.shipped import expand, register_expander

#: y is 1/16 of the image; z is 1/4 of y. Inputs are padded to a multiple of this.
STRIDE = 64

#: buffers of CompressAI's entropy models that ``update()`` builds from the weights
CDF_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")

#: Scales the Gaussian conditional can code with. CompressAI's default has 64 levels from
#: 0.11 to 256, 13 % apart; every predicted scale is rounded up to the next level, which
#: costs about 5 % more bits than the likelihood estimate at low rates. 512 levels up to 64
#: (1.25 % apart) bring real bits within about 1 % of the estimate; scales above 64 (rare
#: at the rates trained here) are coded with 64.
SCALE_TABLE = torch.exp(torch.linspace(math.log(0.11), math.log(64.0), 512))


def analysis_transform(N: int, M: int, blocks: int = 0) -> nn.Sequential:
    """g_a: four stride-2 stages (residual blocks with a 1×1 shortcut), image → M×H/16×W/16."""
    layers: List[nn.Module] = []
    in_ch = 3
    for stage in range(3):
        layers.append(ResidualBlockWithStride(in_ch, N, stride=2))
        layers += [ResidualBlock(N, N) for _ in range(blocks)]
        in_ch = N
    layers.append(conv3x3(N, M, stride=2))
    return nn.Sequential(*layers)


def synthesis_transform(N: int, M: int, blocks: int = 0) -> nn.Sequential:
    """g_s: the mirror of ``analysis_transform`` with sub-pixel (pixel-shuffle) upsampling."""
    layers: List[nn.Module] = []
    in_ch = M
    for stage in range(3):
        layers += [ResidualBlock(in_ch, in_ch) for _ in range(blocks)]
        layers.append(ResidualBlockUpsample(in_ch, N, upsample=2))
        in_ch = N
    layers += [ResidualBlock(N, N) for _ in range(blocks)]
    layers.append(subpel_conv3x3(N, 3, 2))
    return nn.Sequential(*layers)


#: g_a/g_s of an ICMCodec: "residual" (ours, cheng2020-style residual blocks) or "gdn"
#: (CompressAI's MeanScaleHyperprior = the zoo's mbt2018-mean: 5×5 convolutions and GDN),
#: whose module names match the zoo's, so its pretrained weights load into an ICMCodec
TRANSFORMS = ("residual", "gdn")


class ICMCodec(MeanScaleHyperprior):
    """Mean-scale hyperprior codec with residual analysis/synthesis transforms.

    Args:
        N: channels inside the transforms.
        M: channels of the latent y (the main bitstream).
        blocks: extra residual blocks per stage (depth).
        transforms: ``"residual"`` (default) or ``"gdn"``: CompressAI's own
            ``MeanScaleHyperprior`` transforms, those of the zoo's ``mbt2018-mean``, so that
            codec's pretrained weights can be loaded and fine-tuned (the ``gpu`` preset).
        rates: 0 for a codec of one rate point (one λ). ``rates = R > 0`` makes a
            **variable-rate** codec (Cui et al., "Asymmetric gained deep image
            compression with continuous rate adaptation", CVPR 2021): one network
            serves R rate points through a learned *gain vector* per rate, which scales
            each channel of y before quantization (``y * gain[r]``: a larger gain means a
            finer quantization step, more bits) and an *inverse gain* applied to ŷ before
            the synthesis transform. Everything else is shared, so R codecs cost the
            weights (and about the training) of one. Choose the rate with the ``rate=``
            argument of ``forward``/``compress``/``decompress``, or use :func:`at_rate`
            for an object with CompressAI's one-rate API.
    """

    def __init__(self, N: int = 64, M: int = 96, blocks: int = 0, rates: int = 0,
                 transforms: str = "residual"):
        super().__init__(N=N, M=M)
        if transforms not in TRANSFORMS:
            raise ValueError(f"transforms must be one of {TRANSFORMS}, got {transforms!r}")
        if transforms == "residual":
            self.g_a = analysis_transform(N, M, blocks)
            self.g_s = synthesis_transform(N, M, blocks)
        elif blocks:
            raise ValueError("blocks (extra residual blocks) need transforms='residual'")
        # h_s and the scale-table search decide the CDFs: bit-identical in encoder and
        # decoder, whatever the device or thread count (icmlib.codec.determinism)
        self.h_s = ExactHyperSynthesis(*self.h_s)
        self.gaussian_conditional = TableGaussianConditional(None)
        #: what the synthesis sees while training (not saved: the recipe sets it):
        #: ``"noise"``, ŷ with additive uniform noise, as the rate term sees it
        #: (CompressAI's models); ``"ste"``, y rounded around its predicted mean as at
        #: test time, with a straight-through gradient (the "mixed" quantization of Minnen
        #: & Singh 2020), so a loss on the decoded image sees the image that is decoded
        self.synthesis_quantizer = "noise"
        self.rates = int(rates)
        if self.rates < 0:
            raise ValueError(f"rates must be >= 0, got {rates}")
        if self.rates:
            self.gain = nn.Parameter(torch.ones(self.rates, M))
            self.inv_gain = nn.Parameter(torch.ones(self.rates, M))
        self.config = {"N": N, "M": M, "blocks": blocks}
        if self.rates:  # one-rate codecs keep the config (and file fingerprints) they had
            self.config["rates"] = self.rates
        if transforms != "residual":  # likewise: only a new kind of codec says so
            self.config["transforms"] = transforms

    # ---- the gains of a variable-rate codec ----------------------------------------------
    def _gains(self, rate) -> Tuple[Any, Any]:
        """(gain, inverse gain) shaped to multiply y of a batch; (None, None) for one rate.

        ``rate`` is an int (the whole batch) or a LongTensor with one index per image.
        """
        if not self.rates:
            if rate not in (None, 0):
                raise ValueError(f"this codec has a single rate point; got rate={rate!r}")
            return None, None
        if rate is None:
            raise ValueError(f"this variable-rate codec needs rate= (0..{self.rates - 1})")
        index = torch.as_tensor(rate, device=self.gain.device).long().reshape(-1)
        if index.min() < 0 or index.max() >= self.rates:
            raise ValueError(f"rate {rate!r} out of range: this codec has rates 0..{self.rates - 1}")
        return (self.gain[index][..., None, None], self.inv_gain[index][..., None, None])

    def _analysis(self, x, rate):
        y = self.g_a(x)
        gain, _ = self._gains(rate)
        return y if gain is None else y * gain

    def _synthesis(self, y_hat, rate):
        _, inv_gain = self._gains(rate)
        return self.g_s(y_hat if inv_gain is None else y_hat * inv_gain)

    # ---- CompressAI's MeanScaleHyperprior methods, with the gains --------------------------
    def forward(self, x, rate=None):
        y = self._analysis(x, rate)
        z = self.h_a(y)
        # the entropy models in float32 even under autocast: their likelihoods go down to
        # 1e-9, which float16 rounds to 0 (and log2 to -inf); the transforms keep its speed
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_hat, z_likelihoods = self.entropy_bottleneck(z.float())
        scales_hat, means_hat = self.h_s(z_hat).chunk(2, 1)
        with torch.autocast(device_type=y.device.type, enabled=False):
            y_hat, y_likelihoods = self.gaussian_conditional(y.float(), scales_hat.float(),
                                                             means=means_hat.float())
            if self.training and self.synthesis_quantizer == "ste":
                y_hat = quantize_ste(y.float() - means_hat.float()) + means_hat.float()
        return {"x_hat": self._synthesis(y_hat, rate),
                "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def compress(self, x, rate=None):
        """CompressAI's ``compress``; the transforms run channels-last (oneDNN's faster
        layout on the CPU: :mod:`icmlib.codec.determinism`)."""
        y = self._analysis(x.contiguous(memory_format=torch.channels_last), rate)
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        scales_hat, means_hat = self.h_s(z_hat).chunk(2, 1)
        indexes = self.gaussian_conditional.build_indexes(scales_hat)
        y_strings = self.gaussian_conditional.compress(y, indexes, means=means_hat)
        return {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}

    def decompress(self, strings, shape, rate=None):
        """CompressAI's ``decompress``; the same pixels whatever ``torch.get_num_threads()``
        (the synthesis runs on one thread, channels-last: :mod:`icmlib.codec.determinism`)."""
        if not (isinstance(strings, (list, tuple)) and len(strings) == 2):
            raise ValueError("decompress expects [y_strings, z_strings]")
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
        scales_hat, means_hat = self.h_s(z_hat).chunk(2, 1)
        indexes = self.gaussian_conditional.build_indexes(scales_hat)
        y_hat = self.gaussian_conditional.decompress(strings[0], indexes, means=means_hat)
        y_hat = y_hat.contiguous(memory_format=torch.channels_last)
        x_hat = on_one_thread(self._synthesis, y_hat, rate)
        return {"x_hat": x_hat.contiguous().clamp_(0, 1)}

    def update(self, scale_table=None, force=False, update_quantiles: bool = False):
        """Build the CDF tables for real coding (CompressAI's ``update``, finer scale table)."""
        if scale_table is None:
            scale_table = SCALE_TABLE
        return super().update(scale_table=scale_table, force=force,
                               update_quantiles=update_quantiles)

    def load_state_dict(self, state_dict, strict: bool = True):
        """CompressAI's load, with the CDF tables taking the checkpoint's sizes.

        CompressAI resizes a CDF buffer only while it is empty. A codec whose tables
        ``update()`` has built -- one started from another codec, or resumed after a
        validation -- could then not load a checkpoint whose tables have another length
        (resuming such a run failed with "size mismatch for ..._quantized_cdf"). The
        tables are data rebuilt from the weights, so the checkpoint's sizes win."""
        for name, module in self.named_modules():
            for buffer_name, buffer in module.named_buffers(recurse=False):
                key = f"{name}.{buffer_name}" if name else buffer_name
                if buffer_name in CDF_BUFFERS and key in state_dict:
                    buffer.resize_(state_dict[key].size())
        return super().load_state_dict(state_dict, strict=strict)

    @classmethod
    def from_preset(cls, preset, rates: int = 0) -> "ICMCodec":
        return cls(preset.codec_channels, preset.latent_channels, preset.codec_blocks, rates,
                   preset.codec_transforms)

    @classmethod
    def from_state_dict(cls, state_dict, config: Dict[str, int]) -> "ICMCodec":
        """Rebuild a trained codec (CDF tables included) from ``state_dict``."""
        net = cls(**config)
        net.load_state_dict(state_dict)  # CompressAI resizes the CDF buffers as needed
        net.eval()
        return net


class AtRate(nn.Module):
    """One rate point of a variable-rate :class:`ICMCodec`, with the one-rate API.

    ``forward(x)``, ``compress(x)``, ``decompress(strings, shape)``, ``update()`` behave as
    a one-rate CompressAI model's, so evaluation, the ``.icm`` container and the anchors'
    ``LearnedCodec`` need not know about rates. The weights are the shared codec's (no
    copy); ``rate_index`` is a buffer, so :func:`fingerprint` differs per rate and a file
    coded at one rate is never decoded at another.
    """

    def __init__(self, net: ICMCodec, rate: int):
        super().__init__()
        if not getattr(net, "rates", 0):
            raise ValueError("AtRate needs a variable-rate ICMCodec (rates > 0)")
        if not 0 <= int(rate) < net.rates:
            raise ValueError(f"rate {rate} out of range: the codec has rates 0..{net.rates - 1}")
        self.net = net
        self.register_buffer("rate_index", torch.tensor(int(rate)))
        self.config = dict(net.config)
        self.meta = getattr(net, "meta", {})

    @property
    def rate(self) -> int:
        return int(self.rate_index)

    # The parts, as a one-rate codec has them (chapters and icmlib.codec.probability take a codec
    # apart): g_a includes this rate's gain, g_s its inverse gain; the rest is shared.
    @property
    def g_a(self):
        return _Gained(self.net.g_a, lambda: self.net.gain[self.rate][None, :, None, None], "after")

    @property
    def g_s(self):
        return _Gained(self.net.g_s, lambda: self.net.inv_gain[self.rate][None, :, None, None],
                       "before")

    @property
    def h_a(self):
        return self.net.h_a

    @property
    def h_s(self):
        return self.net.h_s

    @property
    def entropy_bottleneck(self):
        return self.net.entropy_bottleneck

    @property
    def gaussian_conditional(self):
        return self.net.gaussian_conditional

    def forward(self, x):
        return self.net(x, rate=self.rate)

    def compress(self, x):
        return self.net.compress(x, rate=self.rate)

    def decompress(self, strings, shape):
        return self.net.decompress(strings, shape, rate=self.rate)

    def update(self, *args, **kwargs):
        return self.net.update(*args, **kwargs)

    def aux_loss(self):
        return self.net.aux_loss()


class _Gained:
    """A transform with a rate's gain applied after it (g_a) or before it (g_s)."""

    def __init__(self, transform: nn.Module, gain, where: str):
        self.transform, self._gain, self.where = transform, gain, where

    def __call__(self, x):
        if self.where == "before":
            return self.transform(x * self._gain())
        return self.transform(x) * self._gain()

    def parameters(self):
        return self.transform.parameters()

    def __repr__(self) -> str:
        side = "× gain[r] after" if self.where == "after" else "× inverse gain[r] before"
        return f"{self.transform!r}\n({side} it: one rate point of a variable-rate codec)"


def at_rate(net: nn.Module, rate: int) -> nn.Module:
    """``net`` itself for a one-rate codec (rate 0), else its :class:`AtRate` view."""
    if getattr(net, "rates", 0):
        return AtRate(net, rate)
    if rate not in (0, None):
        raise ValueError(f"the codec has a single rate point; got rate {rate}")
    return net


# --------------------------------------------------------------------------------------
# Images of any size: pad to the stride, crop back.
# --------------------------------------------------------------------------------------

def padding_for(height: int, width: int, stride: int = STRIDE) -> Tuple[int, int]:
    """(pad_bottom, pad_right) that make an image a multiple of ``stride``."""
    return (-height) % stride, (-width) % stride


def pad(x: torch.Tensor, stride: int = STRIDE) -> torch.Tensor:
    """Replicate-pad a batch on the bottom and right to a multiple of ``stride``.

    Replicate padding (rather than zeros) puts no artificial edge in the image, so the
    padding costs few bits.
    """
    ph, pw = padding_for(x.shape[-2], x.shape[-1], stride)
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The top-left ``height`` × ``width`` of a (padded) batch: ``pad``'s inverse."""
    return x[..., :height, :width]


def run_codec(net: nn.Module, x: torch.Tensor, rate=None) -> Dict:
    """``net.forward`` on an image batch of any size; ``x_hat`` is cropped back to ``x``.

    ``rate``: the rate point of a variable-rate codec (an int, or one per image)."""
    h, w = x.shape[-2:]
    out = net(pad(x)) if rate is None else net(pad(x), rate=rate)
    out["x_hat"] = crop(out["x_hat"], h, w)
    return out


@torch.no_grad()
def encode_image(net: nn.Module, x: torch.Tensor) -> Dict:
    """Compress one image tensor (1×3×H×W in [0, 1]) to rANS byte strings.

    Returns ``{"strings": [y_bytes, z_bytes], "shape": (zh, zw), "size": (H, W)}``.
    Works for ``ICMCodec`` and for any CompressAI hyperprior model.
    """
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"encode_image expects a 1×3×H×W tensor, got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    out = net.compress(pad(x))
    strings = [s[0] for s in out["strings"]]
    return {"strings": strings, "shape": tuple(int(v) for v in out["shape"]), "size": (h, w)}


@torch.no_grad()
def decode_image(net: nn.Module, strings: Sequence[bytes], shape: Tuple[int, int],
                 size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of ``encode_image``: 1×3×H×W tensor in [0, 1]."""
    out = net.decompress([[s] for s in strings], list(shape))
    return crop(out["x_hat"], *size).clamp(0, 1)


def likelihood_bits(likelihoods: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Total estimated bits, -Σ log2 p, of all streams (per batch)."""
    return sum((-torch.log2(l)).sum() for l in likelihoods.values())


def fingerprint(net: nn.Module) -> bytes:
    """8 bytes identifying a trained codec: a hash of its parameters and CDF tables.

    Written into every ``.icm`` file so that decoding with another model is refused
    instead of producing a silently wrong image.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.digest()[:8]


def quantized_image(x_hat: torch.Tensor) -> torch.Tensor:
    """Round a decoded image to 8-bit levels, as it is when written to a PNG."""
    return (x_hat.clamp(0, 1) * 255).round() / 255


# --------------------------------------------------------------------------------------
# Checkpoints: one file holds the architecture, the weights and the CDF tables.
# --------------------------------------------------------------------------------------
CHECKPOINT_FORMAT = "icmlib-codec/1"


def codec_checkpoint(net: ICMCodec, **meta: Any) -> Dict[str, Any]:
    """A dict that ``torch.save`` can write and ``load_codec`` can read back.

    ``meta`` records how the codec was made (preset, task, strategy, rate, command...).
    Call ``net.update()`` first so the CDF tables used for real coding are included.
    """
    return {"format": CHECKPOINT_FORMAT, "config": dict(net.config),
            "state_dict": net.state_dict(), "meta": meta}


def save_codec(net: ICMCodec, path: Union[str, Path], **meta: Any) -> Path:
    """Write ``net`` (CDF tables updated first) and ``meta`` to ``path``, atomically."""
    from icmlib.cache import atomic_save

    net.update()
    atomic_save(codec_checkpoint(net, **meta), Path(path))
    return Path(path)


def load_codec(source: Union[str, Path, Dict[str, Any]]) -> ICMCodec:
    """An ``ICMCodec`` in eval mode, ready to ``compress``, from a path or a checkpoint dict:
    one written by :func:`save_codec`, or one in the shipped set's compact form (float16,
    no CDF tables), whose tables are rebuilt as on every load of the set."""
    if not isinstance(source, dict):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no codec checkpoint at {path}")
        try:
            source = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ValueError(f"{path} is not a readable codec checkpoint ({e})") from None
    if not isinstance(source, dict) or source.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not an icmlib codec checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    if _is_compact(source["state_dict"]):
        source = expand(source)
    net = ICMCodec.from_state_dict(source["state_dict"], source["config"])
    net.meta = source.get("meta", {})
    return net


def _is_compact(state_dict: Dict[str, Any]) -> bool:
    """Whether a codec's state dict is the shipped form: its CDF tables left out."""
    return not any(k.endswith("._quantized_cdf") for k in state_dict)


def expand_shipped_checkpoint(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """A shipped codec checkpoint (float32 again, CDF tables left out) made whole: the CDF
    tables rebuilt by ``update()``, exactly as after training (see :mod:`icmlib.shipped`)."""
    net = ICMCodec(**ckpt["config"])
    # one-element buffers are constants of construction (likelihood bounds of 1e-9, GDN
    # pedestals of 1e-11): float16 rounds them to 0, so they come from the new codec
    params = dict(net.named_parameters())
    constants = {k for k, v in net.state_dict().items() if k not in params and v.numel() == 1}
    state = {k: v for k, v in ckpt["state_dict"].items() if k not in constants}
    nn.Module.load_state_dict(net, state, strict=False)  # CDFs come next
    net.update(force=True)
    return dict(ckpt, state_dict=net.state_dict())


register_expander(CHECKPOINT_FORMAT, expand_shipped_checkpoint)
