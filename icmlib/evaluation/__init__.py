"""Evaluation: the anchors, rates from real bytes, task accuracy over a dataset, BD-rate,
results files, the reproduction and its figures.

================ ========================================================================
``anchors``      the codecs compared against, behind one interface (:class:`Codec`):
                 Pillow (JPEG, WebP, AVIF, JPEG 2000), ffmpeg (HEVC, AV1), VVC, learned
``overheads``    what a codec's bytes are made of: the coded stream the rate counts, and
                 the containers, metadata and size prefix it does not
``accuracy``     which images, which frozen task networks (loaded once), what they score
``evaluate``     :func:`evaluate_codec`: encode to bytes, decode, measure; cached by key
``bdrate``       the Bjøntegaard delta (BD-rate, BD-quality), cubic and PCHIP
``results``      the results file: schema, provenance, save and load
``tables``       tables from a results file: :func:`bd_rate_table`, overheads
``summary``      the reproduction's numbers: :func:`paper_table`, :func:`summarize`
``report``       the reproduction's files: ``summary.md``, tables, figures, bit maps
``reproduction`` :func:`reproduce`: train or load, evaluate, write (``icm reproduce``)
``plots``        rate-accuracy curves, the BD illustration, weighting and training logs
``bitmaps``      where the bits go: estimated bits per block, inside and outside objects
``oracle``       how much dropping the background could save: images without it, savings
``convergence``  the convergence study (``python -m icmlib.evaluation.convergence``)
================ ========================================================================
"""
import importlib

from icmlib.evaluation.accuracy import (DEFAULT_TASKS, EvaluationError, dataset_images,
                                        dataset_info, evaluation_device, reference_accuracy,
                                        subset, task_accuracy, task_networks)
from icmlib.evaluation.anchors import (ANCHORS, AV1, AVIF, HEVC, JPEG, JPEG2000, VVC,
                                       AnchorUnavailable, Codec, LearnedCodec, WebP,
                                       available_anchors, compressai_zoo_codec, make_anchor,
                                       rd_points, to_pil)
from icmlib.evaluation.bdrate import (BDRateError, BDRateWarning, bd_map, bd_psnr, bd_quality,
                                      bd_rate, bd_rate_halves, bd_rate_pairs, frontier,
                                      rate_difference_at)
from icmlib.evaluation.bitmaps import (bit_map, object_bit_share,
                                       object_share_if_bits_followed_objects, plot_bit_maps)
from icmlib.evaluation.evaluate import (CodedImages, cached_evaluation, codec_settings,
                                        evaluate_codec, evaluate_point, evaluation_key,
                                        learned_codec, pil_to_tensor, tensor_to_pil)
from icmlib.evaluation.plots import (plot_bd_illustration, plot_object_shares, plot_rd_curves,
                                     plot_saving_along_curves, plot_training_logs,
                                     plot_weighting_comparison)
from icmlib.evaluation.report import summary_markdown, write_outputs
from icmlib.evaluation.reproduction import (ReproductionError, book_results, find_results,
                                            reproduce, reproduction_codec, train_codecs)
from icmlib.evaluation.results import (REPRO_TASKS, TASK_METRIC, ResultsError, codec_entry,
                                       cpu_model, curve, find_codec, git_commit, icm_name,
                                       load_results, mse_name, new_results, save_results)
from icmlib.evaluation.summary import (PAPER_BD_RATE, equal_quality_rates, headline_table,
                                       illustration_pair, object_share_table, paper_table,
                                       saving_along_curves, saving_by_accuracy, summarize)
from icmlib.evaluation.tables import (bd_rate_details, bd_rate_table, better_than_reference,
                                      dataframe_to_markdown, overhead_comparison, overhead_table)

#: Names served from ``convergence`` on first use: that module is also run as a script
#: (``python -m icmlib.evaluation.convergence``), and importing it here first would make
#: Python run it twice and warn.
_LAZY = {name: "icmlib.evaluation.convergence"
         for name in ("convergence_rows", "plot_convergence", "write_convergence")}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    # anchors
    "Codec", "AnchorUnavailable", "JPEG", "WebP", "AVIF", "JPEG2000", "HEVC", "AV1", "VVC",
    "LearnedCodec", "ANCHORS", "make_anchor", "available_anchors", "rd_points",
    "compressai_zoo_codec", "to_pil",
    # images, task networks, accuracy
    "DEFAULT_TASKS", "EvaluationError", "subset", "dataset_info", "dataset_images",
    "evaluation_device",
    "task_networks", "task_accuracy", "reference_accuracy",
    # evaluating codecs
    "evaluate_codec", "evaluate_point", "CodedImages", "codec_settings", "learned_codec",
    "evaluation_key", "cached_evaluation", "tensor_to_pil", "pil_to_tensor",
    # BD-rate
    "bd_rate", "bd_quality", "bd_psnr", "bd_map", "bd_rate_pairs", "frontier",
    "rate_difference_at", "bd_rate_halves",
    "BDRateError", "BDRateWarning",
    # results files and tables
    "load_results", "save_results", "new_results", "codec_entry", "find_codec", "curve",
    "TASK_METRIC", "ResultsError", "git_commit", "cpu_model",
    "bd_rate_table", "bd_rate_details", "better_than_reference", "overhead_table",
    "overhead_comparison", "dataframe_to_markdown",
    # the reproduction
    "reproduce", "ReproductionError", "train_codecs", "reproduction_codec", "REPRO_TASKS",
    "mse_name", "icm_name",
    "book_results", "find_results", "paper_table", "summarize", "headline_table",
    "equal_quality_rates", "illustration_pair", "object_share_table", "PAPER_BD_RATE",
    "saving_along_curves", "saving_by_accuracy",
    "summary_markdown", "write_outputs",
    # figures
    "plot_rd_curves", "plot_bd_illustration", "plot_weighting_comparison",
    "plot_training_logs", "bit_map", "object_bit_share",
    "object_share_if_bits_followed_objects", "plot_bit_maps", "plot_object_shares",
    "plot_saving_along_curves",
    # the convergence study
    "convergence_rows", "plot_convergence", "write_convergence",
]
