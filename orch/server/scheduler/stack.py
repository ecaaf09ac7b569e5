"""The placement stack: pick one node for one allocation of a task group.

As Nomad's stack: a randomly ordered ring of feasible nodes (feasibility
computed once per class per evaluation), walked from where the previous
placement stopped; nodes without room are skipped with a named reason; the
first ``limit`` nodes that fit are ranked and the best wins. Placements made
earlier in the same evaluation are held in a local overlay, so the shared
Cluster is only read. A placement costs O(limit) node visits while the
cluster has room, whatever its size; a node found without room for a group
is dropped from that group's ring, so one evaluation visits a full node at
most once per group however many placements it makes. When one placement
meets many full nodes (a crowded cluster) the ring is rebuilt without the
classes where no node has room (``Cluster.class_room``), so a crowded or
failing placement costs O(classes) plus the nodes of classes that might fit,
not O(nodes). A placement fails only after every feasible node was seen, or
ruled out with its class, without room: the stack never gives up early on a
cluster that could still take the allocation.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from itertools import accumulate, islice

from orch.server.scheduler import ports as host_ports
from orch.server.scheduler.cluster import Cluster, Room
from orch.server.scheduler.feasible import feasible_rooms
from orch.server.scheduler.rank import (
    BINPACK_MAX,
    RESCHEDULE_PENALTY,
    anti_affinity_penalty,
)
from orch.structs import Allocation, Job, JobType, Resources, TaskGroup

CPU_EXHAUSTED = "cpu exhausted"
MEMORY_EXHAUSTED = "memory exhausted"
# As Nomad's limit iterator: up to this many penalised nodes are set aside
# (used only if nothing better turns up) so one job spreads across nodes.
MAX_SKIP = 3
# Nodes without room met by one placement before the stack stops walking
# node by node and rules out whole classes instead (a crowded cluster).
PRUNE_AFTER = 64


class Ring:
    """Nodes in a random order, produced lazily: O(1) per visit, no copy.

    The nodes (the cluster's ``Room`` records for the stack; any hashable
    items) are read in place from one or more sequences (the cluster's shared
    per-class tuples) in the order of a random affine permutation (random
    start, random step coprime with the size): every node once per lap, an
    order unrelated to node state and different for every evaluation, which
    is all placement asks of the shuffle, at O(nodes visited) instead of the
    O(nodes) of shuffling a copy (a sparse Fisher-Yates measured twice as
    slow per visit at 50,000 nodes). The first lap fixes the order; later
    laps replay it. A dropped node (it cannot take the group any more in this
    evaluation) is skipped by the rest of the lap and forgotten by the next.
    """

    def __init__(self, parts: Sequence[Sequence], rng):
        """A ring over the concatenation of ``parts``, without concatenating."""
        self._parts = [part for part in parts if part]
        self._live = sum(map(len, self._parts))
        self._dropped: set = set()  # dropped during the current lap
        # The walk is a generator: its state lives in fast locals, and a
        # select() that stops early resumes it where it stopped.
        self.walk = self._walk(rng.random)

    def __len__(self) -> int:
        """Nodes not dropped."""
        return self._live

    def drop(self, node) -> None:
        """Never return this (already visited) node again."""
        if node not in self._dropped:
            self._dropped.add(node)
            self._live -= 1

    def members(self) -> Iterator:
        """Every node of the ring, dropped or not (for failure accounting)."""
        for part in self._parts:
            yield from part

    def _walk(self, random) -> Iterator:
        parts, dropped = self._parts, self._dropped
        ends = list(accumulate(map(len, parts)))
        size = ends[-1] if ends else 0
        single = parts[0] if len(parts) == 1 else None
        step = 1
        if size > 2:
            step = 1 + int(random() * (size - 1))
            while math.gcd(step, size) != 1:
                step = 1 + int(random() * (size - 1))
        index = int(random() * size) if size else 0
        order: list = []
        for _ in range(size):
            index += step
            if index >= size:
                index -= size
            if single is not None:
                node = single[index]
            else:
                k = bisect_right(ends, index)
                node = parts[k][index - ends[k - 1] if k else index]
            order.append(node)
            yield node
        while True:
            if dropped:
                order = [node for node in order if node not in dropped]
                dropped.clear()
            if not order:
                return
            for node in order:
                if node not in dropped:
                    yield node


def placement_limit(job: Job, candidates: int) -> int:
    """How many fitting nodes to rank: 2 for batch, log2(n) for service."""
    if job.type == JobType.BATCH or candidates < 2:
        return 2
    return max(2, math.ceil(math.log2(candidates)))


class _Placing:
    """One group's (and demand's) placement state within an evaluation."""

    __slots__ = ("ring", "classes", "filtered", "full", "limit", "prunable")

    def __init__(self, classes, filtered: Counter, limit: int, rng):
        self.classes = classes  # [(class, node records)] the ring walks
        self.ring = Ring([rooms for _, rooms in classes], rng)
        self.filtered = filtered  # infeasible: reason -> nodes
        self.full: Counter = Counter()  # classes pruned as full: reason -> nodes
        self.limit = limit
        self.prunable = True


class Stack:
    """One evaluation's placement state: rings per group and the overlay.

    Nodes are handled as the cluster's ``Room`` records (capacity and usage
    read in place); ids appear only in what select() returns.
    """

    def __init__(self, cluster: Cluster, job: Job, *, rng, releasing: Iterable[Allocation] = ()):
        self._cluster = cluster
        self._job = job
        self._rng = rng
        self._job_nodes = cluster.job_nodes(job.job_id)
        # node -> [cpu, memory, allocations of the job] placed by this evaluation
        self._local: dict[Room, list[int]] = {}
        self._placing: dict[tuple[str, Resources], _Placing] = {}
        self._last: tuple = (None, None, None)  # (group, demand, _Placing)
        self._releasing: set[Room] = set()  # nodes where this plan frees room
        releasing = list(releasing)
        # Host ports: those this plan frees and those its placements took, per node.
        self._ports = host_ports.PlanPorts(a for a in releasing if a.holds_resources())
        self.ports: list[dict] = []  # the host ports of the last successful select()
        # Stops in the same plan free their room for its placements, as in Nomad.
        for alloc in releasing:
            room = cluster.room(alloc.node_id)
            if alloc.holds_resources() and room is not None:
                self._hold(room, alloc.resources, -1)
                self._releasing.add(room)

    def _hold(self, room: Room, res: Resources, count: int) -> None:
        mine = self._local.get(room)
        if mine is None:
            mine = self._local[room] = [0, 0, 0]
        mine[0] += count * res.cpu
        mine[1] += count * res.memory
        mine[2] += count

    def _state(self, group: TaskGroup, demand: Resources) -> _Placing:
        # One ring per group and demand: a node that cannot take this demand
        # now never can later in the evaluation (placements only add usage),
        # so the ring drops it.
        last_group, last_demand, placing = self._last
        if group is last_group and demand is last_demand:
            return placing  # the usual case: the same group, placement after placement
        key = (group.name, demand)
        placing = self._placing.get(key)
        if placing is None:
            classes, filtered = feasible_rooms(self._cluster, self._job, group)
            candidates = sum(len(rooms) for _, rooms in classes)
            placing = self._placing[key] = _Placing(
                classes, filtered, placement_limit(self._job, candidates), self._rng
            )
        self._last = (group, demand, placing)
        return placing

    def select(
        self, group: TaskGroup, demand: Resources, previous_node: str | None = None
    ) -> tuple[str | None, dict]:
        """(node id, {}) for the best node, or (None, {reason: node count})."""
        placing = self._state(group, demand)
        kept: list[tuple[float, Room]] = []
        skipped: list[tuple[float, Room]] = []
        crowded = self._walk(
            placing,
            group,
            demand,
            previous_node,
            kept,
            skipped,
            PRUNE_AFTER if placing.prunable else None,
        )
        if crowded:
            # Most nodes met had no room: set aside the classes where no node
            # can take the demand, then walk what is left.
            self._prune(placing, demand)
            self._walk(
                placing,
                group,
                demand,
                previous_node,
                kept,
                skipped,
                None,
                seen={room for _, room in kept + skipped},
            )
        pool = kept if len(kept) >= placing.limit else kept + skipped
        if not pool:
            reasons = placing.filtered + placing.full + self._exhausted(placing, group, demand)
            return None, dict(reasons)
        best_score, best = pool[0]
        for score, room in pool:
            if score > best_score:  # ties: the first seen wins, as max() does
                best_score, best = score, room
        self._hold(best, demand, 1)
        self.ports = self._ports.take(group, best, self._rng) if group.ports else []
        return best.node_id, {}

    def _walk(
        self,
        placing: _Placing,
        group: TaskGroup,
        demand: Resources,
        previous_node: str | None,
        kept: list[tuple[float, Room]],
        skipped: list[tuple[float, Room]],
        prune_after: int | None,
        seen: AbstractSet[Room] = frozenset(),
    ) -> bool:
        """Rank nodes until ``limit`` are kept or a lap is done.

        True if it stopped early instead, after ``prune_after`` nodes without room.
        """
        ring, limit = placing.ring, placing.limit
        collisions_of, local_of = self._job_nodes.get, self._local.get
        need_cpu, need_memory = demand.cpu, demand.memory
        needs_ports = bool(group.ports)
        misses = 0
        # One lap at most: every node not dropped, once.
        for room in islice(ring.walk, len(ring)):
            if not room.healthy or room in seen:  # down since the evaluation began
                continue
            total_cpu, total_memory = room.cpu, room.memory
            free_cpu = total_cpu - room.cpu_used - need_cpu
            free_memory = total_memory - room.memory_used - need_memory
            collisions = collisions_of(room, 0)
            mine = local_of(room)
            if mine is not None:
                free_cpu -= mine[0]
                free_memory -= mine[1]
                collisions += mine[2]
            if (
                free_cpu < 0
                or free_memory < 0
                or (needs_ports and self._ports.conflict(group, room) is not None)
            ):
                ring.drop(room)
                misses += 1
                if misses == prune_after:
                    return True
                continue
            # Nomad's ScoreFitBinPack on the free shares after the placement:
            # 10**share is 10 for an idle dimension and 1 for a full one, so
            # the sum rewards filling the emptier dimension most; 0..1.
            share_cpu = free_cpu / total_cpu if total_cpu > 0 else 0.0
            share_memory = free_memory / total_memory if total_memory > 0 else 0.0
            score = 20.0 - (
                (10.0**share_cpu if share_cpu < 1.0 else 10.0)
                + (10.0**share_memory if share_memory < 1.0 else 10.0)
            )
            score = (
                0.0 if score <= 0.0 else score if score < BINPACK_MAX else BINPACK_MAX
            ) / BINPACK_MAX
            if collisions > 0:
                score -= anti_affinity_penalty(collisions, group.count)
            if previous_node is not None and room.node_id == previous_node:
                score -= RESCHEDULE_PENALTY
            if score < 0 and len(skipped) < MAX_SKIP:
                skipped.append((score, room))
            else:
                kept.append((score, room))
                if len(kept) >= limit:
                    break
        return False

    def _prune(self, placing: _Placing, demand: Resources) -> None:
        """Walk only classes where some node may take the demand (once per ring).

        A class whose most free cpu or memory (cluster.class_room) is below
        the demand cannot take it anywhere, and this evaluation only adds
        usage, except where its own stops free room: those classes stay.
        Nodes of a pruned class count under the resource that rules it out.
        """
        placing.prunable = False
        releasing = {room.node_class for room in self._releasing}
        kept = []
        for node_class, rooms in placing.classes:
            if node_class in releasing:
                kept.append((node_class, rooms))
                continue
            most_cpu, most_memory, healthy = self._cluster.class_room(node_class)
            # rooms may be a per-node-filtered part of the class: count no more.
            if most_cpu < demand.cpu:
                placing.full[CPU_EXHAUSTED] += min(healthy, len(rooms))
            elif most_memory < demand.memory:
                placing.full[MEMORY_EXHAUSTED] += min(healthy, len(rooms))
            else:
                kept.append((node_class, rooms))
        if len(kept) < len(placing.classes):
            # A fresh ring: it meets the nodes already dropped once more, at
            # most one lap's worth, which the classes ruled out repay.
            placing.classes = kept
            placing.ring = Ring([rooms for _, rooms in kept], self._rng)

    def _exhausted(self, placing: _Placing, group: TaskGroup, demand: Resources) -> Counter:
        """Why each healthy node of the ring has no room (after a failed select)."""
        reasons: Counter = Counter()
        for room in placing.ring.members():
            if not room.healthy:
                continue
            mine = self._local.get(room, _UNUSED_LOCAL)
            if room.cpu - room.cpu_used - mine[0] < demand.cpu:
                reasons[CPU_EXHAUSTED] += 1
            elif room.memory - room.memory_used - mine[1] < demand.memory:
                reasons[MEMORY_EXHAUSTED] += 1
            elif group.ports:
                reason = self._ports.conflict(group, room)
                if reason is not None:
                    reasons[reason] += 1
        return reasons


_UNUSED_LOCAL = (0, 0, 0)
