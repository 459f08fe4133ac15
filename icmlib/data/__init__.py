"""The data: the synthetic world, one dataset for any COCO-format folder, COCO 2017, image files.

============ ===============================================================================
``world``    the synthetic COCO-format world: shapes on detailed backgrounds, cached by seed
``coco``     :class:`CocoDataset` (images, masks, boxes, random crops and flips), batching
``datasets`` :func:`dataset_for`: the dataset a preset trains or evaluates on
``coco2017`` COCO 2017 on disk and :func:`download_coco`
``standin``  the synthetic world laid out as COCO 2017 (:func:`export_coco_layout`)
``download`` downloads that verify checksums and resume (:func:`download_file`)
``images``   image files in and out (:func:`load_image`, :func:`save_image`)
``viz``      annotations drawn over images; the background blurred away
============ ===============================================================================
"""
from icmlib.data.coco import CocoDataset, collate, stack_images
from icmlib.data.coco2017 import (COCO_CHECKSUMS, COCO_ROOT_ENV, COCO_URLS, DatasetNotFoundError,
                                  coco_root, download_coco)
from icmlib.data.datasets import dataset_for
from icmlib.data.standin import STANDIN_SPLITS, export_coco_layout
from icmlib.data.download import (OFFLINE_ENV, ChecksumError, DownloadError, download_file,
                                  downloads_off, hub_checkpoint, hub_download)
from icmlib.data.images import load_image, save_image
from icmlib.data.viz import annotation_grid, blur_background, draw_annotations
from icmlib.data.world import (CATEGORIES, NUM_CLASSES, SYNTHETIC_SPLITS, WORLD_GENERATOR,
                               WORLD_VERSION, generate_world, synthetic_world, world_config)

__all__ = [
    # the synthetic world
    "CATEGORIES", "NUM_CLASSES", "WORLD_VERSION", "WORLD_GENERATOR", "SYNTHETIC_SPLITS",
    "generate_world", "world_config", "synthetic_world",
    # datasets and batches
    "CocoDataset", "dataset_for", "collate", "stack_images",
    # COCO 2017 and downloads
    "COCO_URLS", "COCO_CHECKSUMS", "COCO_ROOT_ENV", "DatasetNotFoundError", "coco_root",
    "download_coco", "download_file", "hub_checkpoint", "hub_download", "downloads_off",
    "OFFLINE_ENV", "DownloadError", "ChecksumError",
    "export_coco_layout", "STANDIN_SPLITS",
    # image files and pictures
    "load_image", "save_image", "blur_background", "draw_annotations", "annotation_grid",
]
