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
from dataclasses import dataclass, field
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

    # --- the codec -------------------------------------------------------------------
    codec_channels: int = 64            # N: channels of the transforms
    latent_channels: int = 96           # M: channels of the latent y
    codec_blocks: int = 0               # extra residual blocks per stage
    crop_size: int = 64                 # training crops
    batch_size: int = 8
    codec_steps: int = 3000             # steps for an MSE (human-vision) codec
    icm_steps: int = 1500               # steps for an ICM codec (with a task network)
    lr: float = 1e-4
    aux_lr: float = 1e-3
    clip_max_norm: float = 1.0
    # rate-distortion trade-offs: lambda for the MSE term in L = R + lambda*255^2*MSE
    rd_lambdas: Tuple[float, ...] = (0.0018, 0.0035, 0.0067, 0.013)

    # --- task networks ---------------------------------------------------------------
    task_pretrained: bool = False       # True: torchvision COCO weights (downloads)
    task_backbone_width: int = 16       # small backbone for the toy presets
    task_fpn_channels: int = 32
    task_image_size: int = 128          # min/max size the detector resizes to
    task_steps: int = 1500
    task_batch_size: int = 4
    task_lr: float = 2e-3

    # --- evaluation ------------------------------------------------------------------
    eval_images: int = 64

    # --- runtime ---------------------------------------------------------------------
    device: str = "cpu"
    num_workers: int = 0
    amp: bool = False
    log_every: int = 25
    val_every: int = 250

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
        codec_steps=40, icm_steps=20, lr=1e-3,
        rd_lambdas=(0.0035, 0.013, 0.05, 0.2),
        task_backbone_width=8, task_fpn_channels=16, task_image_size=64,
        task_steps=20, task_batch_size=4,
        eval_images=4, log_every=5, val_every=20,
    ),
    "cpu": Preset(name="cpu"),
    "gpu": Preset(
        name="gpu", dataset="coco",
        codec_channels=128, latent_channels=192, codec_blocks=1,
        crop_size=256, batch_size=16, codec_steps=300_000, icm_steps=200_000,
        rd_lambdas=(0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483),
        task_pretrained=True, task_image_size=800, task_steps=0, task_batch_size=8,
        eval_images=5000, device="cuda", num_workers=8, amp=True,
        log_every=100, val_every=5000,
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
