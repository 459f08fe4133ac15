"""The codec: transforms and hyperprior, rANS, the ``.icm`` file, the loss terms, the default codec.

=============== ==========================================================================
``model``       :class:`ICMCodec` (residual transforms, mean & scale hyperprior, CompressAI's
                model API), variable-rate views, padding, image ↔ rANS strings,
                fingerprints, checkpoints (:func:`save_codec`, :func:`load_codec`)
``determinism`` what makes a file decode alike on every device and thread count (h_s in
                float64, the scale-table search), and the synthesis at full speed
``ans``         a readable rANS coder that writes CompressAI's bytes (``from icmlib.codec
                import ans``: ``ans.encode``, ``ans.decode``...)
``bitstream``   the ``.icm`` container: header, streams, checksum, clear errors
``probability`` the probability model taken apart: real vs estimated bits, noise vs rounding
``losses``      the loss terms: rate, MSE, task (``from icmlib.codec import losses``)
``pretrained``  the shipped default codec, or a checkpoint named on the command line;
                a variable-rate codec's quality
``zoo``         CompressAI's pretrained codecs (``zoo:NAME:QUALITY``): cached weights, loading
``context``     a context model on ŷ: CompressAI's joint autoregressive + hyperprior against
                the hyperprior alone, trained alike, real bytes, encode / decode time
=============== ==========================================================================
"""
# model first: it silences CompressAI's import-time deprecation notice before anything loads it
from icmlib.codec.model import (CHECKPOINT_FORMAT, SCALE_TABLE, STRIDE, AtRate, ICMCodec,
                                analysis_transform, at_rate, codec_checkpoint, crop,
                                decode_image, encode_image, fingerprint, likelihood_bits,
                                load_codec, pad, padding_for, quantized_image, run_codec,
                                save_codec, synthesis_transform)
from icmlib.codec.ans import RansDecoder, RansEncoder, RansError, quantize_cdf, use_icmlib_ans
from icmlib.codec.bitstream import (BitstreamError, ICMFile, check_model, compress_image,
                                    compress_to_bytes, decompress_bytes, decompress_file,
                                    header_size, layout, pack, read_icm, stream_names, unpack,
                                    write_icm)
from icmlib.codec.losses import loss_terms, mse_loss, psnr_from_mse, rate_bpp, task_loss, total_loss
from icmlib.codec.determinism import ExactHyperSynthesis, TableGaussianConditional
from icmlib.codec.pretrained import (DEFAULT_ENTRY, DEFAULT_QUALITY, ModelError, at_quality,
                                     decoder_for, default_codec, describe_codec, qualities,
                                     resolve_codec)
from icmlib.codec.zoo import ZOO_MODELS, zoo_codec, zoo_weights
from icmlib.codec.context import (CONTEXT_BUDGETS, CONTEXT_MODELS, code_images,
                                  compare_context_models, context_codec, context_settings,
                                  decode_evaluations, images_fingerprint, train_context_codec,
                                  context_training_curves)
from icmlib.codec.probability import (bits_per_element, compare_noise_and_rounding,
                                      decode_keeping_channels, empirical_entropy_bits,
                                      factorized_prior_bits, noise_vs_rounding, rate_report)

__all__ = [
    # the codec and its parts
    "ICMCodec", "AtRate", "at_rate", "analysis_transform", "synthesis_transform",
    "ExactHyperSynthesis", "TableGaussianConditional", "STRIDE", "SCALE_TABLE",
    # images of any size, coded and decoded
    "pad", "crop", "padding_for", "run_codec", "encode_image", "decode_image",
    "likelihood_bits", "quantized_image", "fingerprint",
    # checkpoints and the default codec
    "CHECKPOINT_FORMAT", "codec_checkpoint", "save_codec", "load_codec", "default_codec",
    "resolve_codec", "decoder_for", "at_quality", "qualities", "DEFAULT_ENTRY",
    "DEFAULT_QUALITY", "ModelError", "describe_codec",
    # CompressAI's pretrained codecs (--model zoo:NAME:QUALITY)
    "ZOO_MODELS", "zoo_codec", "zoo_weights",
    # rANS
    "RansEncoder", "RansDecoder", "RansError", "quantize_cdf", "use_icmlib_ans",
    # the .icm file
    "ICMFile", "BitstreamError", "compress_image", "compress_to_bytes", "decompress_file",
    "decompress_bytes", "read_icm", "write_icm", "pack", "unpack", "layout", "header_size",
    "stream_names", "check_model",
    # the probability model taken apart
    "rate_report", "noise_vs_rounding", "compare_noise_and_rounding", "factorized_prior_bits",
    "empirical_entropy_bits", "bits_per_element", "decode_keeping_channels",
    # the loss terms
    "loss_terms", "total_loss", "rate_bpp", "mse_loss", "task_loss", "psnr_from_mse",
    # a context model on ŷ against the hyperprior alone
    "CONTEXT_MODELS", "CONTEXT_BUDGETS", "context_codec", "context_settings",
    "train_context_codec", "code_images", "compare_context_models", "decode_evaluations",
    "images_fingerprint", "context_training_curves",
]
