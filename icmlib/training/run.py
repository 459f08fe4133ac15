"""Train-or-load: the codec a notebook, ``icm reproduce`` or the CLI asks for, by the recipe.

``codec_for(preset, task, strategy, rate)`` is how every codec of the book is made: it
looks the codec up by its key (:func:`icmlib.training.recipe.codec_config`: shipped
checkpoints first, then the cache) and trains it only when it is in neither, after
training or loading the codec it is fine-tuned from. The run folder
``$ICM_CACHE/runs/codec/<key>`` keeps the checkpoint and the CSV logs, so an interrupted
training resumes the next time it is asked for. On a preset with ``codec_zoo`` the MSE
codecs come from CompressAI's zoo (:mod:`icmlib.training.zoo`), cached under their key.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Union

import torch.nn as nn

from icmlib.cache import cache_dir, config_key, train_or_load
from icmlib.codec import at_rate, load_codec
from icmlib.presets import Preset, get_preset
from icmlib.training import codec
from icmlib.training.recipe import (_codec_config, baseline_config, check_baseline_quantizer,
                                    codec_parent, finishing_preset, recipe_rate,
                                    synthesis_quantizer)
from icmlib.training.zoo import zoo_mse_checkpoint

__all__ = ["codec_run", "codec_for", "codec_at_rate", "logs_at_rate", "baseline_run"]


def codec_run(preset: Union[Preset, str, None] = None, task: Optional[str] = None,
              strategy: str = "mse", rate_index: Union[int, float, str] = 0, *,
              progress: bool = True, force: bool = False,
              steps: Optional[int] = None) -> Dict[str, Any]:
    """Train-or-load the codec's checkpoint dict, logs included (see ``train_codec``).

    The run folder is ``$ICM_CACHE/runs/codec/<key>``: an interrupted training resumes
    from its last checkpoint the next time, and its CSV logs stay there. A codec that is
    fine-tuned (:func:`~icmlib.training.recipe.codec_parent`) has its parent trained or
    loaded first. On a ``variable_rate`` preset a rate index gives the one variable-rate
    codec (:func:`~icmlib.training.recipe.recipe_rate`).
    """
    preset = get_preset(preset)
    return _codec_run(preset, task, strategy, recipe_rate(preset, rate_index), progress,
                      force, steps)


def _codec_run(preset: Preset, task, strategy, rate_index, progress, force, steps):
    cfg = _codec_config(preset, task, strategy, rate_index, steps)
    run_dir = cache_dir("runs", "codec", config_key(cfg))

    if task is None and preset.codec_zoo:  # the zoo's codec for this λ: fetched, not trained
        return train_or_load("codec", cfg, lambda: zoo_mse_checkpoint(preset, cfg, progress),
                             force=force, verbose=progress)

    def train():
        init = None
        parent = codec_parent(preset, task, rate_index)
        if parent is not None:
            init = _weights(_codec_run(preset, *parent, progress, False, None))
        # through the module, so a test can stand in for train_codec
        return codec.train_codec(preset, task, strategy, rate_index, steps=cfg["steps"],
                                 out_dir=run_dir, resume=not force, progress=progress,
                                 init_from=init,
                                 command=f"icmlib.training.codec_for(preset={preset.name!r}, "
                                         f"task={task!r}, strategy={strategy!r}, "
                                         f"rate_index={rate_index!r})")

    return train_or_load("codec", cfg, train, force=force, verbose=progress)


def baseline_run(preset: Union[Preset, str, None] = None, rate_index: Union[int, float, str] = 0,
                 *, progress: bool = True, force: bool = False) -> Dict[str, Any]:
    """Train-or-load the MSE baseline a reproduction reports: ``codec_run``'s MSE codec,
    fine-tuned for ``preset.mse_finish_steps`` on the ICM codecs' crops (or that codec
    itself when the preset has no such steps). Its key is
    :func:`~icmlib.training.recipe.baseline_config`; the ICM codecs start from the MSE
    codec, not from this one, so their keys do not depend on it."""
    preset = get_preset(preset)
    check_baseline_quantizer(preset)
    rate = recipe_rate(preset, rate_index)
    if not preset.mse_finish_steps:
        return codec_run(preset, None, "mse", rate, progress=progress, force=force)
    cfg = baseline_config(preset, rate)
    run_dir = cache_dir("runs", "codec", config_key(cfg))

    def train():
        parent = codec_run(preset, None, "mse", rate, progress=progress)
        return codec.train_codec(finishing_preset(preset), None, "mse", rate,
                                 synthesis_quantizer=synthesis_quantizer(preset, "baseline"),
                                 steps=preset.mse_finish_steps, out_dir=run_dir,
                                 resume=not force, progress=progress, init_from=_weights(parent),
                                 command=f"icmlib.training.baseline_run(preset={preset.name!r}, "
                                         f"rate_index={rate!r})")

    return train_or_load("codec", cfg, train, force=force, verbose=progress)


def _weights(ckpt: Mapping[str, Any]) -> Dict[str, Any]:
    """What a fine-tuning run starts from: a checkpoint dict without its logs."""
    return {k: ckpt[k] for k in ("format", "config", "state_dict", "meta")}


def logs_at_rate(logs: Mapping[str, List[Dict[str, float]]], rate: int) -> Dict[str, list]:
    """The rows of a variable-rate codec's logs that belong to rate point ``rate``."""
    return {name: [row for row in rows if row.get("rate_index", rate) == rate]
            for name, rows in logs.items()}


def codec_for(preset: Union[Preset, str, None] = None, task: Optional[str] = None,
              strategy: str = "mse", rate_index: Union[int, float] = 0, *,
              progress: bool = True, force: bool = False) -> nn.Module:
    """The trained codec (eval mode, CDF tables built), trained now or loaded from the cache.

    ``task=None, strategy="mse"`` is the human-vision baseline; with a task, ``"fixed"``,
    ``"dynamic"`` or ``"auto"`` gives an ICM codec. ``net.meta`` says how it was made and
    ``net.logs`` holds its training and validation logs. On a ``variable_rate`` preset it
    is the variable-rate codec's view at ``rate_index`` (:class:`icmlib.codec.model.AtRate`),
    which codes like a one-rate codec.
    """
    ckpt = codec_run(preset, task, strategy, rate_index, progress=progress, force=force)
    return codec_at_rate(ckpt, rate_index)


def codec_at_rate(ckpt: Mapping[str, Any], rate_index) -> nn.Module:
    """The codec of a checkpoint dict, as a one-rate codec at ``rate_index`` (the view of a
    variable-rate codec, or the codec itself), with its logs (``net.logs``) at that rate."""
    net = load_codec(dict(ckpt))
    logs = ckpt.get("logs", {})
    if getattr(net, "rates", 0):
        net = at_rate(net, int(rate_index))
        logs = logs_at_rate(logs, int(rate_index))
    net.logs = logs
    return net
