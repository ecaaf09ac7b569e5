"""Cluster: the in-memory capacity index the scheduler reads.

The state store is its only writer (under its own lock); scheduler workers
read it concurrently. Every write is O(1): nodes are kept grouped by computed
class so that feasibility is checked once per class, and reservations are
kept per allocation so that a double release is a no-op.

What the scheduler reads per evaluation and per node visit is laid out for
it. Each node has one ``Room`` record (capacity, usage, health, class) that
the cluster updates in place; each class's healthy members are a shared
tuple of those records, rebuilt only after the class changed. So an
evaluation never copies the node list (O(classes), not O(nodes)), and a
visit reads the node's record straight from the tuple: no lookup by node id,
which at 50,000 nodes is a handful of cache misses per visit. Allocation
counts are grouped by job and keyed by record; and, for a crowded cluster,
each class's most free cpu and memory (``class_room``) is cached until a
node of the class changes.
"""

from __future__ import annotations

import threading

from orch.structs import Allocation, Node, Resources, replace


class Room:
    """One node as the scheduler sees it; updated in place, hashed by identity."""

    __slots__ = (
        "node_id",
        "cpu",
        "memory",
        "cpu_used",
        "memory_used",
        "healthy",
        "node_class",
        "ports",
        "port_range",
    )

    def __init__(self, node_id: str):
        self.node_id = node_id
        self.cpu = self.memory = 0  # capacity (0 while unknown)
        self.cpu_used = self.memory_used = 0  # reserved by allocations
        self.healthy = False
        self.node_class: str | None = None
        # Host ports held by allocations: port -> holders (more than one only
        # if stored allocations disagree, e.g. written before ports existed).
        self.ports: dict[int, int] = {}
        self.port_range: tuple[int, int] = (20000, 32000)  # where dynamic ports come from

    def __repr__(self) -> str:
        return (
            f"Room({self.node_id!r}, cpu={self.cpu_used}/{self.cpu}, "
            f"memory={self.memory_used}/{self.memory}, healthy={self.healthy})"
        )


