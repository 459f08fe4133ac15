"""What a codec's training run starts from: its first weights and its optimizers.

The first weights are random, or a copy of another codec (``init_from``): the recipe
fine-tunes ICM codecs from the MSE codec at their rate, and a variable-rate codec from a
one-rate one, whose gains it then sets from the λs. Which codec a run started from is
part of its key (:func:`init_identity`: a hash of the weights, not a file name).

The optimizers follow CompressAI's split: Adam on the transforms and the entropy models
(the *main* loss), and a second Adam on the entropy bottleneck's ``quantiles`` only,
driven by ``net.aux_loss()``. The quantiles decide the range of ẑ values the rANS tables
cover; they must not be moved by the rate–distortion loss.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn as nn

from icmlib.codec import ICMCodec, load_codec
from icmlib.presets import Preset

__all__ = ["configure_optimizers", "lr_milestones", "init_identity", "build_codec"]


def configure_optimizers(net: nn.Module, preset: Preset):
    """CompressAI's split: Adam on every parameter but the quantiles (main), Adam on the
    ``*.quantiles`` of the entropy bottleneck (auxiliary)."""
    named = dict(net.named_parameters())
    main = [p for n, p in sorted(named.items()) if p.requires_grad and not n.endswith(".quantiles")]
    aux = [p for n, p in sorted(named.items()) if p.requires_grad and n.endswith(".quantiles")]
    if not aux:
        raise ValueError("the codec has no entropy-bottleneck quantiles; is it a CompressAI model?")
    return torch.optim.Adam(main, lr=preset.lr), torch.optim.Adam(aux, lr=preset.aux_lr)


def lr_milestones(preset: Preset, steps: int) -> List[int]:
    """The step where the learning rates drop tenfold (``preset.lr_decay_at`` of the run)."""
    m = int(round(preset.lr_decay_at * steps))
    return [m] if 0 < m < steps else []


def init_identity(init_from) -> Optional[str]:
    """Which codec a run starts from, for its configuration: a file, or a weights' hash."""
    if init_from is None:
        return None
    if isinstance(init_from, (str, Path)):
        return f"file:{Path(init_from).resolve()}"
    if isinstance(init_from, dict):
        return f"codec:{_state_hash(init_from['state_dict'])}"
    if isinstance(init_from, nn.Module):
        return f"codec:{_state_hash(init_from.state_dict())}"
    raise ValueError(f"init_from must be a codec checkpoint path, a checkpoint dict or an "
                     f"ICMCodec, got {type(init_from).__name__}")


def _state_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A short hash of a codec's weights: which codec a run started from."""
    h = hashlib.sha256()
    for name, t in sorted(state_dict.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def build_codec(preset: Preset, init_from, lambdas=None) -> ICMCodec:
    """The codec a run starts from: random, or a copy of ``init_from``.

    ``lambdas`` (a list) builds a variable-rate codec; it may start from a one-rate codec
    of the same architecture (see :func:`_gains_from_one_rate`).
    """
    rates = len(lambdas) if isinstance(lambdas, list) else 0
    net = ICMCodec.from_preset(preset, rates)
    if init_from is None:
        return net
    src = init_from if isinstance(init_from, nn.Module) else load_codec(init_from)
    src_config = dict(getattr(src, "config", None) or {})
    if src_config != net.config and not (rates and src_config == _one_rate(net.config)):
        raise ValueError(f"init_from codec has architecture {src_config or None}, but preset "
                         f"{preset.name!r} builds {net.config}; start from a codec of this preset")
    if src_config == net.config:
        net.load_state_dict(src.state_dict())
    else:
        net.load_state_dict(src.state_dict(), strict=False)  # all but the gains
        _gains_from_one_rate(net, lambdas, (getattr(src, "meta", None) or {}).get("rate"))
    return net


def _one_rate(config: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in config.items() if k != "rates"}


def _gains_from_one_rate(net: ICMCodec, lambdas: List[float], source_lambda) -> None:
    """Start a variable-rate codec's gains where a one-rate codec trained at
    ``source_lambda`` would put them: at high rate, D ∝ Δ² and the best step Δ ∝ λ^-1/2,
    so gain_r = √(λ_r / λ_source) (and the inverse gain its reciprocal)."""
    if not source_lambda:
        return  # unknown rate: gains of 1, training finds them
    with torch.no_grad():
        for r, lam in enumerate(lambdas):
            g = math.sqrt(float(lam) / float(source_lambda))
            net.gain[r].fill_(g)
            net.inv_gain[r].fill_(1.0 / g)
