"""The settings of one attack run: a dataclass validated once, from which the ``attack`` CLI flags are generated."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, Optional

from ..config import ConfigError, check_field_types
from .target import ATTACK_MODELS

#: the attacks, in the order the docs list them
ATTACK_NAMES = ("embedding", "inversion", "relearn", "resurgence")


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class AttackSettings:
    """One attack on one model and concept (docs/attacks.md)."""

    concept: str = _help("the concept to bring back: a digit (class, text) or an object, style or "
                         "'style object' combination (shapes)", default="7")
    attack: Literal["embedding", "inversion", "relearn", "resurgence"] = _help(
        "embedding (detector-guided conditioning search), inversion (textual inversion on k images), "
        "relearn (fine-tune on k images of the concept), resurgence (fine-tune on retained concepts only)",
        default="embedding")
    model: Literal["class", "text", "shapes"] = _help("the embedded model kind of the attacked model",
                                                      default="class")
    model_path: Optional[str] = _help("the attacked model folder (none: the embedded original)", default=None)
    init: Optional[str] = _help("embedding, inversion: the condition the free conditioning starts from (a digit, "
                                "or a shapes concept; none: the concept's own)", default=None)
    steps: Optional[int] = _help("attack steps (none: 100 for embedding, 200 for inversion, 50 for the "
                                 "fine-tuning attacks)", default=None)
    lr: Optional[float] = _help("step size (none: 0.1 for the embedding attacks; the model's pretraining "
                                "learning rate for the fine-tuning attacks)", default=None)
    batch_size: int = _help("samples (embedding) or images (the others) per attack step", default=16)
    sampler_steps: int = _help("DDIM steps of the embedding attack's differentiable sampler", default=10)
    guidance: Optional[float] = _help("classifier-free guidance of every sampler (none: the evaluator's)",
                                      default=None)
    k: int = _help("images of the concept (inversion, relearn) or of the retained concepts (resurgence)",
                   default=16)
    samples: int = _help("samples the evaluator reads for each ASR", default=100)
    eval_steps: int = _help("DDIM steps of the ASR and FID samplers", default=20)
    asr_every: int = _help("ASR every this many attack steps (the per-step curve, per_step_asr)", default=10)
    keep: Literal["best", "last"] = _help(
        "embedding, inversion: the conditioning reported: best = the read step (every asr_every) whose samples "
        "the detector reads as the concept most often, on samples of the attack's own seed (as UnlearnDiffAtk "
        "stops at its first success); last = the final step's", default="best")
    fid: bool = _help("also report the attacked model's FID and retain accuracy (the evaluator's samples "
                      "of every other concept)", default=True)
    fid_per_class: int = _help("samples per retained digit of the FID evaluation (shapes: a sixth of it per "
                                       "object-style combination)", default=50)
    seed: int = _help("seed of the attack's noise and images (the evaluation seeds are the evaluator's)",
                      default=0)
    out: str = _help("folder of the PNG of attacked samples and report.json", default="attack_out")
    report: Optional[str] = _help("JSON report path (none: OUT/report.json)", default=None)
    threads: Optional[int] = _help("torch CPU threads (none: torch's default)", default=None)

    def __post_init__(self):
        check_field_types(self)
        if self.model not in ATTACK_MODELS:
            raise ConfigError(f"model: expected one of {ATTACK_MODELS}, got {self.model!r}")
        for name in ("batch_size", "sampler_steps", "k", "samples", "eval_steps", "asr_every", "fid_per_class"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected an int >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 0:
            raise ConfigError(f"steps: expected an int >= 0 or none, got {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr: expected a float > 0 or none, got {self.lr}")
        if self.guidance is not None and not self.guidance >= 1.0:
            raise ConfigError(f"guidance: expected a float >= 1 or none, got {self.guidance}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads: expected an int >= 1 or none, got {self.threads}")
        if self.model_path is not None:
            if not os.path.isdir(self.model_path):
                raise ConfigError(f"model_path: expected a model folder, got {self.model_path!r} (no such folder)")

    @property
    def attack_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return {"embedding": 100, "inversion": 200}.get(self.attack, 50)
