"""The placement stack: pick one node for one allocation of a task group.

As Nomad's stack: a randomly ordered ring of feasible nodes (feasibility
computed once per class per evaluation), walked from where the previous
placement stopped; nodes without room are skipped with a named reason; the
first ``limit`` nodes that fit are ranked and the best wins. Placements made
earlier in the same evaluation are held in a local overlay, so the shared
Cluster is only read. A placement costs O(limit) node visits while the
cluster has room, whatever its size.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable

from orch.server.scheduler.cluster import Cluster
from orch.server.scheduler.feasible import feasible_nodes
from orch.server.scheduler.rank import score_node
from orch.structs import Allocation, Job, JobType, Node, Resources, TaskGroup

CPU_EXHAUSTED = "cpu exhausted"
MEMORY_EXHAUSTED = "memory exhausted"
# As Nomad's limit iterator: up to this many penalised nodes are set aside
# (used only if nothing better turns up) so one job spreads across nodes.
MAX_SKIP = 3


class Ring:
    """Node ids in a random order, shuffled lazily: one Fisher-Yates step per visit."""

    def __init__(self, node_ids: list[str], rng):
        self._ids = node_ids
        self._rng = rng
        self._fixed = 0
        self._pos = 0

    def __len__(self) -> int:
        return len(self._ids)

    def next(self) -> str:
        i, ids = self._pos, self._ids
        # A full shuffle of 50,000 ids per evaluation would cost more than its
        # placements; positions are visited in order, so each is fixed when
        # first reached.
        if i == self._fixed:
            j = self._rng.randrange(i, len(ids))
            ids[i], ids[j] = ids[j], ids[i]
            self._fixed = i + 1
        self._pos = (i + 1) % len(ids)
        return ids[i]


def placement_limit(job: Job, candidates: int) -> int:
    """How many fitting nodes to rank: 2 for batch, log2(n) for service."""
    if job.type == JobType.BATCH or candidates < 2:
        return 2
    return max(2, math.ceil(math.log2(candidates)))


class Stack:
    """One evaluation's placement state: rings per group and the overlay."""

    def __init__(self, cluster: Cluster, job: Job, *, rng,
                 releasing: Iterable[Allocation] = ()):
        self._cluster = cluster
        self._job = job
        self._rng = rng
        self._used: dict[str, tuple[int, int]] = {}   # node -> (cpu, memory) this eval
        self._counts: Counter = Counter()             # node -> allocs of job this eval
        self._rings: dict[str, tuple[Ring, Counter]] = {}
        # Stops in the same plan free their room for its placements, as in Nomad.
        for alloc in releasing:
            if alloc.holds_resources():
                self._hold(alloc.node_id, alloc.resources, -1)

    def _hold(self, node_id: str, res: Resources, count: int) -> None:
        cpu, memory = self._used.get(node_id, (0, 0))
        self._used[node_id] = (cpu + count * res.cpu, memory + count * res.memory)
        self._counts[node_id] += count

    def _ring(self, group: TaskGroup) -> tuple[Ring, Counter]:
        if group.name not in self._rings:
            candidates, filtered = feasible_nodes(self._cluster, self._job, group)
            self._rings[group.name] = (Ring(candidates, self._rng), filtered)
        return self._rings[group.name]

    def select(self, group: TaskGroup, demand: Resources,
               previous_node: str | None = None) -> tuple[str | None, dict]:
        """(node id, {}) for the best node, or (None, {reason: node count})."""
        ring, filtered = self._ring(group)
        limit = placement_limit(self._job, len(ring))
        kept, skipped = [], []
        exhausted: Counter = Counter()
        for _ in range(len(ring)):
            node_id = ring.next()
            node = self._cluster.node(node_id)
            if node is None or not node.healthy:
                continue
            reason, score = self._rank(node, demand, group, previous_node)
            if reason is not None:
                exhausted[reason] += 1
            elif score < 0 and len(skipped) < MAX_SKIP:
                skipped.append((score, node_id))
            else:
                kept.append((score, node_id))
                if len(kept) >= limit:
                    break
        pool = kept if len(kept) >= limit else kept + skipped
        if not pool:
            return None, dict(filtered + exhausted)
        _, best = max(pool, key=lambda entry: entry[0])
        self._hold(best, demand, 1)
        return best, {}

    def _rank(self, node: Node, demand: Resources, group: TaskGroup,
              previous_node: str | None) -> tuple[str | None, float]:
        """(reason, 0) if the node has no room, else (None, its score)."""
        node_id = node.node_id
        free = self._cluster.free(node_id)
        cpu, memory = self._used.get(node_id, (0, 0))
        free_after = Resources(free.cpu - cpu - demand.cpu,
                               free.memory - memory - demand.memory)
        if free_after.cpu < 0:
            return CPU_EXHAUSTED, 0.0
        if free_after.memory < 0:
            return MEMORY_EXHAUSTED, 0.0
        collisions = (self._cluster.job_count(self._job.job_id, node_id)
                      + self._counts[node_id])
        return None, score_node(node.resources, free_after, collisions=collisions,
                                count=group.count, previous=node_id == previous_node)
