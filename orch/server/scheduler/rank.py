"""Ranking: how good a feasible node with room is for one placement.

Bin-packing as Nomad's ``ScoreFitBinPack`` (fuller nodes score higher, so
work packs onto few nodes and big holes stay free), minus penalties that
spread one job's allocations and move a replacement away from the node its
predecessor failed on.
"""
from __future__ import annotations

from orch.structs import Resources

# Nomad's binpack score ranges 0 (idle node) .. 18 (perfect fit).
BINPACK_MAX = 18.0
RESCHEDULE_PENALTY = 1.0


def _free_fraction(free: int, total: int) -> float:
    if total <= 0:
        return 0.0
    return min(1.0, max(0.0, free / total))


def binpack_score(total: Resources, free_after: Resources) -> float:
    """0..1, higher when the node is fuller after the placement."""
    return fit_score(total.cpu, total.memory, free_after.cpu, free_after.memory)


def fit_score(total_cpu: int, total_memory: int, free_cpu: int,
              free_memory: int) -> float:
    """binpack_score on plain numbers (stack.py inlines it in its inner loop)."""
    free_cpu_share = _free_fraction(free_cpu, total_cpu)
    free_memory_share = _free_fraction(free_memory, total_memory)
    # 10**free is 10 for an idle dimension and 1 for a full one, so the
    # sum rewards filling the emptier dimension most.
    score = 20.0 - (10.0 ** free_cpu_share + 10.0 ** free_memory_share)
    return min(BINPACK_MAX, max(0.0, score)) / BINPACK_MAX


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