class Cluster:
    """Healthy nodes by class, and the resources reserved on every node."""

    def __init__(self):
        self._lock = threading.Lock()
        self._nodes: dict[str, Node] = {}
        # Every node known or reserved against (a reservation may name a node
        # not registered (yet): it gets a record without capacity).
        self._rooms: dict[str, Room] = {}
        # Healthy records by class; dicts as insertion-ordered sets.
        self._by_class: dict[str, dict[Room, None]] = {}
        # alloc -> (room, res, job, host ports)
        self._reserved: dict[str, tuple[Room, Resources, str, tuple[int, ...]]] = {}
        self._job_counts: dict[str, dict[Room, int]] = {}  # job -> node -> allocs
        # Shared read side of _by_class: tuples per class, and the classes
        # changed since they were last built.
        self._members: dict[str, tuple[Room, ...]] = {}
        self._stale: set[str] = set()
        # Class feasibility answers, keyed by what the group asks (feasible.py);
        # a class is a hash of everything the checks read, so they never expire.
        self.verdicts: dict[tuple, tuple] = {}
        # class -> stamp bumped whenever a node of the class changes capacity,
        # usage or health; class_room() caches its answer under the stamp.
        self._class_stamp: dict[str, int] = {}
        self._class_rooms: dict[str, tuple[int, tuple[int, int, int]]] = {}
        # Healthy nodes whose pushes fail (orch.server.push): left out of the
        # class sets, so that no new placement is routed there meanwhile.
        self._suspect: set[str] = set()
        # Nodes made ineligible (by hand or by a drain): left out the same way.
        self._ineligible: set[str] = set()

    # ---- nodes ------------------------------------------------------------

    def upsert_node(self, node: Node) -> None:
        """Add or replace a node; its record changes only if placement could."""
        with self._lock:
            old = self._nodes.get(node.node_id)
            room = self._room_for(node.node_id)
            node_class = self._class_for(node, old, room)
            self._nodes[node.node_id] = node
            room.port_range = node.port_range
            changed = (
                old is None
                or old.resources != node.resources
                or old.healthy != node.healthy
                or old.eligible != node.eligible
                or room.node_class != node_class
            )
            if changed:
                self._unlist(room)
                room.cpu, room.memory = node.resources.cpu, node.resources.memory
                room.healthy, room.node_class = node.healthy, node_class
                if node.eligible:
                    self._ineligible.discard(node.node_id)
                else:
                    self._ineligible.add(node.node_id)
                if self._listable(room):
                    self._list(room)
                self._touch(node_class)  # capacity may have changed

    @staticmethod
    def _class_for(node: Node, old: Node | None, room: Room) -> str:
        # Hashing is the expensive part of an upsert; skip it when nothing it covers changed.
        if (
            old is not None
            and room.node_class is not None
            and old.region == node.region
            and old.attributes == node.attributes
            and old.meta == node.meta
        ):
            return room.node_class
        return node.computed_class()

    def set_healthy(self, node_id: str, healthy: bool) -> None:
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None or node.healthy == healthy:
                return
            self._nodes[node_id] = replace(node, healthy=healthy)
            room = self._rooms[node_id]
            room.healthy = healthy
            if self._listable(room):
                self._list(room)
            else:
                self._unlist(room)

    def set_suspect(self, node_id: str, suspect: bool) -> None:
        """A suspect node keeps its health and allocations but gets no new ones."""
        with self._lock:
            if suspect == (node_id in self._suspect):
                return
            room = self._room_for(node_id)
            if suspect:
                self._suspect.add(node_id)
                self._unlist(room)
            else:
                self._suspect.discard(node_id)
                if self._listable(room):
                    self._list(room)

    def suspect(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._suspect)

    def _listable(self, room: Room) -> bool:
        """May the node take new placements: healthy, known, not suspect, eligible?"""
        return (
            room.healthy
            and room.node_class is not None
            and room.node_id not in self._suspect
            and room.node_id not in self._ineligible
        )

    def _room_for(self, node_id: str) -> Room:
        room = self._rooms.get(node_id)
        if room is None:
            room = self._rooms[node_id] = Room(node_id)
        return room

    def _list(self, room: Room) -> None:
        """Add a record to its class's healthy set (lock held)."""
        node_class = room.node_class
        if node_class is None:  # no node upserted for it yet: nothing to place on
            return
        self._by_class.setdefault(node_class, {})[room] = None
        self._stale.add(node_class)
        self._touch(node_class)

    def _unlist(self, room: Room) -> None:
        """Drop a record from its class's healthy set (lock held)."""
        node_class = room.node_class
        members = None if node_class is None else self._by_class.get(node_class)
        if node_class is None or members is None or room not in members:
            return
        del members[room]
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
        self.reserve_many([alloc])

    def reserve_many(self, allocs) -> None:
        """reserve() for each allocation, under one lock acquisition."""
        with self._lock:
            reserved, job_counts = self._reserved, self._job_counts
            # per_node: the counts of job_id's, looked up again when the job changes.
            job_id: str | None = None
            per_node: dict[Room, int] = {}
            for alloc in allocs:
                if alloc.allocation_id in reserved:
                    continue
                res, room = alloc.resources, self._room_for(alloc.node_id)
                ports = tuple(p["value"] for p in alloc.ports) if alloc.ports else ()
                reserved[alloc.allocation_id] = (room, res, alloc.job_id, ports)
                room.cpu_used += res.cpu
                room.memory_used += res.memory
                for port in ports:
                    room.ports[port] = room.ports.get(port, 0) + 1
                self._touch(room.node_class)
                if alloc.job_id != job_id:
                    job_id = alloc.job_id
                    per_node = job_counts.setdefault(job_id, {})
                per_node[room] = per_node.get(room, 0) + 1

    def release(self, alloc: Allocation) -> None:
        """Give back what reserve() took for this allocation id, once."""
        with self._lock:
            held = self._reserved.pop(alloc.allocation_id, None)
            if held is None:
                return
            room, res, job_id, ports = held
            room.cpu_used -= res.cpu
            room.memory_used -= res.memory
            for port in ports:
                left = room.ports.pop(port, 0) - 1
                if left > 0:
                    room.ports[port] = left
            self._touch(room.node_class)
            per_node = self._job_counts.get(job_id, {})
            remaining = per_node.get(room, 0) - 1
            if remaining > 0:
                per_node[room] = remaining
            else:
                per_node.pop(room, None)
                if not per_node:
                    self._job_counts.pop(job_id, None)

    # ---- reads (lock-free: single dict lookups) -------------------------------

    def node(self, node_id: str) -> Node | None:
        return self._nodes.get(node_id)

    def room(self, node_id: str) -> Room | None:
        """The node's record (read-only for everyone but the cluster)."""
        return self._rooms.get(node_id)

    def free(self, node_id: str) -> Resources:
        """Capacity minus reservations; nothing for an unknown node."""
        node = self._nodes.get(node_id)
        if node is None:
            return Resources()
        room = self._rooms[node_id]
        return Resources(
            node.resources.cpu - room.cpu_used, node.resources.memory - room.memory_used
        )

    def job_nodes(self, job_id: str) -> dict[Room, int]:
        """Record -> allocations of the job holding resources there; read-only."""
        return self._job_counts.get(job_id) or {}

    def members(self) -> dict[str, tuple[Room, ...]]:
        """Healthy node records by class, shared and read-only: never mutate it."""
        with self._lock:
            if self._stale:
                members = dict(self._members)
                for node_class in self._stale:
                    rooms = self._by_class.get(node_class)
                    if rooms:
                        members[node_class] = tuple(rooms)
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
        most_cpu = most_memory = -1
        count = 0
        for room in self.members().get(node_class, ()):
            if not room.healthy:
                continue
            count += 1
            most_cpu = max(most_cpu, room.cpu - room.cpu_used)
            most_memory = max(most_memory, room.memory - room.memory_used)
        answer = (most_cpu, most_memory, count)
        # Keyed by the stamp read before the scan: a change during the scan
        # bumps it, and the next call scans again.
        self._class_rooms[node_class] = (stamp, answer)
        return answer
