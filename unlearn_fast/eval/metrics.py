"""The class-unlearning evaluator (as Selective Amnesia, SalUn and EraseDiff evaluate).

For a class-conditional model it generates ``per_class`` samples of every class with a
fixed seed, sampler, step count and guidance, classifies them with the shipped classifier
and reports:

- ``ua``: unlearning accuracy, ``1 -`` the classifier's accuracy on samples of the
  forgotten classes (the goal is about 1);
- ``retain_acc``: accuracy on samples of the other classes;
- ``neighbor_acc``: accuracy on the classes nearest each forgotten one (nearest class
  means in the classifier's feature space, on held-out real digits): the confusable
  classes, damaged first when unlearning spills over;
- ``fid``: Frechet distance between classifier features of generated retained-class
  samples and of held-out real digits of the same classes;
- ``kl_to_original``: an estimate of the KL between the model and the original one on the
  retained classes, ``E[T w_t ||eps - eps_orig||^2]`` in nats per sample (the fused op,
  ``kl`` weights, ``reduction="sum"``) over fixed ``(x_0, t, noise)`` draws, ``t`` drawn in
  proportion to the weights (see ``kl_on_draws``).

For a text-conditioned model the classes are prompts: with ``prompts`` (one per class, e.g.
``"a handwritten digit seven"``) each model's condition ids come from
``model.add_prompts(prompts)``, so models with different prompt lists (the original and an
unlearned one) are scored on the same classes.

Every number depends on these settings, so every report carries them (``settings``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from ..models import ConditionedModel
from ..ops import fused_eps_loss
from ..schedules import timestep_weights
from ..sampling import sample


@dataclass
class EvalSettings:
    per_class: int = field(default=20, metadata={"help": "evaluation samples per class (concept)"})
    steps: int = field(default=20, metadata={"help": "DDIM steps of the evaluation sampler"})
    # the embedded model samples best without guidance (see assets/README.md)
    guidance: float = field(default=1.0, metadata={"help": "classifier-free guidance of the evaluation sampler"})
    sampler: str = "DDIM (eta=0), classifier-free guidance scale `guidance` (1 = none)"
    seed: int = field(default=1234, metadata={"help": "seed of the evaluation samples"})
    kl_draws: int = field(default=16, metadata={"help": "(x_0, t, noise) draws per retained class of kl_to_original"})
    neighbors: int = field(default=2, metadata={"help": "nearest retained classes per forgotten one (neighbor_acc)"})

    def __post_init__(self):
        from ..config import ConfigError, check_field_types

        check_field_types(self, "eval.")
        for name in ("per_class", "steps", "kl_draws"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name}: expected an int >= 1, got {getattr(self, name)}")
        if self.neighbors < 0:
            raise ConfigError(f"eval.neighbors: expected an int >= 0, got {self.neighbors}")


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, F] (float64)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # tr sqrt(cov_a cov_b) = tr sqrt(S cov_b S) with S = cov_a^(1/2), a symmetric PSD matrix
    vals, vecs = torch.linalg.eigh(cov_a)
    root = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(root @ cov_b @ root).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * middle)


def embedded_evaluator(scheduler, settings: EvalSettings | None = None, model: str = "class",
                       image_size: int = 16) -> "ClassEvaluator":
    """The evaluator of the embedded models: the shipped classifier on the held-out MNIST split,
    with the canonical digit prompts as classes for the text model."""
    from ..data.mnist import IMAGE_SIZE, load_split
    from ..models_zoo import embedded_condition_names
    from .classifier import load_classifier

    if image_size != IMAGE_SIZE:
        raise ValueError(f"model_path: the embedded evaluator's classifier reads {IMAGE_SIZE}x{IMAGE_SIZE} digits; "
                         f"this model draws {image_size}x{image_size}")
    images, labels = load_split("heldout", size=image_size)
    return ClassEvaluator(scheduler, load_classifier(), images, labels, settings,
                          prompts=embedded_condition_names("text") if model == "text" else None)


@torch.no_grad()
def weight_stratified_timesteps(weights: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` timesteps drawn with probability ``weights / weights.sum()``, one per stratum of the
    weights' CDF (stratified inverse-CDF sampling), in random order."""
    cdf = torch.cumsum(weights.double(), 0)
    cdf = cdf / cdf[-1]
    u = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=generator, dtype=torch.float64)) / n
    t = torch.searchsorted(cdf, u, right=True).clamp(max=len(weights) - 1)
    return t[torch.randperm(n, generator=generator)]


