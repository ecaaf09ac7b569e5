"""Ranking: how good a feasible node with room is for one placement.

Bin-packing as Nomad's ``ScoreFitBinPack`` (fuller nodes score higher, so
work packs onto few nodes and big holes stay free), minus penalties that
spread one job's allocations and move a replacement away from the node its
predecessor failed on. The bin-pack score itself is computed in the stack's
inner loop (stack.py), where a call per node visit is a measurable share.
"""

from __future__ import annotations

# Nomad's binpack score ranges 0 (idle node) .. 18 (perfect fit).
BINPACK_MAX = 18.0
RESCHEDULE_PENALTY = 1.0


def anti_affinity_penalty(collisions: int, count: int) -> float:
    """Nomad's job anti-affinity: (collisions + 1) / count once the job is there."""
    if collisions <= 0:
        return 0.0
    return (collisions + 1) / max(1, count)
