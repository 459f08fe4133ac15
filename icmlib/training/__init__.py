"""Training codecs: the recipe, the codec's train step on :mod:`icmlib.engine`'s loop,
validation, and the loss-weighting strategies that make a codec an ICM codec.

============== =========================================================================
``run``        :func:`codec_for` / :func:`codec_run`: train-or-load a codec by the recipe;
               :func:`baseline_run`: the MSE baseline a reproduction reports
``recipe``     which codec serves a rate, what it is fine-tuned from, its cache key
``zoo``        ``codec_zoo`` presets (``gpu``): the MSE codec is CompressAI's, not trained
``codec``      :func:`train_codec`: one codec's run, its train step and validation hook
``own``        :func:`train_icm_codec`: a codec for your own task network and COCO folder
``start``      a run's first weights (random or ``init_from``) and its two optimizers
``batches``    training batches addressed by step, so a resumed run gets them again
``validation`` :func:`validate_codec`: real bytes, the likelihood estimate, PSNR, the task
``weighting``  the strategies that weigh rate, MSE and task: fixed, dynamic, automatic
============== =========================================================================
"""
from icmlib.engine import TrainingDiverged, read_log
from icmlib.training.codec import (CHECKPOINT_NAME, CODEC_NAME, TRAIN_LOG, VAL_LOG,
                                   CodecTraining, train_codec)
from icmlib.training.recipe import (ALL_RATES, LOW_RATES, MSE_LOW_RATES, MSE_MID_RATES,
                                    MSE_ONLY_RATES, TRAIN_VERSION,
                                    baseline_config, codec_config, codec_parent,
                                    default_steps, finishing_preset, has_rate, rate_points,
                                    recipe_rate, resolve_rate)
from icmlib.training.own import train_icm_codec
from icmlib.training.zoo import zoo_codec_config, zoo_mse_checkpoint, zoo_quality_for
from icmlib.training.run import baseline_run, codec_at_rate, codec_for, codec_run, logs_at_rate
from icmlib.training.start import configure_optimizers
from icmlib.training.validation import validate_codec
from icmlib.training.weighting import (STRATEGIES, Dynamic, Fixed, Magnitude, PerRate,
                                       WeightingStrategy, fixed_weights, make_strategy,
                                       rate_at, schedule)

__all__ = [
    # train-or-load by the recipe
    "codec_for", "codec_run", "codec_at_rate", "logs_at_rate", "baseline_run",
    "baseline_config", "finishing_preset", "codec_config", "codec_parent", "default_steps",
    "recipe_rate", "resolve_rate",
    "rate_points", "has_rate", "ALL_RATES", "LOW_RATES", "MSE_LOW_RATES", "MSE_MID_RATES",
    "MSE_ONLY_RATES", "TRAIN_VERSION",
    # the MSE codec from CompressAI's zoo (codec_zoo presets: gpu)
    "zoo_quality_for", "zoo_codec_config", "zoo_mse_checkpoint",
    # one training run
    "train_codec", "CodecTraining", "TrainingDiverged", "configure_optimizers",
    "validate_codec", "read_log", "CHECKPOINT_NAME", "CODEC_NAME", "TRAIN_LOG", "VAL_LOG",
    # your own task network and data
    "train_icm_codec",
    # loss weighting
    "STRATEGIES", "WeightingStrategy", "Fixed", "Dynamic", "Magnitude", "PerRate",
    "fixed_weights", "make_strategy", "rate_at", "schedule",
]