def kl_on_draws(scheduler, model: ConditionedModel, original: ConditionedModel, x0: torch.Tensor,
                cond: torch.Tensor, original_cond: torch.Tensor, *, seed: int, batch_size: int = 256) -> float:
    """``E_t[T w_t ||eps - eps_orig||^2] = sum_t w_t E||eps - eps_orig||^2`` in nats per sample
    (``kl`` weights, ``reduction="sum"``, the fused op), one ``(t, noise)`` draw per image of ``x0``;
    ``cond`` / ``original_cond``: each image's condition id in either model.

    The weights span six orders of magnitude (on a cosine schedule capped at ``beta = 0.999``
    the last timestep holds almost all of their mass), so a uniform ``t`` would make the figure
    one draw's error. Timesteps are drawn in proportion to ``w_t``, stratified over the weights'
    CDF, and each draw weighs ``sum_t w_t / n``: the same expectation, a far smaller variance.
    """
    g = torch.Generator().manual_seed(seed)
    device = next(model.module.parameters()).device
    weights = timestep_weights(scheduler, "kl").double()
    t = weight_stratified_timesteps(weights, len(x0), g)
    noise = torch.randn(x0.shape, generator=g)
    x_t = scheduler.add_noise(x0, noise, t).to(device)
    t = t.to(device)
    eps, eps_orig = (torch.cat([m.predict(x_t[i:i + batch_size], t[i:i + batch_size],
                                          c[i:i + batch_size].to(device)).float()
                                for i in range(0, len(x0), batch_size)])
                     for m, c in ((model, cond), (original, original_cond)))
    w = torch.full((len(x0), 1), float(weights.sum()) / len(x0), device=device)
    coeffs = torch.tensor([[1.0, -1.0]], device=device)
    loss, _ = fused_eps_loss(eps, [eps_orig], coeffs, w, reduction="sum")
    return float(loss)


