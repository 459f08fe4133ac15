"""Semantic segmentation, the background of the codec's machine tasks: built up from first principles.

============== ===========================================================================
``layers``     resampling layers by hand: unpooling, max-unpooling, transposed convolution
``metrics``    confusion matrix, pixel accuracy, mIoU, boundary F1, Dice (and the Dice loss)
``data``       the preset's images and masks as tensors; resizing, normalising, augmenting
``models``     the networks: patch classifier, FCN, U-Net (also on torchvision backbones),
               and the generative segmenters' discriminator and VAE
``dilated``    dilated (atrous) convolutions: ASPP and a small DeepLab
``train``      the training loop, train-or-load of the book's named segmenters, and the
               test-split scores the chapters report
``cost``       time and memory, measured: sliding window vs dense, full resolution vs U-Net
``generative`` the cGAN and VAE segmenters' losses
``transfer``   transfer learning: a pretrained backbone in five regimes (staged unfreezing
               among them), with and without augmentation; ImageNet backbones
``viz``        coloured label maps, error overlays, training curves, metric tables
============== ===========================================================================

Two more families, beside the generative ones: ``attention``, a small SegFormer
(overlapping patches, efficient self-attention, Mix-FFN, an all-MLP decoder; segmenter
``"attention"``), and ``autoregressive``, a PixelCNN over the label map conditioned on the
image (teacher forcing, sequential sampling and what it costs).
"""
from icmlib.segmentation.attention import (EfficientSelfAttention, MixFFN, OverlapPatchEmbed,
                                           SegFormerLite, TransformerBlock, segformer_for_width)
from icmlib.segmentation.autoregressive import (AR_FACTOR, AutoregressiveSegmenter,
                                                autoregressive_segmenter_for, coarse_labels,
                                                grid_ceiling_miou, sampling_cost,
                                                teacher_forcing_loss)
from icmlib.segmentation.cost import (FullResolutionCNN, activation_memory_mb, compare_inference_cost,
                                      compare_resolution_cost, evaluate_segmenter, peak_memory_mb,
                                      receptive_field, sliding_window_predict)
from icmlib.segmentation.data import (IMAGENET_MEAN, IMAGENET_STD, SEGMENTATION_SPLITS, JointAugment,
                                      SegmentationError, dataset_to_tensors, denormalize, normalize,
                                      resize_pair, segmentation_data, segmentation_num_classes)
from icmlib.segmentation.dilated import ASPP, DeepLab, dilated_block
from icmlib.segmentation.generative import AdversarialSegLoss, vae_loss
from icmlib.segmentation.layers import (bed_of_nails_unpool, max_pool_with_indices, max_unpool,
                                        nearest_unpool, transposed_conv1d_by_hand, transposed_conv2d)
from icmlib.segmentation.metrics import (boundary_f1, confusion_matrix, dice_loss, dice_score,
                                         mask_boundary, mean_pixel_accuracy, miou, per_class_iou,
                                         pixel_accuracy, segmentation_metrics)
from icmlib.segmentation.models import (FCN, PatchClassifier, PatchDiscriminator, TorchvisionUNet,
                                        UNet, VAESegmenter)
from icmlib.segmentation.train import (LOSSES, OPTIMIZERS, SCHEDULES, SEGMENTERS, build_segmenter,
                                       compare_recipes, dense_segmenter, predict, segmentation_loss,
                                       segmenter_for, segmenter_from_record, test_metrics,
                                       test_results, train_segmenter, training_device)
from icmlib.segmentation.transfer import (REGIME_NAMES, REGIMES, STAGES, BackboneDownloadError,
                                          imagenet_backbone, imagenet_segmenter, pretrain_backbone,
                                          run_transfer_experiment, set_trainable, source_task_data,
                                          train_staged, transfer_model)
from icmlib.segmentation.viz import (colorize, error_overlay, palette, plot_generator_analogy,
                                     plot_training_curves, results_table, show_segmentations)

__all__ = [
    # resampling layers
    "nearest_unpool", "bed_of_nails_unpool", "max_pool_with_indices", "max_unpool",
    "transposed_conv1d_by_hand", "transposed_conv2d",
    # metrics
    "confusion_matrix", "pixel_accuracy", "mean_pixel_accuracy", "per_class_iou", "miou",
    "mask_boundary", "boundary_f1", "dice_loss", "dice_score", "segmentation_metrics",
    # data
    "SegmentationError", "IMAGENET_MEAN", "IMAGENET_STD", "normalize", "denormalize",
    "resize_pair", "JointAugment", "dataset_to_tensors", "segmentation_data",
    "segmentation_num_classes", "SEGMENTATION_SPLITS",
    # networks
    "PatchClassifier", "FCN", "UNet", "TorchvisionUNet", "PatchDiscriminator", "VAESegmenter",
    "dilated_block", "ASPP", "DeepLab",
    # training and train-or-load
    "LOSSES", "OPTIMIZERS", "SCHEDULES", "segmentation_loss", "train_segmenter", "predict",
    "training_device", "SEGMENTERS", "build_segmenter", "segmenter_for", "dense_segmenter",
    "compare_recipes", "test_metrics", "segmenter_from_record", "test_results",
    # cost
    "peak_memory_mb", "activation_memory_mb", "sliding_window_predict", "compare_inference_cost",
    "FullResolutionCNN", "receptive_field", "compare_resolution_cost", "evaluate_segmenter",
    # generative segmenters
    "AdversarialSegLoss", "vae_loss",
    # transfer learning
    "REGIMES", "REGIME_NAMES", "STAGES", "source_task_data", "pretrain_backbone", "set_trainable",
    "transfer_model", "train_staged", "run_transfer_experiment", "BackboneDownloadError", "imagenet_backbone",
    "imagenet_segmenter",
    # pictures and tables
    "palette", "colorize", "error_overlay", "show_segmentations", "plot_training_curves",
    "plot_generator_analogy", "results_table",
    # attention: a small SegFormer
    "OverlapPatchEmbed", "EfficientSelfAttention", "MixFFN", "TransformerBlock", "SegFormerLite",
    "segformer_for_width",
    # autoregressive: a PixelCNN over the labels
    "AR_FACTOR", "AutoregressiveSegmenter", "coarse_labels", "teacher_forcing_loss",
    "grid_ceiling_miou", "autoregressive_segmenter_for", "sampling_cost",
]
