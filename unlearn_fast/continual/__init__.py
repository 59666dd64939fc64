"""Continual unlearning: a sequence of requests, each applied to the previous request's model.

    unlearn-fast continual --sequence 3,8,5,1,9 --method constrained,lacu,naive --out DIR
    unlearn-fast continual --model text --sequence 3,8,5 --method lacu   # prompts of the text DDPM

Modules: ``settings`` (the dataclasses, and so the CLI flags), ``distance`` (score distances,
detector confusion), ``selection`` (mapping target, replay), ``requests`` (a request as a
trainer run), ``strategies`` (one object per continual method), ``runner`` (the sequence and
the original's reference), ``report`` (acceptance, table, plot). The methods and their
formulas: docs/continual.md; measured results: bench/results/continual/.
"""

from .distance import LabelDistance, ScoreDistance, TargetConfusion
from .report import PLOT_METRICS, acceptance, load_report, markdown_table, plot, write_report
from .requests import NAIVE_RU, finished_request, ru_request, scores, telemetry, train_request
from .runner import run_continual, run_sequence
from .selection import select_replay, select_target
from .settings import CONTINUAL_MODELS, ConstrainedSettings, ContinualSettings, LacuSettings
from .strategies import DEFAULT_METHOD, STRATEGIES, SequenceContext, Strategy

#: the continual methods, in report order
CONTINUAL_METHODS = tuple(STRATEGIES)

__all__ = [
    "CONTINUAL_METHODS", "CONTINUAL_MODELS", "DEFAULT_METHOD", "NAIVE_RU", "PLOT_METRICS", "STRATEGIES",
    "ConstrainedSettings", "ContinualSettings", "LabelDistance", "LacuSettings", "ScoreDistance", "SequenceContext",
    "Strategy", "TargetConfusion", "acceptance", "finished_request", "load_report", "markdown_table", "plot",
    "ru_request", "run_continual", "run_sequence", "scores", "select_replay", "select_target", "telemetry",
    "train_request", "write_report",
]