class ClassEvaluator:
    """Evaluator of class unlearning on a class-conditional model with ``num_classes`` classes.

    Args:
        scheduler: the model's noise scheduler.
        classifier: a classifier with ``forward`` (logits) and ``features``.
        real_images, real_labels: held-out real images (not used for training) and labels.
        prompts: for a text-conditioned model, the prompt of each class (``num_classes`` of them);
            ``None``: condition id ``c`` is class ``c``.
    """

    def __init__(self, scheduler, classifier, real_images: torch.Tensor, real_labels: torch.Tensor,
                 settings: EvalSettings | None = None, num_classes: int = 10, prompts: Sequence[str] | None = None):
        if prompts is not None and len(prompts) != num_classes:
            raise ValueError(f"prompts: expected one prompt per class ({num_classes}), got {len(prompts)}")
        self.prompts = list(prompts) if prompts is not None else None
        self.scheduler = scheduler
        self.classifier = classifier.eval()
        self.settings = settings or EvalSettings()
        self.num_classes = num_classes
        self.real_images = real_images
        self.real_labels = real_labels.long()
        with torch.no_grad():
            self.real_features = self._features(real_images)
        means = torch.stack([self.real_features[self.real_labels == c].mean(0) for c in range(num_classes)])
        self.class_distance = torch.cdist(means, means)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.classifier.parameters()).device
        return torch.cat([self.classifier.features(images[i:i + 500].to(device)).cpu()
                          for i in range(0, len(images), 500)])

    def neighbors(self, forget: Sequence[int]) -> list[int]:
        """The retained classes nearest any forgotten class (``settings.neighbors`` each)."""
        out = []
        for f in forget:
            order = self.class_distance[f].argsort().tolist()
            near = [c for c in order if c != f and c not in forget][: self.settings.neighbors]
            out.extend(c for c in near if c not in out)
        return out

    def condition_ids(self, model: ConditionedModel, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """The model's condition id of each class, ``[num_classes]`` (``prompts``: other prompts
        for the classes than the evaluator's, e.g. paraphrases)."""
        prompts = prompts if prompts is not None else self.prompts
        if prompts is None:
            return torch.arange(self.num_classes)
        if not hasattr(model, "add_prompts"):
            raise TypeError("model: the evaluator has prompts but the model takes no prompts (not a text model)")
        return torch.tensor(model.add_prompts(list(prompts)))

    def generate(self, model: ConditionedModel, progress=None, classes: Sequence[int] | None = None,
                 prompts: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``per_class`` samples of each of ``classes`` (default: all) and their class labels."""
        s = self.settings
        classes = torch.arange(self.num_classes) if classes is None else torch.tensor(list(classes))
        cond = classes.repeat_interleave(s.per_class)
        g = torch.Generator().manual_seed(s.seed)
        return sample(model, self.scheduler, self.condition_ids(model, prompts)[cond], steps=s.steps,
                      guidance=s.guidance, generator=g, progress=progress), cond

    @torch.no_grad()
    def class_accuracy(self, model: ConditionedModel, classes: Sequence[int],
                       prompts: Sequence[str] | None = None) -> float:
        """The classifier's accuracy on samples of ``classes`` only (a cheap UA probe: ``1 -`` it)."""
        images, cond = self.generate(model, classes=classes, prompts=prompts)
        return float((self._logits(images).argmax(1) == cond).double().mean())

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.classifier.parameters()).device
        return torch.cat([self.classifier(images[i:i + 500].to(device)).cpu() for i in range(0, len(images), 500)])

    @torch.no_grad()
    def kl_to_original(self, model: ConditionedModel, original: ConditionedModel, retain: Sequence[int]) -> float:
        idx = torch.cat([(self.real_labels == c).nonzero().squeeze(1)[: self.settings.kl_draws] for c in retain])
        cond = self.real_labels[idx]
        return kl_on_draws(self.scheduler, model, original, self.real_images[idx], self.condition_ids(model)[cond],
                           self.condition_ids(original)[cond], seed=self.settings.seed + 1)

    def evaluate(self, model: ConditionedModel, forget: Sequence[int], *, original: ConditionedModel | None = None,
                 progress=None) -> dict:
        """The metrics of the module docstring, the per-class accuracies and the samples."""
        forget = [int(f) for f in forget]
        images, cond = self.generate(model, progress)
        with torch.no_grad():
            logits = self._logits(images)
        correct = (logits.argmax(1) == cond).double()
        per_class = [float(correct[cond == c].mean()) for c in range(self.num_classes)]
        retain = [c for c in range(self.num_classes) if c not in forget]
        neighbors = self.neighbors(forget)
        in_retain = torch.isin(cond, torch.tensor(retain))
        real_retain = torch.isin(self.real_labels, torch.tensor(retain))
        with torch.no_grad():
            fid = frechet_distance(self._features(images[in_retain]), self.real_features[real_retain])
        result = {
            "ua": 1 - sum(per_class[f] for f in forget) / len(forget),
            "retain_acc": sum(per_class[c] for c in retain) / len(retain),
            "neighbor_acc": sum(per_class[c] for c in neighbors) / len(neighbors) if neighbors else None,
            "neighbors": neighbors,
            "fid": fid,
            "per_class_acc": per_class,
        }
        if original is not None:
            result["kl_to_original"] = self.kl_to_original(model, original, retain)
        result["samples"] = images
        return result

    def settings_dict(self) -> dict:
        return asdict(self.settings)
