"""The recipe: which codec serves a request, what it is fine-tuned from, and its cache key.

A codec is named by ``(preset, task, strategy, rate)``. The recipe turns that into a
training run: the rate's λ (:func:`resolve_rate`), the codec it starts from
(:func:`codec_parent`: ICM codecs from the MSE codec at their rate, MSE codecs from the
one at ``preset.codec_base_rate``), its steps (:func:`default_steps`), and every setting
that changes its weights (:func:`codec_config`): the configuration whose hash is the
codec's cache key, under which the shipped checkpoints are found. A preset with
``codec_zoo`` takes its MSE codecs from CompressAI's zoo instead of training them
(:mod:`icmlib.training.zoo`). A key holds only the settings its codec's training reads
(:func:`weight_fields`: no ICM setting in an MSE codec's key). A field added here
changes every key, so a new setting enters the key only when it differs from what the
earlier keys assumed; a rule changed here needs the shipped codecs re-keyed
(``python -m icmlib.ship --rekey``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from icmlib.engine.distributed import world_size
from icmlib.presets import Preset, get_preset
from icmlib.training.batches import crop_and_batch
from icmlib.training.zoo import zoo_codec_config

#: Bump when the training procedure changes, so cached codecs are retrained.
TRAIN_VERSION = "1"

#: ``rate_index`` of a variable-rate codec: it serves every rate point of the preset
ALL_RATES = "all"
#: ``rate_index`` of the variable-rate codec of ``preset.low_rd_lambdas``
LOW_RATES = "low"
#: ``rate_index`` of the MSE baseline's own lowest rates, ``preset.mse_low_rd_lambdas``
#: (no ICM codec has them)
MSE_LOW_RATES = "mse-low"
#: ``rate_index`` of the MSE baseline's own rates between the low-rate codec's and
#: ``rd_lambdas``' codec's, ``preset.mse_mid_rd_lambdas`` (no ICM codec has them)
MSE_MID_RATES = "mse-mid"
#: the MSE baseline's own rate codecs and the preset field that holds each one's λs
MSE_ONLY_RATES = {MSE_LOW_RATES: "mse_low_rd_lambdas", MSE_MID_RATES: "mse_mid_rd_lambdas"}

__all__ = ["TRAIN_VERSION", "ALL_RATES", "LOW_RATES", "MSE_LOW_RATES", "MSE_MID_RATES",
           "MSE_ONLY_RATES", "resolve_rate",
           "codec_parent", "default_steps", "recipe_rate", "codec_config", "rate_points",
           "has_rate", "baseline_config", "finishing_preset"]

Rate = Union[int, float, str]


def resolve_rate(preset: Preset, rate: Rate) -> Tuple[Optional[int], float]:
    """``(rate_index, λ)`` from an index into ``preset.rd_lambdas`` or an explicit λ.

    An int (or a string of digits) is an index; a float (or a string with a ``.`` or an
    exponent) is λ itself, the weight of the MSE term in ``L = R + λ·255²·MSE``.
    ``"all"`` (:data:`ALL_RATES`) asks for a variable-rate codec: ``("all", [λ...])``;
    ``"low"`` (:data:`LOW_RATES`) for the one of ``low_rd_lambdas``, ``"mse-low"`` and
    ``"mse-mid"`` (:data:`MSE_ONLY_RATES`) for the MSE baseline's ones of
    ``mse_low_rd_lambdas`` and ``mse_mid_rd_lambdas``.
    """
    if rate == ALL_RATES:
        return ALL_RATES, [float(l) for l in preset.rd_lambdas]
    if rate == LOW_RATES:
        if not (preset.variable_rate and preset.low_rd_lambdas):
            raise ValueError(f"preset {preset.name!r} has no low rate points "
                             f"(low_rd_lambdas on a variable_rate preset)")
        return LOW_RATES, [float(l) for l in preset.low_rd_lambdas]
    if isinstance(rate, str) and rate in MSE_ONLY_RATES:
        field = MSE_ONLY_RATES[rate]
        if not (preset.variable_rate and getattr(preset, field)):
            raise ValueError(f"preset {preset.name!r} has no rate points {rate!r} for the MSE "
                             f"baseline ({field} on a variable_rate preset)")
        return rate, [float(l) for l in getattr(preset, field)]
    if isinstance(rate, str):
        text = rate.strip()
        try:
            rate = int(text) if text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise ValueError(f"rate {text!r} is neither an index (0..{len(preset.rd_lambdas) - 1}) "
                             f"nor a λ value like 0.0067") from None
    if isinstance(rate, bool):
        raise ValueError("rate must be an index or a λ value, not a bool")
    if isinstance(rate, (int, np.integer)):
        n = len(preset.rd_lambdas)
        if not 0 <= int(rate) < n:
            raise ValueError(f"rate index {rate} is out of range: preset {preset.name!r} has "
                             f"{n} rate points (0..{n - 1}, λ = {list(preset.rd_lambdas)}); "
                             f"or pass λ itself, e.g. 0.0067")
        return int(rate), float(preset.rd_lambdas[int(rate)])
    lmbda = float(rate)
    if not math.isfinite(lmbda) or lmbda <= 0:
        raise ValueError(f"λ must be a positive number, got {rate}")
    return None, lmbda


def codec_parent(preset: Union[Preset, str, None] = None, task: Optional[str] = None,
                 rate_index: Rate = 0) -> Optional[Tuple[None, str, Rate]]:
    """The codec this one is fine-tuned from, as ``(task, strategy, rate)``, or ``None``.

    The recipe (the preset's fields): an ICM codec starts from the MSE codec at its own
    rate (``icm_init_from_mse``; for a variable-rate ICM codec, the variable-rate MSE
    codec); an MSE codec at a rate other than ``codec_base_rate`` -- or the variable-rate
    MSE codec (rate ``"all"``) -- starts from the one-rate MSE codec at the base rate; the
    base MSE codec (or every MSE codec when ``codec_base_rate = -1``) starts from random
    weights. With ``preset.codec_zoo`` no MSE codec has a parent: each is the zoo codec
    trained with its λ (:mod:`icmlib.training.zoo`). The MSE baseline's own rates
    (``"mse-low"``, ``"mse-mid"``) start from the low-rate MSE codec, the nearest in rate.
    """
    preset = get_preset(preset)
    index, lmbda = resolve_rate(preset, rate_index)
    rate = lmbda if index is None else index
    mse_only = isinstance(index, str) and index in MSE_ONLY_RATES
    if mse_only and task is not None:
        raise ValueError(f"rate {index!r} belongs to the MSE baseline only; ICM codecs "
                         f"have the rates {ALL_RATES!r} and {LOW_RATES!r}")
    if task is not None:
        return (None, "mse", rate) if preset.icm_init_from_mse else None
    if preset.codec_zoo:
        return None
    if mse_only and preset.low_rd_lambdas:
        if len(lmbda) != len(preset.low_rd_lambdas):  # gain vectors are copied one for one
            raise ValueError(f"{MSE_ONLY_RATES[index]} has {len(lmbda)} λ, but its codec starts "
                             f"from the low-rate MSE codec, which has {len(preset.low_rd_lambdas)} "
                             f"(low_rd_lambdas): give it as many")
        return (None, "mse", LOW_RATES)
    base = preset.codec_base_rate
    if base < 0 or index == base:
        return None
    if base >= len(preset.rd_lambdas):
        raise ValueError(f"codec_base_rate={base} but preset {preset.name!r} has "
                         f"{len(preset.rd_lambdas)} rate points")
    return (None, "mse", base)


def default_steps(preset: Preset, task: Optional[str], parent, rate_index: Rate = 0) -> int:
    """Training steps of a codec made by the recipe: ICM, MSE fine-tune, or from scratch.

    The low-rate codec (:data:`LOW_RATES`) gets the same steps *per rate point* as the
    codec of ``rd_lambdas``: the rates take turns, so its share is scaled by its rates.
    The MSE baseline's own rates (:data:`MSE_ONLY_RATES`) get the whole fine-tuning
    budget, ``codec_finetune_steps``: they lie far from where training began.
    """
    if task is not None:
        steps = int(preset.icm_steps)
    elif preset.codec_zoo:
        steps = 0  # taken from CompressAI's zoo, not trained (icmlib.training.zoo)
    else:
        steps = int(preset.codec_finetune_steps if parent is not None else preset.codec_steps)
    if rate_index == LOW_RATES:
        steps = math.ceil(steps * len(preset.low_rd_lambdas) / len(preset.rd_lambdas))
    return steps


def has_rate(task: Optional[str], codec_rate: Rate) -> bool:
    """Whether the codecs of ``task`` (None: the MSE baseline) have the rate ``codec_rate``
    of :func:`rate_points`: the MSE baseline's lowest rates have no ICM codec."""
    return task is None or not (isinstance(codec_rate, str) and codec_rate in MSE_ONLY_RATES)


def rate_points(preset: Union[Preset, str, None] = None) -> List[Tuple[Rate, int, float]]:
    """Every rate point a reproduction reports, lowest λ first: ``(codec rate, index within
    that codec, λ)``. A variable-rate preset has the codec ``"all"`` (``rd_lambdas``) and,
    with ``low_rd_lambdas``, the codec ``"low"``; otherwise one codec per rate index.
    With ``mse_low_rd_lambdas`` the MSE baseline has the lowest points of its own
    (``"mse-low"``; :func:`has_rate`), so that its curve reaches the ICM codecs' rates,
    and with ``mse_mid_rd_lambdas`` points between its low-rate and ``rd_lambdas`` codecs
    (``"mse-mid"``), where the ICM codecs' middle rates lie."""
    preset = get_preset(preset)
    if not preset.variable_rate:
        return [(i, 0, float(l)) for i, l in enumerate(preset.rd_lambdas)]
    points = [(ALL_RATES, i, float(l)) for i, l in enumerate(preset.rd_lambdas)]
    points += [(LOW_RATES, j, float(l)) for j, l in enumerate(preset.low_rd_lambdas)]
    for rate, field in MSE_ONLY_RATES.items():
        points += [(rate, j, float(l)) for j, l in enumerate(getattr(preset, field))]
    lambdas = [p[2] for p in points]
    if len(set(lambdas)) != len(lambdas):
        raise ValueError(f"preset {preset.name!r}: low_rd_lambdas, mse_low_rd_lambdas or "
                         f"mse_mid_rd_lambdas repeat a λ of the other rates")
    return sorted(points, key=lambda p: p[2])


def recipe_rate(preset: Preset, rate_index: Rate) -> Rate:
    """Which codec serves a request for ``rate_index``: on a ``variable_rate`` preset, one
    codec (rate ``"all"``) serves every rate point; an explicit λ is always a codec of its own."""
    if preset.variable_rate and isinstance(rate_index, (int, np.integer)) and not isinstance(
            rate_index, bool):
        return ALL_RATES
    return rate_index


def codec_config(preset: Union[Preset, str, None] = None, task: Optional[str] = None,
                 strategy: str = "mse", rate_index: Rate = 0,
                 steps: Optional[int] = None) -> Dict[str, Any]:
    """Every setting that determines the codec ``codec_for`` returns: its cache key.

    Includes the task network's own configuration (a retrained task network gives other
    codecs) and the configuration of the codec it is fine-tuned from (:func:`codec_parent`).
    """
    preset = get_preset(preset)
    return _codec_config(preset, task, strategy, recipe_rate(preset, rate_index), steps)


def _codec_config(preset: Preset, task, strategy, rate_index, steps) -> Dict[str, Any]:
    from icmlib.data import world_config

    rate_index, lmbda = resolve_rate(preset, rate_index)
    if task is None and preset.codec_zoo:
        return zoo_codec_config(preset, rate_index, lmbda, TRAIN_VERSION)
    parent = codec_parent(preset, task, lmbda if rate_index is None else rate_index)
    steps = int(steps if steps is not None else default_steps(preset, task, parent, rate_index))
    init = None if parent is None else _codec_config(preset, *parent, None)
    cfg = run_config(preset, task, strategy, rate_index, lmbda, steps, preset.train_seed, init,
                     world_size())
    if task is not None:
        from icmlib.tasks import task_config
        cfg["task_network"] = task_config(task, preset)
    if preset.dataset == "synthetic":
        cfg["world_train"] = world_config(preset, "train")
    return cfg


def finishing_preset(preset: Preset) -> Preset:
    """The preset the MSE baseline's last stage trains with: the ICM codecs' crops and
    batch size (``preset.mse_finish_steps``; :func:`baseline_config`)."""
    crop, batch_size = crop_and_batch(preset, with_task=True)
    return preset.replace(crop_size=crop, batch_size=batch_size)


def baseline_config(preset: Union[Preset, str, None] = None, rate_index: Rate = 0) -> Dict[str, Any]:
    """Cache key of the MSE baseline a reproduction reports at ``rate_index``.

    With ``preset.mse_finish_steps`` it is the MSE codec of that rate (:func:`codec_config`)
    fine-tuned for that many steps on the ICM codecs' crops (:func:`finishing_preset`);
    without, the MSE codec's own key.
    """
    preset = get_preset(preset)
    check_baseline_quantizer(preset)
    rate = recipe_rate(preset, rate_index)
    parent = _codec_config(preset, None, "mse", rate, None)
    if not preset.mse_finish_steps:
        return parent
    index, lmbda = resolve_rate(preset, rate)
    cfg = run_config(finishing_preset(preset), None, "mse", index, lmbda,
                     preset.mse_finish_steps, preset.train_seed, parent, world_size())
    if "world_train" in parent:
        cfg["world_train"] = parent["world_train"]
    if synthesis_quantizer(preset, "baseline") != "noise":
        cfg["synthesis_quantizer"] = synthesis_quantizer(preset, "baseline")
    return cfg


#: The preset's fields that change every codec's weights (the rest of the key is below).
_RUN_FIELDS = ("codec_channels", "latent_channels", "codec_blocks", "crop_size", "batch_size",
               "lr", "aux_lr", "clip_max_norm", "lr_decay_at", "amp", "dataset", "image_size",
               "train_images", "world_seed")
#: ... and those that change only an ICM codec's, by its weighting strategy. An MSE codec's
#: key leaves them out, so that an ICM recipe tried through the preset keeps the MSE codecs
#: its codecs start from (the 20000-step base among them) instead of retraining them.
_ICM_FIELDS = ("icm_task_weight", "icm_mse_weight", "icm_crop_size", "icm_batch_size")
_STRATEGY_FIELDS = {"dynamic": ("weighting_warmup", "weighting_ramp_end"),
                    "auto": ("weighting_warmup", "auto_momentum")}


def weight_fields(task, strategy) -> Tuple[str, ...]:
    """The preset's fields in the key of a codec for ``task`` (None: MSE) and ``strategy``."""
    if task is None:
        return _RUN_FIELDS
    return _RUN_FIELDS + _ICM_FIELDS + _STRATEGY_FIELDS.get(strategy, ())


def run_config(preset: Preset, task, strategy, rate_index, lmbda: Union[float, List[float]],
               steps: int, seed: int, init_id, world: int = 1) -> Dict[str, Any]:
    """What must match for ``resume=True`` to continue a run (and the core of the cache key)."""
    cfg = {"version": TRAIN_VERSION, "preset": preset.name, "task": task, "strategy": strategy,
           "rate_index": rate_index, "lambda": lmbda, "steps": int(steps), "seed": int(seed),
           "init_from": init_id}
    cfg.update({f: getattr(preset, f) for f in weight_fields(task, strategy)})
    # These also change the weights: DataLoader workers draw other crops than the main
    # process, more processes train on other (and more) batches. They enter the key only
    # when they differ from what every earlier key assumed (0 workers, 1 process), so the
    # codecs already trained keep their keys.
    if preset.codec_transforms != "residual":
        cfg["codec_transforms"] = preset.codec_transforms
    if task is not None and synthesis_quantizer(preset) != "noise":
        cfg["icm_synthesis_quantizer"] = synthesis_quantizer(preset)
    if task is not None and feature_weight(preset, task):
        cfg["icm_feature_weight"] = feature_weight(preset, task)
    if preset.num_workers:
        cfg["num_workers"] = int(preset.num_workers)
    if world > 1:
        cfg["world_size"] = int(world)
    return cfg


#: what an ICM codec's synthesis may see while training (``ICMCodec.synthesis_quantizer``)
SYNTHESIS_QUANTIZERS = ("noise", "ste")


def synthesis_quantizer(preset: Preset, codecs: str = "icm") -> str:
    """What the synthesis sees while ``codecs`` train, checked: ``preset.icm_synthesis_quantizer``
    (the ICM codecs) or ``preset.baseline_synthesis_quantizer`` (the MSE baseline's finishing
    stage). Every other codec trains with ``"noise"``."""
    field = f"{codecs}_synthesis_quantizer"
    value = getattr(preset, field)
    if value not in SYNTHESIS_QUANTIZERS:
        raise ValueError(f"{field} must be one of {SYNTHESIS_QUANTIZERS}, got {value!r}")
    return value


#: the tasks whose networks have the feature pyramid ``icm_feature_weight`` matches
FEATURE_TASKS = ("detection", "instance")


def feature_weight(preset: Preset, task: Optional[str] = None) -> float:
    """``preset.icm_feature_weight`` (φ), checked (a number >= 0), for a codec of ``task``:
    0 for the semantic task, whose U-Net has no feature pyramid to match, so that one
    preset can hold the recipe of every task (its semantic codecs' keys stay as they were)."""
    value = preset.icm_feature_weight
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"icm_feature_weight must be a number >= 0, got {value!r}")
    return float(value) if task in FEATURE_TASKS else 0.0


def check_baseline_quantizer(preset: Preset) -> None:
    """``baseline_synthesis_quantizer`` applies to the finishing stage: refused without one,
    rather than ignored."""
    if synthesis_quantizer(preset, "baseline") != "noise" and not preset.mse_finish_steps:
        raise ValueError("baseline_synthesis_quantizer applies to the MSE baseline's finishing "
                         "stage, and this preset has none (mse_finish_steps=0)")


def without_unused_fields(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A codec configuration written before :func:`weight_fields` (every ICM setting in every
    key), as :func:`run_config` writes it now: the settings its codec's training never read
    are left out, in the codecs it starts from too. Keys of shipped codecs are migrated
    with it (``python -m icmlib.ship --rekey``), their files unchanged."""
    cfg = dict(config)
    if isinstance(cfg.get("init_from"), Mapping):
        cfg["init_from"] = without_unused_fields(cfg["init_from"])
    if "strategy" in cfg and "task" in cfg:
        kept = set(weight_fields(cfg["task"], cfg["strategy"]))
        for field in set(_ICM_FIELDS).union(*_STRATEGY_FIELDS.values()) - kept:
            cfg.pop(field, None)
    return cfg
