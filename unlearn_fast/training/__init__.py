"""The trainer: ``train(config)`` runs one unlearning request end to end on accelerate.

Modules: ``loading`` (the model of each family, LoRA, the method), ``data`` (MNIST images
and teacher pools), ``checkpoints`` (atomic checkpoints and the final folder),
``lora_export`` (LoRA in diffusers' format), ``rng`` (seeds and RNG states), ``loop``
(the loop itself).
"""

from .checkpoints import find_latest_checkpoint, list_checkpoints
from .data import SampleSource
from .loading import build_method, load_model
from .loop import NonFiniteError, TrainResult, l2_anchor_penalty, train

__all__ = ["NonFiniteError", "SampleSource", "TrainResult", "build_method", "find_latest_checkpoint",
           "l2_anchor_penalty", "list_checkpoints", "load_model", "train"]
