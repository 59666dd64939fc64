"""The trainer: ``train(config)`` runs one unlearning request end to end on accelerate.

Modules: ``loading`` (the model of each family, LoRA, the method), ``data`` (MNIST images
and teacher pools), ``checkpoints`` (atomic checkpoints and the final folder),
``lora_export`` (LoRA in diffusers' format), ``rng`` (seeds and RNG states), ``lock``
(one run per output folder), ``loop`` (the loop itself, with its graceful stop on SIGTERM).
"""

from .checkpoints import (CheckpointWriteError, NoValidCheckpointError, find_latest_checkpoint,
                          find_latest_valid_checkpoint, list_checkpoints, verify_checkpoint)
from .data import SampleSource
from .loading import build_method, load_model
from .lock import OutputInUseError
from .loop import NonFiniteError, TrainingInterrupted, TrainResult, l2_anchor_penalty, train

__all__ = ["CheckpointWriteError", "NoValidCheckpointError", "NonFiniteError", "OutputInUseError", "SampleSource",
           "TrainResult", "TrainingInterrupted", "build_method", "find_latest_checkpoint",
           "find_latest_valid_checkpoint", "l2_anchor_penalty", "list_checkpoints", "load_model", "train",
           "verify_checkpoint"]
