"""A model with one extra, learnable condition: the conditioning an embedding attack optimises.

``AttackedModel(model, concept_id)`` is a :class:`ConditionedModel` whose conditions are the
model's plus ``"<attack>"`` (id ``attack_id``); rows with that id read ``embedding``, a
parameter initialised from the concept's own conditioning, every other row reads the model
as before (so guided sampling, the null branch included, works unchanged):

- a class-conditional UNet: ``embedding`` is the class-embedding vector (it replaces the
  output of ``module.class_embedding`` on the attacked rows);
- a text-conditioned UNet: ``embedding`` is the prompt's token embeddings ``[L, H]`` (they
  replace the text encoder's token-embedding output; the encoder then runs as usual), as
  UnlearnDiffAtk and textual inversion optimise them.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..models import ConditionedModel

ATTACK_CONDITION = "<attack>"


class AttackedModel(ConditionedModel):
    def __init__(self, model: ConditionedModel, concept_id: int, init_id: int | None = None):
        self.base = model
        self.module = model.module
        self.null_id = model.null_id
        self.default_guidance = model.default_guidance
        self.family = model.family
        self.components = getattr(model, "components", {})
        self.attack_id = len(model.conditions)
        self.concept_id = concept_id
        self.init_id = concept_id if init_id is None else init_id
        self._text = hasattr(model, "text_encoder") and hasattr(model, "tokenizer")
        if self._text:
            if model.text_encoder is None:
                raise ValueError("model: an embedding attack on a text model needs its text encoder (this adapter "
                                 "was built from precomputed embeddings)")
            self._tokens = model._tokens(model.tokenizer, [model.conditions[self.init_id]])
            init = self._token_embedding()(self._tokens.to(self._device()))[0]
        elif getattr(model.module, "class_embedding", None) is not None:
            init = model.module.class_embedding.weight[self.init_id]
        else:
            raise ValueError(f"model: the embedding attack reads a class-conditional UNet2DModel (class_embedding) "
                             f"or a text-conditioned UNet with its CLIP text encoder; got a {model.family!r} model")
        self.embedding = nn.Parameter(init.detach().clone().float())

    @property
    def conditions(self) -> list[str]:
        return list(self.base.conditions) + [ATTACK_CONDITION]

    def _device(self):
        return next(self.module.parameters()).device

    def _token_embedding(self) -> nn.Module:
        enc = self.base.text_encoder
        return enc.get_input_embeddings()

    def reset(self) -> None:
        """Back to the starting conditioning (the concept's own, or ``init_id``'s)."""
        with torch.no_grad():
            if self._text:
                self.embedding.copy_(self._token_embedding()(self._tokens.to(self._device()))[0])
            else:
                self.embedding.copy_(self.base.module.class_embedding.weight[self.init_id])

    @contextlib.contextmanager
    def _replace_output(self, module: nn.Module, rows: torch.Tensor):
        """``module``'s output on ``rows`` (a bool mask over its batch) is the embedding."""
        def hook(_, __, out):
            e = self.embedding.to(out.dtype)
            return torch.where(rows.view(-1, *([1] * (out.dim() - 1))), e.expand_as(out), out)

        handle = module.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def predict(self, x_t, t, cond_ids):
        rows = cond_ids == self.attack_id
        if self._text:
            return self._predict_text(x_t, t, cond_ids, rows)
        base_ids = torch.where(rows, torch.full_like(cond_ids, self.concept_id), cond_ids)
        with self._replace_output(self.module.class_embedding, rows):
            return self.module(x_t, t, class_labels=base_ids).sample

    def _predict_text(self, x_t, t, cond_ids, rows):
        base_ids = torch.where(rows, torch.full_like(cond_ids, self.null_id), cond_ids)
        states = self.base.cached(base_ids, x_t.dtype)["encoder_hidden_states"]
        one = torch.ones(1, dtype=torch.bool, device=x_t.device)
        with self._replace_output(self._token_embedding(), one):
            attacked = self.base.text_encoder(self._tokens.to(self._device()))[0].to(x_t.dtype)
        states = torch.where(rows.view(-1, 1, 1), attacked.expand_as(states), states)
        return self.module(x_t, t, encoder_hidden_states=states).sample
