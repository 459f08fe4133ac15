"""The training engine: one loop for codecs, task networks and segmenters.

What each of them supplies is a ``train_step(step) -> row`` and its callbacks; what they
share lives here, below all of them (it imports only torch, tqdm and icmlib's cache):

================ ============================================================================
``loop``         :func:`train_loop` (step, then callbacks), :func:`every`, divergence checks
``state``        :class:`RunState` (step, parts, random states) and its checkpoint file
``rng``          every random state of a process; validation that consumes none of them
``report``       :class:`Reporter`: CSV logs, TensorBoard, the progress bar; :func:`read_log`
``distributed``  which process this is (DDP), and the collective operations a loop needs
``device``       the run's device and CPU threads
================ ============================================================================
"""
from icmlib.engine.device import threads, training_device
from icmlib.engine.distributed import (Processes, all_gather_object, all_mean,
                                       average_gradients, barrier, data_parallel, processes,
                                       world_size)
from icmlib.engine.loop import TrainingDiverged, check_finite, every, train_loop
from icmlib.engine.report import CSVLog, Reporter, read_log
from icmlib.engine.rng import isolated_rng, rng_state, set_rng_state
from icmlib.engine.state import RunState, load_checkpoint, save_checkpoint

__all__ = [
    # the loop
    "train_loop", "every", "TrainingDiverged", "check_finite",
    # the run's state and its checkpoint
    "RunState", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state",
    "isolated_rng",
    # reporting
    "Reporter", "CSVLog", "read_log",
    # processes and devices
    "Processes", "processes", "world_size", "all_mean", "all_gather_object",
    "average_gradients", "barrier", "data_parallel", "training_device", "threads",
]
