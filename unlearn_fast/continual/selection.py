"""Locality-aware choices of a continual request: the mapping target and the replayed conditions.

Both read score distances (``distance.ScoreDistance`` or ``LabelDistance``) under the
previous request's model; the target can also be checked by a concept detector
(``distance.TargetConfusion``).
"""

from __future__ import annotations

from typing import Sequence

from .distance import LabelDistance, ScoreDistance, TargetConfusion


def select_target(distance: ScoreDistance | LabelDistance, forget: int, candidates: Sequence[int], *, erased: Sequence[int] = (),
                  current: Sequence[int] = (), confusion: TargetConfusion | None = None, max_confusion: float = 0.025,
                  checked: int = 3) -> tuple[int, dict[int, float]]:
    """Locality-aware target selection: the admissible candidate nearest ``forget``
    (admissible: not ``forget``, not erased by an earlier request, not erased by this one).

    With ``confusion``: the nearest of the ``checked`` nearest admissible candidates whose
    confusion rate with ``forget`` is at most ``max_confusion`` (the nearest class is the
    one most easily mistaken for the forgotten one, and a mapping inherits that); if none
    is, the least confused of them (the nearer on a tie). Returns ``(target, {candidate:
    distance})`` over the admissible candidates."""
    excluded = {int(forget)} | {int(c) for c in erased} | {int(c) for c in current}
    admissible = [int(c) for c in candidates if int(c) not in excluded]
    if not admissible:
        raise ValueError(f"candidates: no admissible mapping target for {forget} (all of {list(candidates)} are "
                         f"erased or being erased)")
    d = distance.distances(forget, admissible)
    by_distance = [admissible[i] for i in d.argsort(stable=True).tolist()]
    target = by_distance[0]
    if confusion is not None:
        if checked < 1:
            raise ValueError(f"checked: expected at least one candidate to check, got {checked}")
        rates = {}
        for c in by_distance[:checked]:
            rates[c] = confusion.rate(forget, c)
            if rates[c] <= max_confusion:
                break
        target = min(rates, key=lambda c: rates[c])  # dicts keep order: the nearer wins a tie
    return target, {c: float(v) for c, v in zip(admissible, d)}


def select_replay(distance: ScoreDistance | LabelDistance, forget: Sequence[int], retained: Sequence[int], k: int) -> list[int]:
    """Locality-aware replay: for each forgotten condition, the ``k`` retained conditions
    nearest it (in order of distance; the union over the forgotten conditions)."""
    retained = [int(c) for c in retained if int(c) not in {int(f) for f in forget}]
    out: list[int] = []
    if k <= 0 or not retained:
        return out
    for f in forget:
        d = distance.distances(int(f), retained)
        for i in d.argsort()[:k].tolist():
            if retained[i] not in out:
                out.append(retained[i])
    return out
