"""Cluster: the in-memory capacity index the scheduler reads.

The state store is its only writer (under its own lock); scheduler workers
read it concurrently. Every write is O(1): nodes are kept grouped by computed
class so that feasibility is checked once per class, and reservations are
kept per allocation so that a double release is a no-op.

What the scheduler reads per evaluation and per node visit is laid out for
it: each class's healthy members as a shared tuple, rebuilt only after that
class changed (an evaluation never copies the node list: O(classes), not
O(nodes)); one ``room`` entry per healthy node holding capacity and usage
together (one lookup per visit); allocation counts grouped by job; and, for
a crowded cluster, each class's most free cpu and memory (``class_room``),
cached until a node of the class changes.
"""
from __future__ import annotations

import threading
from typing import Iterator

from orch.structs import Allocation, Node, Resources, replace


class Cluster:
    """Healthy nodes by class, and the resources reserved on every node."""

    def __init__(self):
        self._lock = threading.Lock()
        self._nodes: dict[str, Node] = {}
        self._class_of: dict[str, str] = {}
        # Healthy node ids by class; dicts as insertion-ordered sets.
        self._by_class: dict[str, dict[str, None]] = {}
        self._used: dict[str, tuple[int, int]] = {}        # node -> (cpu, memory)
        # Healthy node -> [cpu, memory, cpu used, memory used], updated in place.
        self._room: dict[str, list[int]] = {}
        self._reserved: dict[str, tuple[str, Resources, str]] = {}  # alloc -> (node, res, job)
        self._job_counts: dict[str, dict[str, int]] = {}   # job -> node -> allocs
        self._version = 0
        # Shared read side of _by_class: tuples per class, and the classes
        # changed since they were last built.
        self._members: dict[str, tuple[str, ...]] = {}
        self._stale: set[str] = set()
        # Class feasibility answers, keyed by what the group asks (feasible.py);
        # a class is a hash of everything the checks read, so they never expire.
        self.verdicts: dict[tuple, tuple] = {}
        # class -> stamp bumped whenever a node of the class changes capacity,
        # usage or health; class_room() caches its answer under the stamp.
        self._class_stamp: dict[str, int] = {}
        self._class_rooms: dict[str, tuple[int, tuple[int, int, int]]] = {}

    @property
    def version(self) -> int:
        return self._version

    def __len__(self) -> int:
        return len(self._nodes)

    # ---- nodes ------------------------------------------------------------

    def upsert_node(self, node: Node) -> None:
        """Add or replace a node; the version bumps only if placement could change."""
        with self._lock:
            old = self._nodes.get(node.node_id)
            node_class = self._class_for(node, old)
            self._nodes[node.node_id] = node
            changed = (old is None or old.resources != node.resources
                       or old.healthy != node.healthy
                       or self._class_of.get(node.node_id) != node_class)
            if changed:
                self._unlist(node.node_id)
                self._class_of[node.node_id] = node_class
                if node.healthy:
                    self._by_class.setdefault(node_class, {})[node.node_id] = None
                    self._stale.add(node_class)
                self._set_room(node.node_id)
                self._version += 1

    def _class_for(self, node: Node, old: Node | None) -> str:
        # Hashing is the expensive part of an upsert; skip it when nothing it covers changed.
        if (old is not None and old.region == node.region
                and old.attributes == node.attributes and old.meta == node.meta):
            return self._class_of[node.node_id]
        return node.computed_class()

    def remove_node(self, node_id: str) -> None:
        with self._lock:
            if self._nodes.pop(node_id, None) is None:
                return
            self._unlist(node_id)
            del self._class_of[node_id]
            self._room.pop(node_id, None)
            self._version += 1

    def set_healthy(self, node_id: str, healthy: bool) -> None:
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None or node.healthy == healthy:
                return
            self._nodes[node_id] = replace(node, healthy=healthy)
            node_class = self._class_of[node_id]
            if healthy:
                self._by_class.setdefault(node_class, {})[node_id] = None
                self._stale.add(node_class)
            else:
                self._unlist(node_id)
            self._set_room(node_id)
            self._version += 1

    def _set_room(self, node_id: str) -> None:
        """Rebuild a node's room entry from its node and usage (lock held)."""
        self._touch(self._class_of.get(node_id))
        node = self._nodes.get(node_id)
        if node is None or not node.healthy:
            self._room.pop(node_id, None)
            return
        cpu, memory = self._used.get(node_id, (0, 0))
        # A new list: a reader holding the old one keeps a consistent view.
        self._room[node_id] = [node.resources.cpu, node.resources.memory, cpu, memory]

    def _unlist(self, node_id: str) -> None:
        """Drop a node from its class's healthy set (lock held)."""
        node_class = self._class_of.get(node_id)
        members = self._by_class.get(node_class)
        if members is None:
            return
        members.pop(node_id, None)
        self._stale.add(node_class)
        self._touch(node_class)
        if not members:
            del self._by_class[node_class]

    def _touch(self, node_class: str | None) -> None:
        if node_class is not None:
            self._class_stamp[node_class] = self._class_stamp.get(node_class, 0) + 1

    # ---- reservations -------------------------------------------------------

    def reserve(self, alloc: Allocation) -> None:
        """Hold alloc.resources on alloc.node_id; reserving twice is a no-op."""
        with self._lock:
            if alloc.allocation_id in self._reserved:
                return
            res = alloc.resources
            self._reserved[alloc.allocation_id] = (alloc.node_id, res, alloc.job_id)
            self._add(alloc.node_id, alloc.job_id, res.cpu, res.memory, 1)

    def reserve_many(self, allocs) -> None:
        """reserve() for each allocation, under one lock acquisition."""
        with self._lock:
            reserved, used, rooms = self._reserved, self._used, self._room
            job_counts = self._job_counts
            job_id = per_node = None
            for alloc in allocs:
                alloc_id = alloc.allocation_id
                if alloc_id in reserved:
                    continue
                res, node_id = alloc.resources, alloc.node_id
                reserved[alloc_id] = (node_id, res, alloc.job_id)
                cpu, memory = used.get(node_id, (0, 0))
                used[node_id] = (cpu + res.cpu, memory + res.memory)
                room = rooms.get(node_id)
                if room is not None:
                    room[2] += res.cpu
                    room[3] += res.memory
                    self._touch(self._class_of.get(node_id))
                if alloc.job_id != job_id:
                    job_id = alloc.job_id
                    per_node = job_counts.get(job_id)
                    if per_node is None:
                        per_node = job_counts[job_id] = {}
                per_node[node_id] = per_node.get(node_id, 0) + 1
                self._version += 1

    def release(self, alloc: Allocation) -> None:
        """Give back what reserve() took for this allocation id, once."""
        with self._lock:
            held = self._reserved.pop(alloc.allocation_id, None)
            if held is None:
                return
            node_id, res, job_id = held
            self._add(node_id, job_id, -res.cpu, -res.memory, -1)

    def _add(self, node_id: str, job_id: str, cpu: int, memory: int, count: int) -> None:
        used_cpu, used_memory = self._used.get(node_id, (0, 0))
        self._used[node_id] = (used_cpu + cpu, used_memory + memory)
        room = self._room.get(node_id)
        if room is not None:
            room[2] += cpu
            room[3] += memory
            self._touch(self._class_of.get(node_id))
        per_node = self._job_counts.get(job_id)
        if per_node is None:
            per_node = self._job_counts[job_id] = {}
        remaining = per_node.get(node_id, 0) + count
        if remaining > 0:
            per_node[node_id] = remaining
        else:
            per_node.pop(node_id, None)
            if not per_node:
                del self._job_counts[job_id]
        self._version += 1

    # ---- reads (lock-free: single dict lookups) -------------------------------

    def node(self, node_id: str) -> Node | None:
        return self._nodes.get(node_id)

    def free(self, node_id: str) -> Resources:
        """Capacity minus reservations; nothing for an unknown node."""
        node = self._nodes.get(node_id)
        if node is None:
            return Resources()
        used_cpu, used_memory = self._used.get(node_id, (0, 0))
        return Resources(node.resources.cpu - used_cpu,
                         node.resources.memory - used_memory)

    def job_count(self, job_id: str, node_id: str) -> int:
        return self._job_counts.get(job_id, {}).get(node_id, 0)

    def job_nodes(self, job_id: str) -> dict[str, int]:
        """node -> allocations of the job holding resources there; read-only."""
        return self._job_counts.get(job_id) or {}

    def rooms(self):
        """``get`` of the room map: healthy node id -> [cpu, memory, cpu used,
        memory used], None for a node down or gone. Read-only, lock-free (one
        dict lookup); the stack calls it for every node it visits."""
        return self._room.get

    def classes(self) -> dict[str, list[str]]:
        """Healthy node ids by computed class (a fresh copy)."""
        with self._lock:
            return {cls: list(ids) for cls, ids in self._by_class.items()}

    def members(self) -> dict[str, tuple[str, ...]]:
        """Healthy node ids by class, shared and read-only: never mutate it."""
        with self._lock:
            if self._stale:
                members = dict(self._members)
                for node_class in self._stale:
                    ids = self._by_class.get(node_class)
                    if ids:
                        members[node_class] = tuple(ids)
                    else:
                        members.pop(node_class, None)
                self._stale.clear()
                # A new dict, so a reader holding the old one sees a snapshot.
                self._members = members
            return self._members

    def class_room(self, node_class: str) -> tuple[int, int, int]:
        """(most free cpu, most free memory, healthy nodes) over a class.

        The two maxima may come from different nodes: a demand above either
        fits no node of the class. Computed by a scan of the class, then
        cached until a node of the class changes.
        """
        stamp = self._class_stamp.get(node_class, 0)
        known = self._class_rooms.get(node_class)
        if known is not None and known[0] == stamp:
            return known[1]
        room_of = self._room.get
        most_cpu = most_memory = -1
        count = 0
        for node_id in self.members().get(node_class, ()):
            room = room_of(node_id)
            if room is None:
                continue
            count += 1
            if room[0] - room[2] > most_cpu:
                most_cpu = room[0] - room[2]
            if room[1] - room[3] > most_memory:
                most_memory = room[1] - room[3]
        answer = (most_cpu, most_memory, count)
        # Keyed by the stamp read before the scan: a change during the scan
        # bumps it, and the next call scans again.
        self._class_rooms[node_class] = (stamp, answer)
        return answer

    def class_of(self, node_id: str) -> str | None:
        return self._class_of.get(node_id)

    def usage(self, node_id: str) -> tuple[int, int]:
        """(cpu, memory) reserved on the node."""
        return self._used.get(node_id, (0, 0))

    def nodes(self) -> Iterator[Node]:
        """Every known node, healthy or not (a snapshot)."""
        with self._lock:
            snapshot = list(self._nodes.values())
        return iter(snapshot)
