"""Evaluation helpers: the shipped digit classifier used to score generated samples (and the
concept detector continual unlearning checks its mapping targets with)."""

from .classifier import (
    CLASSIFIER_CONFIG_FILE,
    CLASSIFIER_WEIGHTS_FILE,
    DETECTOR_WEIGHTS_FILE,
    DigitClassifier,
    load_classifier,
    load_detector,
)

__all__ = ["CLASSIFIER_CONFIG_FILE", "CLASSIFIER_WEIGHTS_FILE", "DETECTOR_WEIGHTS_FILE", "DigitClassifier", "load_classifier",
           "load_detector"]
