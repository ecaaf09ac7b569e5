"""Node writes: register, health, scheduling (eligibility, drain), node down."""

from __future__ import annotations

from collections.abc import Callable

from orch.errors import NotFound
from orch.server.state.store import StoreCore, _dump
from orch.structs import Allocation, AllocStatus, DesiredStatus, Evaluation, Node, replace


class NodeWrites(StoreCore):
    """The store's node writes; heartbeats touch memory only."""

    def upsert_node(self, node: Node) -> Node | None:
        """Store a node (register); returns the previous version."""
        with self._writing():
            self._write([(self._UPSERT_NODE, [(node.node_id, _dump(node))])])
            previous = self._nodes.get(node.node_id)
            self._nodes[node.node_id] = node
            self.cluster.upsert_node(node)
            return previous

    def touch_node(
        self, node_id: str, timestamp: float, usage: dict, *, wait: bool = True
    ) -> Node | None:
        """Record a heartbeat in memory only: it changes nothing durable.

        None if the node is unknown or, with ``wait=False``, if a write holds
        the store (the caller must not block: waitress's I/O thread)."""
        if not self._lock.acquire(wait):
            return None
        try:
            old = self._nodes.get(node_id)
            if old is None:
                return None
            node = replace(old, last_heartbeat=timestamp, usage=usage)
            self._nodes[node_id] = node
            return node
        finally:
            self._lock.release()

    def set_node_health(self, node_id: str, healthy: bool) -> Node:
        with self._writing():
            node = replace(self._nodes[node_id], healthy=healthy)
            self._write([(self._UPSERT_NODE, [(node_id, _dump(node))])])
            self._nodes[node_id] = node
            self.cluster.set_healthy(node_id, healthy)
            return node

    def set_node_scheduling(
        self, node_id: str, *, eligible: bool, drain: dict | None, drain_complete=None
    ) -> Node:
        """Write a node's eligibility and drain (durable); NotFound if unknown."""
        with self._writing():
            node = self._nodes.get(node_id)
            if node is None:
                raise NotFound("Node not found")
            changes: dict = {"eligible": eligible, "drain": drain}
            if drain_complete is not None:
                changes["drain_complete"] = drain_complete
            node = replace(node, **changes)
            self._write([(self._UPSERT_NODE, [(node_id, _dump(node))])])
            self._nodes[node_id] = node
            self.cluster.upsert_node(node)
            return node

    def finish_drain(self, node_id: str, drain: dict, now: float) -> bool:
        """End the node's drain if it is still ``drain`` (not canceled or changed)."""
        with self._writing():
            node = self._nodes.get(node_id)
            if node is None or node.drain != drain:
                return False
            self.set_node_scheduling(node_id, eligible=False, drain=None, drain_complete=now)
            return True

    def mark_node_down(
        self,
        node_id: str,
        reason: str,
        evals_for: Callable[[list[Allocation]], list[Evaluation]] | None = None,
    ) -> list[Allocation]:
        """Node unhealthy and its unfinished allocations lost, in one transaction.

        ``evals_for(lost) -> [Evaluation]``, if given, makes the evaluations
        that replace them, written in the same transaction: a failed write
        leaves neither, so the verdict can simply be tried again."""
        with self._writing():
            node = self._nodes.get(node_id)
            if node is None:
                return []
            node = replace(node, healthy=False)
            now = self._now()
            lost = [
                replace(
                    a,
                    client_status=AllocStatus.LOST,
                    desired_status=DesiredStatus.STOP,
                    description=reason,
                    end_time=now,
                    modify_time=now,
                )
                for a in self.live_allocs_for_node(node_id)
            ]
            evals = evals_for(lost) if evals_for is not None else []
            self._write(
                [
                    (self._UPSERT_NODE, [(node_id, _dump(node))]),
                    (self._UPSERT_ALLOC, self._alloc_rows(lost)),
                    (self._UPSERT_EVAL, self._eval_rows(evals)),
                ],
                fenced=True,  # the heartbeat monitor's verdict: the leader's alone
            )
            self._nodes[node_id] = node
            self.cluster.set_healthy(node_id, False)
            for alloc in lost:
                self._index_alloc(alloc)
            self._index_evals(evals)
            return lost
