"""DiT: the class-conditional ``DiTTransformer2DModel`` (ImageNet classes, learned variance)."""

from __future__ import annotations

from torch import nn

from .base import ConditionedModel
from .loading import load_component, read_index, training_scheduler


class DiTClassTransformer(ConditionedModel):
    """A ``DiTTransformer2DModel`` over its classes; the null class is ``num_embeds_ada_norm``
    (the label table's extra row, as ``DiTPipeline`` uses it for guidance). With learned
    variance the model outputs ``2C`` channels; ``predict`` returns the epsilon half. A
    condition is named by its id (``"207"``) or, when the pipeline has ``id2label``, by any
    of its labels (``"golden retriever"``). The label table's random dropout (a training
    aid of pretraining) is switched off: the conditions a method asks for are the ones used."""

    family = "dit"
    subfolder = "transformer"
    default_guidance = 4.0

    def __init__(self, transformer: nn.Module, id2label: dict | None = None, components: dict | None = None):
        n = int(transformer.config.num_embeds_ada_norm)
        self.module = transformer
        self.conditions = [str(i) for i in range(n)] + [""]
        self.null_id = n
        self.labels = {}
        for key, value in (id2label or {}).items():
            for label in str(value).split(","):
                self.labels[label.strip()] = int(key)
        for m in transformer.modules():
            if type(m).__name__ == "LabelEmbedding":
                m.dropout_prob = 0.0
        self.components = dict(components or {})

    def condition_id(self, name):
        if isinstance(name, str) and name in self.labels:
            return self.labels[name]
        return super().condition_id(name)

    def predict(self, x_t, t, cond_ids):
        out = self.module(x_t, timestep=t, class_labels=cond_ids).sample
        c = x_t.shape[1]
        return out[:, :c] if out.shape[1] == 2 * c else out


def load_dit(path: str, *, device="cpu", allow_pickle: bool = False, **_):
    """``(adapter, scheduler)`` of a ``DiTPipeline`` folder."""
    index = read_index(path)
    transformer = load_component(path, "transformer", index, allow_pickle=allow_pickle, device=device)
    vae = load_component(path, "vae", index, allow_pickle=allow_pickle, required=False)
    adapter = DiTClassTransformer(transformer.train(), index.get("id2label"), components={"vae": vae})
    return adapter, training_scheduler(path)
