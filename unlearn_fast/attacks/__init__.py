"""Attacks on unlearned models: is the concept erased, or only hidden? (docs/attacks.md)

``run_attack(AttackSettings(...))`` runs one attack on one model and concept and reports the
attack success rate (ASR: the share of the concept's samples the *evaluator* reads as the
concept) before and after it. The attacks: ``embedding`` (a conditioning optimised through a
differentiable sampler against the *detector*), ``inversion`` (textual inversion on k
images), ``relearn`` (fine-tuning on k images of the concept) and ``resurgence``
(fine-tuning on retained concepts only).
"""

from .conditioning import ATTACK_CONDITION, AttackedModel
from .context import AttackContext
from .runner import ATTACKS, build_context, run_attack
from .settings import ATTACK_NAMES, AttackSettings
from .target import ATTACK_MODELS, AttackTarget, attack_target

__all__ = ["ATTACKS", "ATTACK_CONDITION", "ATTACK_MODELS", "ATTACK_NAMES", "AttackContext", "AttackSettings",
           "AttackTarget", "AttackedModel", "attack_target", "build_context", "run_attack"]
