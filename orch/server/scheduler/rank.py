"""Ranking: how good a feasible node with room is for one placement.

Bin-packing as Nomad's ``ScoreFitBinPack`` (fuller nodes score higher, so
work packs onto few nodes and big holes stay free), minus penalties that
spread one job's allocations and move a replacement away from the node its
predecessor failed on.
"""
from __future__ import annotations

from orch.structs import Resources

# Nomad's binpack score ranges 0 (idle node) .. 18 (perfect fit).
_BINPACK_MAX = 18.0
RESCHEDULE_PENALTY = 1.0


def _free_fraction(free: int, total: int) -> float:
    if total <= 0:
        return 0.0
    return min(1.0, max(0.0, free / total))


def binpack_score(total: Resources, free_after: Resources) -> float:
    """0..1, higher when the node is fuller after the placement."""
    free_cpu = _free_fraction(free_after.cpu, total.cpu)
    free_memory = _free_fraction(free_after.memory, total.memory)
    # 10**free is 10 for an idle dimension and 1 for a full one, so the
    # sum rewards filling the emptier dimension most.
    score = 20.0 - (10.0 ** free_cpu + 10.0 ** free_memory)
    return min(_BINPACK_MAX, max(0.0, score)) / _BINPACK_MAX


def anti_affinity_penalty(collisions: int, count: int) -> float:
    """Nomad's job anti-affinity: (collisions + 1) / count once the job is there."""
    if collisions <= 0:
        return 0.0
    return (collisions + 1) / max(1, count)


def score_node(total: Resources, free_after: Resources, *, collisions: int,
               count: int, previous: bool) -> float:
    """Bin-pack score minus the spread and reschedule penalties."""
    score = binpack_score(total, free_after)
    score -= anti_affinity_penalty(collisions, count)
    if previous:
        score -= RESCHEDULE_PENALTY
    return score
