"""What every attack reads: the attacked model, its concept, the detector it may use and the evaluator's ASR."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models import ConditionedModel
from ..sampling import sample
from .settings import AttackSettings
from .target import AttackTarget

#: the seed of every ASR sampler (independent of the attack's own seed, as the evaluators' are)
ASR_SEED = 1234
#: added to the attack's seed for the samples the detector reads when an attack keeps its best step
#: (never the evaluator's samples: the choice must not see what ASR is read on)
DETECTOR_SEED_OFFSET = 7919


@dataclass
class AttackContext:
    settings: AttackSettings
    model: ConditionedModel
    scheduler: object
    target: AttackTarget
    concept_id: int
    detector: torch.nn.Module  # what an attack may descend (never the evaluator)
    classifier: torch.nn.Module  # the evaluator's classifier: what ASR reads
    guidance: float
    init_id: int | None = None  # the condition the conditioning attacks start from (None: the concept)
    log: object = print
    before: tuple | None = None  # (ASR, samples) of the unattacked model's concept, once read (the runner's)

    def _read(self, classifier, model: ConditionedModel, cond_id: int, seed: int) -> tuple[float, torch.Tensor]:
        s = self.settings
        gen = torch.Generator().manual_seed(seed)
        cond = torch.full((s.samples,), cond_id, dtype=torch.long)
        images = model.to_images(sample(model, self.scheduler, cond, steps=s.eval_steps, guidance=self.guidance,
                                        generator=gen))
        return float(self.target.reads(classifier, images).float().mean()), images

    def asr(self, model: ConditionedModel, cond_id: int) -> tuple[float, torch.Tensor]:
        """The share of ``settings.samples`` samples of ``cond_id`` the evaluator reads as the
        concept (DDIM ``eval_steps``, the run's guidance, seed ``ASR_SEED``), with the samples."""
        return self._read(self.classifier, model, cond_id, ASR_SEED)

    def detector_asr(self, model: ConditionedModel, cond_id: int) -> float:
        """The same share read by the *detector* on samples of the attack's own seed: what an attacker
        may measure to pick its best step (the evaluator's samples and classifier stay unseen)."""
        return self._read(self.detector, model, cond_id, self.settings.seed + DETECTOR_SEED_OFFSET)[0]

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.settings.seed + 104729 * offset)
