"""The MSE baseline from CompressAI's zoo: a preset with ``codec_zoo`` trains no MSE codec.

Training a hyperprior codec to convergence takes CompressAI one or two GPU-weeks per rate
point; a Colab session ends after hours. The ``gpu`` preset therefore starts where a reader
can: CompressAI publishes ``mbt2018-mean`` trained at eight λs (:data:`~icmlib.codec.zoo.
ZOO_LAMBDAS`), and its transforms are those of ``ICMCodec(transforms="gdn")``. With
``preset.codec_zoo`` set, the MSE codec of a rate point is the zoo codec trained with that
rate point's λ (:func:`zoo_quality_for`):

1. its weights come through :func:`icmlib.data.hub_checkpoint` (resumed, checked against
   the sha256 prefix its file name carries), or, offline (``$ICM_OFFLINE=1``) or when the
   download fails, a one-line :class:`~icmlib.codec.ModelError` says what to download and
   where to put it;
2. CompressAI's own loader reads them; :func:`~icmlib.codec.zoo.zoo_as_icm_codec` moves them
   key for key into an ``ICMCodec(transforms="gdn")``;
3. it is stored as an ordinary icmlib codec checkpoint under the cache key of
   :func:`zoo_codec_config` (the zoo's name, quality and weights file, the λ, 0 steps), so
   the ICM codecs that the recipe fine-tunes from it (``init_from``) key and resume as
   any other.
"""
from __future__ import annotations

import os
from typing import Any, Dict

from icmlib.codec import ICMCodec, ModelError, codec_checkpoint
from icmlib.codec.zoo import (ZOO_TRAINING, zoo_architecture, zoo_as_icm_codec,
                              zoo_codec, zoo_quality, zoo_weights)
from icmlib.data.download import OFFLINE_ENV, hub_download
from icmlib.presets import Preset

__all__ = ["zoo_quality_for", "zoo_codec_config", "zoo_mse_checkpoint", "OFFLINE_ENV"]

#: the zoo models whose transforms an ICMCodec has (transforms="gdn")
_FINE_TUNABLE = ("mbt2018-mean",)


def _check_zoo_preset(preset: Preset) -> None:
    if preset.codec_zoo not in _FINE_TUNABLE:
        raise ValueError(f"preset {preset.name!r}: codec_zoo={preset.codec_zoo!r}, but only "
                         f"{list(_FINE_TUNABLE)} has the transforms of ICMCodec(transforms='gdn')")
    if preset.codec_transforms != "gdn" or preset.codec_blocks:
        raise ValueError(f"preset {preset.name!r}: codec_zoo={preset.codec_zoo!r} needs "
                         f"codec_transforms='gdn' and codec_blocks=0 (the zoo's architecture)")
    if preset.variable_rate:
        raise ValueError(f"preset {preset.name!r}: the zoo has one codec per rate; set "
                         f"variable_rate=False with codec_zoo")


def zoo_quality_for(preset: Preset, lmbda: float) -> int:
    """The zoo quality whose codec is the MSE codec at ``lmbda`` (the one trained with that
    λ), after checking that the preset builds the zoo's architecture at that quality."""
    _check_zoo_preset(preset)
    quality = zoo_quality(lmbda)
    n, m = zoo_architecture(preset.codec_zoo, quality)
    if (preset.codec_channels, preset.latent_channels) != (n, m):
        raise ValueError(f"preset {preset.name!r} builds N={preset.codec_channels}, "
                         f"M={preset.latent_channels}, but {preset.codec_zoo} at quality "
                         f"{quality} (λ={lmbda:g}) has N={n}, M={m}: choose rate points of "
                         f"one architecture")
    return quality


def zoo_codec_config(preset: Preset, rate_index, lmbda: float, version: str) -> Dict[str, Any]:
    """The cache key of the MSE codec a zoo preset takes from the zoo: what decides its
    weights (the model, its quality and the weights file, whose name carries a hash), the
    architecture it is moved into, and the request (preset, rate, λ); 0 training steps."""
    quality = zoo_quality_for(preset, lmbda)
    url, _ = zoo_weights(preset.codec_zoo, quality)
    return {"version": version, "preset": preset.name, "task": None, "strategy": "mse",
            "rate_index": rate_index, "lambda": float(lmbda), "steps": 0, "init_from": None,
            "codec_zoo": preset.codec_zoo, "zoo_quality": quality,
            "zoo_file": os.path.basename(url), "codec_transforms": preset.codec_transforms,
            "codec_channels": preset.codec_channels, "latent_channels": preset.latent_channels}


def zoo_mse_checkpoint(preset: Preset, config: Dict[str, Any],
                       progress: bool = True) -> Dict[str, Any]:
    """The codec checkpoint dict of the zoo MSE codec that ``config``
    (:func:`zoo_codec_config`) names: downloaded if missing (unless offline), moved into an
    ``ICMCodec(transforms="gdn")``, with empty logs (nothing was trained here)."""
    name, quality = config["codec_zoo"], int(config["zoo_quality"])
    if progress:
        print(f"[icmlib] the MSE codec at λ={config['lambda']:g} is CompressAI's {name} at "
              f"quality {quality} (trained with that λ on {ZOO_TRAINING}): not trained here")
    net = zoo_as_icm_codec(zoo_codec(f"zoo:{name}:{quality}", download=hub_download()))
    expected = ICMCodec.from_preset(preset).config
    if net.config != expected:  # zoo_quality_for checked N, M: a safeguard, not a path
        raise ModelError(f"zoo:{name}:{quality} has architecture {net.config}, the preset "
                         f"builds {expected}")
    meta = {"preset": preset.name, "task": None, "strategy": "mse", "rate": config["lambda"],
            "rate_index": config["rate_index"], "steps": 0, "seed": None,
            "init_from": f"zoo:{name}:{quality}", "zoo": name, "zoo_quality": quality,
            "zoo_file": config["zoo_file"], "trained_on": ZOO_TRAINING, "train_seconds": 0.0,
            "command": f"icmlib.training.codec_for(preset={preset.name!r}, task=None, "
                       f"strategy='mse', rate_index={config['rate_index']!r})"}
    ckpt = codec_checkpoint(net, **meta)
    ckpt["logs"] = {"train": [], "val": []}
    return ckpt

