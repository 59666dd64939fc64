"""Evaluation helpers: the shipped digit classifier used to score generated samples."""

from .classifier import (
    CLASSIFIER_CONFIG_FILE,
    CLASSIFIER_WEIGHTS_FILE,
    DigitClassifier,
    load_classifier,
)

__all__ = ["CLASSIFIER_CONFIG_FILE", "CLASSIFIER_WEIGHTS_FILE", "DigitClassifier", "load_classifier"]
