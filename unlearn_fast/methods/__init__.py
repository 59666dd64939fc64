"""Unlearning methods: each a small recipe of heads for the fused loss (see base.py)."""

from .base import FORGET, NOISE, RETAIN, Batch, Method, Recipe
from .baselines import ESD, ConceptAblation, Finetune, NegGrad
from .clacu import ConstrainedLACU
from .fu import ForwardKLUnlearning
from .lacu import LocalityAwareContinualUnlearning
from .lu import LikelihoodUnlearning
from .ru import ReverseKLUnlearning

METHODS = {
    "ru": ReverseKLUnlearning,
    "fu": ForwardKLUnlearning,
    "lu": LikelihoodUnlearning,
    "esd": ESD,
    "ablation": ConceptAblation,
    "neggrad": NegGrad,
    "finetune": Finetune,
    "lacu": LocalityAwareContinualUnlearning,
    "clacu": ConstrainedLACU,
}

__all__ = ["FORGET", "NOISE", "RETAIN", "Batch", "Method", "Recipe", "METHODS", "ESD", "ConceptAblation", "ConstrainedLACU",
           "Finetune", "NegGrad", "ForwardKLUnlearning", "LikelihoodUnlearning", "ReverseKLUnlearning"]
