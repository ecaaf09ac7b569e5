"""Cluster: the in-memory capacity index the scheduler reads.

The state store is its only writer (under its own lock); scheduler workers
read it concurrently. Every write is O(1): nodes are kept grouped by computed
class so that feasibility is checked once per class, and reservations are
kept per allocation so that a double release is a no-op.
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
        self._reserved: dict[str, tuple[str, Resources, str]] = {}  # alloc -> (node, res, job)
        self._job_counts: dict[tuple[str, str], int] = {}  # (job, node) -> allocs
        self._version = 0

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
            else:
                self._unlist(node_id)
            self._version += 1

    def _unlist(self, node_id: str) -> None:
        """Drop a node from its class's healthy set (lock held)."""
        node_class = self._class_of.get(node_id)
        members = self._by_class.get(node_class)
        if members is None:
            return
        members.pop(node_id, None)
        if not members:
            del self._by_class[node_class]

    # ---- reservations -------------------------------------------------------

    def reserve(self, alloc: Allocation) -> None:
        """Hold alloc.resources on alloc.node_id; reserving twice is a no-op."""
        with self._lock:
            if alloc.allocation_id in self._reserved:
                return
            res = alloc.resources
            self._reserved[alloc.allocation_id] = (alloc.node_id, res, alloc.job_id)
            self._add(alloc.node_id, alloc.job_id, res.cpu, res.memory, 1)

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
        key = (job_id, node_id)
        remaining = self._job_counts.get(key, 0) + count
        if remaining > 0:
            self._job_counts[key] = remaining
        else:
            self._job_counts.pop(key, None)
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
        return self._job_counts.get((job_id, node_id), 0)

    def classes(self) -> dict[str, list[str]]:
        """Healthy node ids by computed class (a fresh copy)."""
        with self._lock:
            return {cls: list(ids) for cls, ids in self._by_class.items()}

    def nodes(self) -> Iterator[Node]:
        """Every known node, healthy or not (a snapshot)."""
        with self._lock:
            snapshot = list(self._nodes.values())
        return iter(snapshot)
