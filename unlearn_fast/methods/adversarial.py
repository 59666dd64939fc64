"""Adversarial unlearning (AdvUnlearn's idea in this engine's terms): erase the concept under the conditioning an attack finds too.

``Adversarial(method, ...)`` wraps any method whose forget rows show the student the
concept's own condition (RU, ESD, LU, FU, ablation, ...). Every ``every`` training steps an
inner **inversion attack** runs on the current student: ``steps`` Adam steps on a free
conditioning (the class-embedding vector, or a text model's prompt token embeddings;
``attacks.AttackedModel``) that lower the student's denoising loss on the step's forget
images, i.e. the conditioning under which the student still draws them best. The embedding
is warm-started from the last round (a fresh Adam each round), so it follows the model.
Then a share ``share`` of the forget rows of every step shows the student that
conditioning instead of the concept's, with the wrapped method's heads unchanged: the
erasure targets (and, for RU, the constraint that drives the dual) are applied under the
attack's conditioning too. Retain rows are untouched.

Cost: ``steps / every`` extra student forward+backward passes on the forget rows per step.
The inner attack reads no classifier (so nothing is tuned against the evaluator or the
detector the benchmarks use). One forget concept per run (one free conditioning).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import FORGET, Batch, Method, Recipe


def check_adversarial(every: int, steps: int, lr: float, share: float) -> None:
    """One ``ValueError`` naming the ``adversarial_*`` setting that is out of range (the trainer's
    config and the class both check with it)."""
    for name, value in (("adversarial_every", every), ("adversarial_steps", steps)):
        if value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value}")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"adversarial_share: expected a float in (0, 1], got {share}")
    if not lr > 0:
        raise ValueError(f"adversarial_lr: expected a float > 0, got {lr}")


class Adversarial(Method):
    """Args:
        method: the wrapped method (its recipe, duals, state and metrics are kept).
        concept: the condition id of the forget concept.
        every: training steps between inner attack rounds.
        steps: Adam steps of each round.
        lr: Adam's step on the free conditioning.
        share: the share of forget rows that see the attack's conditioning.
    """

    def __init__(self, method: Method, concept: int, *, every: int = 5, steps: int = 10, lr: float = 0.1,
                 share: float = 0.25):
        check_adversarial(every, steps, lr, share)
        self.inner = method
        self.concept = concept
        self.every, self.steps, self.lr, self.share = every, steps, lr, share
        self.name = method.name
        self.default_source = method.default_source
        self.default_train_params = method.default_train_params
        self.attacked = None  # the AttackedModel over the student, made at the first step
        self.calls = 0  # training steps seen (rounds run at calls % every == 0)
        self.last_loss = None
        self._pending = None  # an embedding from a checkpoint, applied once the model exists

    def __getattr__(self, name):  # everything else is the wrapped method's (forget, anchor, refine, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def duals(self):
        return self.inner.duals

    # --- the inner attack ------------------------------------------------------------

    def prepare_step(self, objective, batch: Batch, generator) -> object:
        """The model the student pass uses: the student with the attack's conditioning
        (made at the first call); runs an attack round every ``every`` training steps. The
        inner method's own preparation (RU's nats probe) runs first, on the plain student."""
        self.inner.prepare_step(objective, batch, generator)
        if self.attacked is None:
            from ..attacks.conditioning import AttackedModel

            self.attacked = AttackedModel(objective.model, self.concept)
            if self._pending is not None:
                with torch.no_grad():
                    self.attacked.embedding.copy_(self._pending.to(self.attacked.embedding))
                self._pending = None
        if torch.is_grad_enabled():
            if self.calls % self.every == 0:
                self._attack_round(objective, batch, generator)
            self.calls += 1
        return self.attacked

    def _attack_round(self, objective, batch: Batch, generator) -> None:
        attacked = self.attacked
        x0 = batch.x0[:batch.n_forget] if batch.n_forget is not None else batch.x0[batch.role == FORGET]
        if len(x0) == 0:
            return
        module = attacked.module
        was_training = module.training
        module.eval()
        opt = torch.optim.Adam([attacked.embedding], lr=self.lr)
        cond = torch.full((len(x0),), attacked.attack_id, dtype=torch.long, device=x0.device)
        for _ in range(self.steps):
            t = objective.noising.draw(len(x0), x0.device, generator)
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
            x_t = objective.noising.add_noise(x0, noise, t)
            loss = F.mse_loss(attacked.predict(x_t, t, cond).float(), objective.noising.target(x0, noise, t).float())
            (grad,) = torch.autograd.grad(loss, [attacked.embedding])  # the student's weights get no gradient
            attacked.embedding.grad = grad
            opt.step()
            attacked.embedding.grad = None
        self.last_loss = loss.detach()
        module.train(was_training)

    # --- the heads ---------------------------------------------------------------------

    def recipe(self, batch: Batch, w: torch.Tensor) -> Recipe:
        r = self.inner.recipe(batch, w)
        if self.attacked is None:  # used outside a training step (no attack has run)
            return r
        forget = batch.role == FORGET
        rank = torch.cumsum(forget.to(torch.int64), 0)  # 1-based rank of each forget row
        adversarial = forget & (rank <= self.share * forget.sum())
        student = torch.where(adversarial, torch.full_like(r.student_cond, self.attacked.attack_id), r.student_cond)
        return Recipe(student, r.teacher_conds, r.coeffs, r.weights, r.teacher_rows)

    def update(self, batch: Batch, recipe: Recipe, dist: torch.Tensor, w: torch.Tensor, t=None) -> None:
        self.inner.update(batch, recipe, dist, w, t)

    def metrics(self) -> dict[str, float]:
        out = dict(self.inner.metrics())
        if self.last_loss is not None:
            out["adv_inversion_loss"] = float(self.last_loss)
        return out

    # --- checkpoints -------------------------------------------------------------------

    def state_dict(self) -> dict:
        emb = self.attacked.embedding.detach().cpu() if self.attacked is not None else self._pending
        state = {"inner": self.inner.state_dict(), "calls": self.calls}
        if emb is not None:
            state["embedding"] = emb.clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        if "inner" not in state:
            raise ValueError("method.pt: this checkpoint was not written by an adversarial run "
                             "(resume it without adversarial, or start a new run)")
        self.inner.load_state_dict(state["inner"])
        self.calls = int(state["calls"])
        emb = state.get("embedding")
        if emb is not None and self.attacked is not None:
            with torch.no_grad():
                self.attacked.embedding.copy_(emb.to(self.attacked.embedding))
        else:
            self._pending = emb

    def is_finite(self) -> bool:
        ok = self.inner.is_finite()
        if self.attacked is not None:
            ok = ok and bool(torch.isfinite(self.attacked.embedding).all())
        return ok
