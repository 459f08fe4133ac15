"""Named configurations, so no notebook or command needs editing to change scale.

Three presets:

* ``ci``  – seconds per step; the whole test suite (unit tests + every notebook) in minutes.
* ``cpu`` – the toy-world reproduction on a 2-core CPU in well under an hour.
* ``gpu`` – paper scale: COCO 2017, COCO-pretrained torchvision task networks.

The preset is chosen by the ``ICM_PRESET`` environment variable; without it, ``gpu``
when CUDA is available and ``cpu`` otherwise. ``get_preset("cpu", batch_size=4)``
returns a copy with fields overridden, for experiments.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional, Tuple

ENV_VAR = "ICM_PRESET"


@dataclass(frozen=True)
class Preset:
    name: str

    # --- data: the synthetic world (ignored when ``dataset == "coco"``) -----------------
    dataset: str = "synthetic"          # "synthetic" or "coco"
    image_size: int = 128               # side of the square synthetic images
    train_images: int = 400
    val_images: int = 64
    max_objects: int = 4
    world_seed: int = 0
    test_images: int = 128              # the test split: reported numbers only, chooses nothing

    # --- the codec -------------------------------------------------------------------
    codec_channels: int = 64            # N: channels of the transforms
    latent_channels: int = 96           # M: channels of the latent y
    codec_blocks: int = 0               # extra residual blocks per stage
    # g_a/g_s: "residual" (ours) or "gdn" (CompressAI's MeanScaleHyperprior = the zoo's
    # mbt2018-mean, whose pretrained weights then load; icmlib.codec.model.TRANSFORMS)
    codec_transforms: str = "residual"
    # "" (default): the MSE codecs are trained here (codec_steps below). A CompressAI zoo
    # model's name ("mbt2018-mean"): the MSE codec of each rate point *is* the zoo codec
    # trained with that λ (icmlib.codec.zoo.ZOO_LAMBDAS), downloaded, not trained, and ICM
    # codecs are fine-tuned from it (icmlib.training.zoo). Needs codec_transforms="gdn" and
    # the zoo architecture's N, M; enters a codec's key only when set.
    codec_zoo: str = ""
    crop_size: int = 64                 # training crops
    batch_size: int = 8
    # How every codec is trained (icmlib.training.codec_for, the book and `icm reproduce`):
    # the MSE codec at rate point ``codec_base_rate`` from scratch (codec_steps); the MSE
    # codecs at the other rates fine-tuned from it (codec_finetune_steps); every ICM codec
    # fine-tuned from the MSE codec of its rate (icm_steps). codec_base_rate = -1: every
    # MSE codec from scratch (codec_steps each).
    # variable_rate: one codec per (task, strategy) serves every rate point through learned
    # gain vectors (icmlib.codec.model.ICMCodec(rates=R), Cui et al. 2021): it is trained from the
    # base MSE codec for codec_finetune_steps (MSE) or icm_steps (ICM), the rates taking turns.
    variable_rate: bool = False
    codec_steps: int = 3000             # steps for an MSE (human-vision) codec from scratch
    codec_base_rate: int = 1
    codec_finetune_steps: int = 300
    icm_steps: int = 1500               # steps for an ICM codec (with a task network)
    lr: float = 1e-4
    aux_lr: float = 1e-3
    clip_max_norm: float = 1.0
    # rate-distortion trade-offs: lambda for the MSE term in L = R + lambda*255^2*MSE
    rd_lambdas: Tuple[float, ...] = (0.0018, 0.0035, 0.0067, 0.013)
    # variable_rate only: lower rate points served by a second variable-rate codec per
    # (task, strategy) (rate "low", icmlib.training.recipe), trained from the same parents
    # with the same steps per rate point, so the reproduction's curves reach down to the
    # anchors' lowest accuracies without the low rates sharing (and pulling down) the
    # transforms of rd_lambdas' codec. The book's chapters use rd_lambdas only.
    low_rd_lambdas: Tuple[float, ...] = ()
    # variable_rate only: the MSE baseline's own lowest rate points (rate "mse-low", one
    # variable-rate MSE codec from the low-rate one): an ICM codec codes at a few times
    # fewer bits than the MSE codec of its λ, so without them "at equal bpp" could compare
    # only the ICM codecs' highest rates with the baseline. No ICM codec has them.
    mse_low_rd_lambdas: Tuple[float, ...] = ()
    # variable_rate only: the MSE baseline's own points between the low-rate codec's and
    # rd_lambdas' codec's rates (rate "mse-mid", a variable-rate MSE codec from the low-rate
    # one), where the ICM codecs' middle rates lie: without them the baseline's curve is
    # interpolated across that gap. No ICM codec has them. Like mse_low_rd_lambdas, as many
    # λ as low_rd_lambdas: the codec starts from the low-rate one, gain vector for gain vector.
    mse_mid_rd_lambdas: Tuple[float, ...] = ()
    # The MSE baseline a reproduction reports (icmlib.training.baseline_run): each MSE codec
    # above, fine-tuned for mse_finish_steps on the ICM codecs' crops (icm_crop_size,
    # icm_batch_size), so that the baseline and the ICM codecs it is compared with end their
    # training on the same images. A codec trained only on crops one hyperprior position
    # wide (crop_size = 64 = STRIDE) never sees a wider ẑ and codes whole images at up to
    # 3.7× the bits of their quarters (benchmarks/whole_vs_quarters.py). 0: the baseline is
    # the MSE codec itself. The ICM codecs still start from the MSE codecs above (their
    # keys do not change).
    mse_finish_steps: int = 0
    # what the synthesis sees in that finishing stage (as icm_synthesis_quantizer below):
    # "noise" or "ste"; it enters the baseline's key only when it is not "noise"
    baseline_synthesis_quantizer: str = "noise"

    # --- task networks ---------------------------------------------------------------
    task_pretrained: bool = False       # True: torchvision COCO weights (downloads)
    task_backbone_width: int = 16       # small backbone for the toy presets
    task_fpn_channels: int = 32
    task_finest_stride: int = 8         # finest feature-pyramid level: stride 8 (or 4)
    task_image_size: int = 128          # min/max size the detector resizes to
    task_steps: int = 1500              # training steps of the detectors (Faster/Mask R-CNN)
    task_batch_size: int = 4
    task_lr: float = 2e-3               # AdamW peak learning rate (warm-up, cosine decay)
    task_weight_decay: float = 1e-4
    task_warmup_steps: int = 100
    task_train_images: int = 0          # training images for task networks (0: train_images)
    task_representation_size: int = 128 # box head (TwoMLPHead) width; torchvision: 1024
    task_rpn_batch_size: int = 64       # anchors sampled per image for the RPN loss; tv: 256
    task_roi_batch_size: int = 64       # proposals sampled per image for the RoI loss; tv: 512
    task_detections_per_image: int = 20
    task_unet_width: int = 16           # semantic task network (U-Net)
    task_unet_depth: int = 3
    task_semantic_steps: int = 1000
    # Mask R-CNN = Faster R-CNN + a mask branch: start it from the trained detector
    # ("detection") and fine-tune for task_instance_steps, or train it alone ("")
    task_instance_init: str = "detection"
    task_instance_steps: int = 1000

    # --- evaluation ------------------------------------------------------------------
    eval_images: int = 64

    # --- reproduction (icmlib.evaluation.reproduce, `icm reproduce`) ---------------------------------
    # Its codecs are codec_for's (rate points rd_lambdas; steps above), so the book and the
    # reproduction share them. See icmlib/evaluation/reproduction.py for the budget of each preset.
    repro_eval_images: int = 32         # test images every codec is evaluated on (0: all)
    repro_anchors: Tuple[str, ...] = () # anchor names (icmlib.evaluation.anchors.ANCHORS); () = all
    repro_anchor_points: int = 6        # settings per anchor, spread over its range; 0 = all
    repro_strategies: Tuple[str, ...] = ("fixed", "dynamic")

    # --- segmentation chapters (icmlib.segmentation) ------------------------------------------
    seg_image_size: int = 96            # images and masks are resized to this square size
    seg_width: int = 16                 # channels of the first U-Net stage
    seg_depth: int = 3                  # poolings in the U-Net / FCN encoder
    seg_steps: int = 300                # training steps of one segmenter
    seg_batch_size: int = 8
    seg_lr: float = 5e-3                # Adam
    seg_val_every: int = 50             # validation (early stopping) period, in steps
    seg_patience: int = 4               # validations without improvement before stopping
    seg_eval_images: int = 64           # validation images used in the results tables
    seg_patch_size: int = 13            # window of the sliding-window patch classifier
    seg_pretrain_steps: int = 300       # transfer learning: steps on the source task
    seg_transfer_labels: int = 16       # transfer learning: labelled target images
    seg_transfer_steps: int = 150       # transfer learning: steps on the target task
    seg_gan_steps: int = 300            # cGAN / VAE segmenters
    seg_latent_dim: int = 6             # VAE segmenter latent size

    # --- codec training (icmlib.training, icmlib.training.weighting) -----------------------------
    train_seed: int = 0                 # seeds codec init, batches, crops and noise
    checkpoint_every: int = 250         # steps between resumable checkpoints
    train_val_images: int = 16          # val images coded for real at each validation
    lr_decay_at: float = 0.8            # fraction of the steps after which lr (and aux) x0.1
    icm_task_weight: float = 100.0      # tau: full-strength w_task = tau * lambda
    icm_mse_weight: float = 0.1         # mu: an ICM codec keeps w_mse = mu * lambda
    icm_synthesis_quantizer: str = "noise"  # what an ICM codec's synthesis (and so the task
                                        # network) sees while training: "noise", ŷ = y + u as
                                        # the rate term does; "ste", y rounded around its
                                        # mean with a straight-through gradient, the decoded
                                        # image (ICMCodec.synthesis_quantizer)
    icm_feature_weight: float = 0.0     # phi: adds phi * L_feat to an ICM codec's task term,
                                        # L_feat the task network's feature pyramid on x-hat
                                        # against on x, relative squared error
                                        # (icmlib.codec.losses.feature_distortion); 0: the
                                        # paper's task loss alone. In the key only when > 0;
                                        # semantic codecs ignore it (no feature pyramid)
    weighting_warmup: float = 0.1       # dynamic: MSE only until this fraction of steps
    weighting_ramp_end: float = 0.5     # dynamic: task at full strength from this fraction
    auto_momentum: float = 0.9          # auto: momentum of the running loss magnitudes
    icm_init_from_mse: bool = True      # codec_for: start ICM codecs from the MSE codec
    icm_crop_size: int = 128            # ICM training crops (0: crop_size). The small task
                                        # networks resize every input to task_image_size, so
                                        # a smaller crop would show them objects too large
    icm_batch_size: int = 4             # ICM training batch (0: batch_size)
    train_threads: int = 0              # torch CPU threads while training (0: torch's default);
                                        # tiny ci tensors run faster on one thread

    # --- runtime ---------------------------------------------------------------------
    device: str = "cpu"
    num_workers: int = 0
    amp: bool = False
    log_every: int = 25
    val_every: int = 250                # validation period of MSE codec runs
    icm_val_every: int = 250            # ... of ICM runs (the weighting comparison's curves)

    def replace(self, **overrides) -> "Preset":
        """A copy with some fields changed (unknown names raise a clear error)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown preset field(s) {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS = {
    "ci": Preset(
        name="ci",
        image_size=64, train_images=24, val_images=8, max_objects=3,
        codec_channels=32, latent_channels=48, crop_size=64, batch_size=4,
        codec_steps=40, codec_finetune_steps=10, icm_steps=10, lr=1e-3,
        rd_lambdas=(0.0035, 0.013, 0.05, 0.2),
        task_backbone_width=8, task_fpn_channels=16, task_image_size=64,
        task_steps=20, task_batch_size=4, task_warmup_steps=5, task_representation_size=32,
        task_rpn_batch_size=32, task_roi_batch_size=32, task_unet_width=8, task_unet_depth=2,
        task_semantic_steps=20, task_instance_steps=20,
        eval_images=4, log_every=5, val_every=20, icm_val_every=5,
        repro_eval_images=4, repro_anchors=("jpeg", "webp", "hevc", "vvc"),
        repro_anchor_points=4,
        checkpoint_every=5, train_val_images=4, icm_crop_size=64, icm_batch_size=4,
        train_threads=1,
        seg_image_size=64, seg_width=8, seg_steps=30, seg_batch_size=4, seg_lr=1e-2, seg_val_every=10,
        seg_patience=3, seg_eval_images=8, seg_patch_size=9, seg_pretrain_steps=20,
        seg_transfer_labels=4, seg_transfer_steps=15, seg_gan_steps=30,
    ),
    "cpu": Preset(
        name="cpu",
        # task networks: ~1600 training images (the world extended), 2500 AdamW steps
        task_steps=2500, task_train_images=1600, task_lr=3e-3, task_instance_steps=600,
        task_semantic_steps=600,
        # codecs: short runs need a larger step than the paper-scale 1e-4 (measured: MSE
        # codec at λ=0.0067 reaches 21.8 dB after 800 steps at 1e-3). Rate points: with
        # λ = 0.0018..0.013 every learned codec landed at 0.07-0.2 bpp, below most anchors'
        # lowest settings (data/results/cpu at commit 006c17b); these reach higher.
        # Steps: the convergence study (data/results/cpu/convergence.md) trained the base
        # MSE codec for 20000 steps, 10x the 2000 of the first runs, whose codecs were far
        # from converged. One variable-rate codec per (task, strategy) serves the 4 rate
        # points (7 codecs instead of 28 for these four points: a quarter of the training and
        # of the shipped bytes): MSE from the base for codec_finetune_steps, each ICM codec
        # from it for icm_steps, the rates taking turns.
        # low_rd_lambdas: two lower rate points (a second variable-rate codec per task and
        # strategy, 1000/750 steps per rate as above) so every curve reaches the anchors'
        # lowest accuracies. Measured: one six-rate MSE codec (6000 steps) lost 0.3 dB at
        # λ=0.025 against the four-rate one (25.40 dB at 0.83 bpp vs 25.68 at 0.73).
        # mse_low_rd_lambdas: the MSE baseline's own lowest points, towards the ICM codecs'
        # lowest rates (0.03-0.06 bpp), so the share of bits inside objects is compared at
        # equal bpp there too (data/results/cpu/object_share_study.md). Measured on
        # validation images: λ = 0.00005 codes at 0.061 bpp / 20.3 dB after 2000 steps; at
        # λ = 0.00001 the real bits rose from 0.093 to 0.114 bpp between steps 1000 and
        # 2000 while training's estimate, on 64-pixel crops, stayed at 0.065, so it was
        # not used. Nor λ = 0.00002 (with 0.0001):
        # at steps 1000/2000/3000 it coded at 0.169/0.085/0.073 bpp, always more than
        # λ = 0.0001 beside it (0.120/0.060/0.052), its PSNR falling to 16.4 dB. That
        # floor of about 0.05 bpp was the 64-pixel crops' (see mse_finish_steps).
        # mse_finish_steps, on validation images: the lowest MSE codec finished on whole
        # images for 250 / 500 steps (batch 8) coded at 0.018 / 0.017 bpp, 20.8 dB (from
        # 0.049 bpp, 20.8 dB); 1000 steps at the ICM codecs' batch of 4 give 0.018 bpp /
        # 20.7 dB and 0.027 / 22.0, MSE-low 0.043 / 22.8 (from about 0.13 bpp), and the
        # λ = 0.025 point 0.61 bpp / 25.7 dB (from 0.73 / 25.7). 4.5-5.3 min per codec.
        # mse_mid_rd_lambdas: the baseline's finished points jumped from 0.062 bpp (low codec,
        # λ 0.0013) to 0.295 (rd_lambdas' codec, λ 0.0035) on validation images, where the
        # ICM codecs have points at 0.08-0.17. λ does not carry over between codecs trained
        # from different parents (a pair's rate also jumped at the learning-rate drop), so
        # three pairs were tried, each 4000 steps from the low codec and finished, and the
        # one leaving the smallest gap (log2 of the bpp ratio) between 0.062 and 0.295 kept:
        # (0.0017, 0.0025) gave 0.081 / 0.103 bpp (23.4 / 23.6 dB), largest gap 1.52;
        # (0.003, 0.008) 0.215 / 0.325 (24.3 / 24.8 dB), 1.79; (0.0025, 0.005) 0.151 / 0.218
        # (23.9 / 24.3 dB), 1.28. About 14 min per pair.
        # icm_steps: 6000 was measured against these 3000 for two ICM codecs (validation
        # images, benchmarks/icm_steps_study.py): BD-rate -28.7 % (detection, dynamic) and
        # +38.6 % (detection, auto), no consistent gain, so the codecs keep 3000.
        lr=1e-3, rd_lambdas=(0.0035, 0.0093, 0.025, 0.067), low_rd_lambdas=(0.0005, 0.0013),
        mse_low_rd_lambdas=(0.00005, 0.0002), mse_mid_rd_lambdas=(0.0025, 0.005),
        mse_finish_steps=1000,
        codec_steps=20000, codec_base_rate=2, variable_rate=True,
        codec_finetune_steps=4000, icm_steps=3000,
        val_every=1000, icm_val_every=500,
        repro_strategies=("fixed", "dynamic", "auto"), repro_eval_images=0,
    ),
    "gpu": Preset(
        name="gpu", dataset="coco",
        # The MSE baseline of each rate point is CompressAI's pretrained mbt2018-mean at
        # quality 1-4 (N=128, M=192 at those qualities), with the λ it was trained with
        # (CompressAI's model zoo page, https://interdigitalinc.github.io/CompressAI/zoo.html,
        # "lambda values used for training"; the same list is in compressai/models/vbr.py):
        # nothing is trained from scratch, so codec_steps and codec_finetune_steps are 0.
        # Every ICM codec is fine-tuned from it for icm_steps on COCO train2017: sized so
        # one codec fits a Colab session on a T4 (the estimate from FLOP counts in the
        # "Running at paper scale" chapter), resumable from its checkpoints under
        # $ICM_CACHE. The paper's dynamic strategy only: 2 tasks x 4 rates = 8 codecs.
        codec_zoo="mbt2018-mean", codec_transforms="gdn",
        codec_channels=128, latent_channels=192, codec_blocks=0,
        crop_size=256, batch_size=8, codec_steps=0, codec_finetune_steps=0,
        icm_steps=10_000, variable_rate=False,
        rd_lambdas=(0.0018, 0.0035, 0.0067, 0.0130),
        task_pretrained=True, task_image_size=800, task_steps=0, task_batch_size=8,
        task_unet_width=32, task_unet_depth=4, task_semantic_steps=20_000,
        task_detections_per_image=100,
        device="cuda", num_workers=8, amp=True,
        codec_base_rate=-1, repro_anchor_points=0, repro_strategies=("dynamic",),
        # val2017 images every codec is evaluated on: a fixed subset (the first 500 by
        # image id; `icm evaluate` too); 0 evaluates on all 5000
        eval_images=500, repro_eval_images=500,
        log_every=100, val_every=2000, icm_val_every=2000,
        checkpoint_every=500, train_val_images=200, icm_crop_size=0, icm_batch_size=0,
        seg_image_size=256, seg_width=32, seg_depth=4, seg_steps=20_000, seg_batch_size=16,
        seg_lr=1e-3, seg_val_every=1000, seg_patience=5, seg_eval_images=500,
        seg_patch_size=17, seg_pretrain_steps=20_000, seg_transfer_labels=200, seg_transfer_steps=5000,
        seg_gan_steps=20_000,
    ),
}


def default_preset_name() -> str:
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    try:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover - torch is a hard dependency
        return "cpu"


def get_preset(name: Optional[str] = None, **overrides) -> Preset:
    """The preset called ``name`` (default: ``$ICM_PRESET``, else picked from the hardware)."""
    if isinstance(name, Preset):
        return name.replace(**overrides) if overrides else name
    name = name or default_preset_name()
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)} "
                         f"(set with --preset or the {ENV_VAR} environment variable)")
    preset = PRESETS[name]
    return preset.replace(**overrides) if overrides else preset
