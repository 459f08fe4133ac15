"""Machine tasks: the networks the codec is trained for, kept frozen, trained, evaluated.

============== ===========================================================================
``networks``   the task networks: torchvision's Faster / Mask R-CNN (COCO-pretrained on
               ``gpu``, small versions on ``ci``/``cpu``) and a U-Net for semantic segmentation
``frozen``     :class:`FrozenTask`, which gives the codec its task loss (the network's own
               training loss, :func:`task_losses`) while the network never changes
``evaluate``   :func:`evaluate_task`: COCO mAP (boxes, masks) or mIoU, on original or decoded images
``train``      :func:`train_task` for the small networks, :func:`task_network` (train-or-load)
``introspect`` looking inside, for the book: the parts, the input gradient, confident detections
============== ===========================================================================
"""
from icmlib.tasks.evaluate import evaluate_task
from icmlib.tasks.frozen import FrozenTask, task_loss_names, task_losses
from icmlib.tasks.introspect import confident, input_gradient, network_parts
from icmlib.tasks.networks import (PRIMARY_METRIC, TASKS, PretrainedWeightsUnavailable,
                                   SmallBackboneFPN, anchor_sizes, build_task_network,
                                   freeze_batchnorm)
from icmlib.tasks.train import TASKS_VERSION, task_config, task_network, train_task

__all__ = [
    # the networks
    "TASKS", "PRIMARY_METRIC", "PretrainedWeightsUnavailable", "SmallBackboneFPN",
    "build_task_network", "anchor_sizes", "freeze_batchnorm",
    # the frozen task
    "FrozenTask", "task_losses", "task_loss_names",
    # evaluation
    "evaluate_task",
    # training and train-or-load
    "TASKS_VERSION", "task_config", "train_task", "task_network",
    # looking inside
    "network_parts", "input_gradient", "confident",
]
