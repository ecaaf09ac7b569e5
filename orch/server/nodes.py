"""The Server's node operations: register, heartbeat, eligibility, drain, node down.

A mixin the Server composes: these methods share its store, broker, pusher,
heartbeat monitor, sync, planner and drainer, so they read them from ``self``
rather than taking a narrower interface. Each follows the Server's rule:
validate, write state durably, then hand follow-up work to the background.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING

from orch.errors import Conflict, Forbidden, NotFound, ValidationError
from orch.server import views
from orch.server.drainer import new_drain
from orch.server.planner import new_eval
from orch.structs import SYSTEM_TYPES, Evaluation, Node, TriggeredBy, replace
from orch.validation import bodies as validation
from orch.validation import document
from orch.validation.drain import DrainRequest

if TYPE_CHECKING:
    from orch.server.broker import EvalBroker
    from orch.server.drainer import Drainer
    from orch.server.heartbeat import HeartbeatMonitor
    from orch.server.planner import ServerPlanner
    from orch.server.push import Pusher
    from orch.server.state import StateStore
    from orch.server.sync import AllocSync

log = logging.getLogger(__name__)


class NodeOps:
    """Node registration, heartbeats, verdicts and scheduling changes."""

    # The Server's parts these methods use (set by Server.__init__).
    store: StateStore
    broker: EvalBroker
    pusher: Pusher
    monitor: HeartbeatMonitor
    sync: AllocSync
    planner: ServerPlanner
    drainer: Drainer

    def register(self, body) -> Node:
        node = views.node_from_register(body)
        node = replace(node, last_heartbeat=time.time())
        known = self.store.get_node(node.node_id)
        node = self._check_identity(node, known)
        if known is not None:
            # Eligibility and a drain are the operator's: a register keeps them.
            node = replace(
                node,
                eligible=known.eligible,
                drain=known.drain,
                drain_complete=known.drain_complete,
            )
        previous = self.store.upsert_node(node)
        self.monitor.reset(node.node_id)
        self.sync.forget(node.node_id)  # a new session: its first beat is whole
        if previous is not None and previous.endpoint != node.endpoint:
            self.pusher.endpoint_changed(node.node_id)
        if (
            previous is None
            or not previous.healthy
            or previous.resources != node.resources
            or previous.attributes != node.attributes
            or previous.meta != node.meta
        ):
            log.info(
                "node %s registered endpoint=%s healthy=%s",
                node.node_id[:8],
                node.endpoint,
                node.healthy,
            )
            self.broker.unblock()
            self.evaluate_system_jobs(node.node_id)
        return node

    @staticmethod
    def _check_identity(node: Node, previous: Node | None) -> Node:
        """A node id is taken over only by its own agent (issue #10).

        With a stored secret, the same secret is required (its agent may come
        back on another port). Without one (a node registered by hand), a
        different endpoint may not take the id while the node is healthy: its
        pushes would go to whoever registered last.
        """
        if previous is None:
            return node
        if previous.secret_digest:
            if not hmac.compare_digest(node.secret_digest, previous.secret_digest):
                log.warning(
                    "node %s: register refused, secret_id does not match endpoint=%s",
                    node.node_id[:8],
                    node.endpoint,
                )
                raise Forbidden(f"node {node.node_id} is registered with another secret_id")
            return node
        if previous.healthy and previous.endpoint != node.endpoint:
            log.warning(
                "node %s: register from endpoint=%s refused, healthy at %s",
                node.node_id[:8],
                node.endpoint,
                previous.endpoint,
            )
            raise Forbidden(f"node {node.node_id} is registered and healthy at another endpoint")
        return node

    def heartbeat(self, body) -> dict:
        """POST /heartbeat; the answer acknowledges a numbered beat (``ack``)
        and asks for every report (``resync``) when a delta cannot be trusted
        to complete what this server knows."""
        beat = validation.heartbeat(body)
        node_id = beat.node_id
        node = self.store.get_node(node_id)
        if node is None:
            raise NotFound("Node not registered")
        if node.secret_digest:
            self._check_secret(node, body.get("secret_id"))
        self.store.touch_node(node_id, time.time(), beat.usage)
        self.monitor.reset(node_id)
        self.pusher.heartbeat_ok(node_id)
        if not node.healthy and beat.healthy:
            log.info("node %s is back", node_id[:8])
            self.store.set_node_health(node_id, True)
            self.broker.unblock()
            self.evaluate_system_jobs(node_id)
        resync = self.sync.apply(node_id, beat.allocations, full=not beat.delta)
        return _beat_answer(beat.seq, resync)

    def inline_heartbeat(self, raw: bytes, report_wait: float | None = None) -> dict | None:
        """The answer to a beat taken on waitress's I/O thread
        (``orch.server.inline``), or None: the beat needs ``heartbeat`` (a
        node coming back or suspect, a repair due, an error to report).

        A beat that changes nothing durable is answered without waiting for
        any lock another thread holds across I/O. A delta beat carrying
        allocation reports is folded in and committed only with
        ``report_wait`` (SQLite: it waits that long at most for the store's
        lock, as a submit does): the running report a submitter waits for
        paid two thread hand-offs more through a worker (bench/README.md)."""
        try:
            body = document.loads(raw)
            beat = validation.heartbeat(body)
        except ValidationError:
            return None
        node = self.store.get_node(beat.node_id)
        if node is None or self.pusher.suspect(beat.node_id):
            # A suspect node is left to the route, which calls heartbeat_ok:
            # its verdict lock is taken before the store's (a push thread's order).
            return None
        if node.secret_digest:
            try:
                self._check_secret(node, body.get("secret_id"))
            except (Forbidden, ValidationError):
                return None
        if not beat.allocations:
            return self._quiet_beat(beat, node)
        if report_wait is None or not beat.delta or not node.healthy:
            return None
        return self._report_beat(beat, report_wait)

    def _quiet_beat(self, beat: validation.Heartbeat, node: Node) -> dict | None:
        node_id = node.node_id
        if (beat.healthy and not node.healthy) or (
            # A full beat may find allocations to push again.
            not beat.delta and self.store.live_allocs_for_node(node_id)
        ):
            return None
        if self.store.touch_node(node_id, time.time(), beat.usage, wait=False) is None:
            return None
        self.monitor.reset(node_id)
        resync = self.sync.apply(node_id, {}, full=not beat.delta)
        return _beat_answer(beat.seq, resync)

    def _report_beat(self, beat: validation.Heartbeat, lock_wait: float) -> dict | None:
        node_id = beat.node_id
        # Before the store's lock: the monitor's is never held around it.
        self.monitor.reset(node_id)
        with self.store.settled_now(lock_wait) as free:
            if not free:
                return None
            self.store.touch_node(node_id, time.time(), beat.usage)
            # An OrchError (a full disk) leaves the beat to the route, which
            # folds in again what is left and reports the error.
            resync = self.sync.apply(node_id, beat.allocations, full=False)
        return _beat_answer(beat.seq, resync)

    @staticmethod
    def _check_secret(node: Node, secret) -> None:
        """A heartbeat for a node with a secret must carry it (one sha256)."""
        digest = validation.secret_digest(secret, "secret_id") if secret is not None else ""
        if not hmac.compare_digest(digest, node.secret_digest):
            raise Forbidden(f"node {node.node_id}: secret_id missing or wrong")

    def node_down(self, node_id: str) -> None:
        """The heartbeat monitor's verdict: lost allocations are placed again."""
        node = self.store.get_node(node_id)
        if node is None or not node.healthy:
            return
        evals: list[Evaluation] = []

        def evals_for(lost):
            now = time.time()
            evals[:] = [
                new_eval(job_id, TriggeredBy.NODE_UPDATE, now, node_id)
                for job_id in sorted({a.job_id for a in lost})
            ]
            return evals

        # One transaction: if it fails (StorageError), nothing is half-done and
        # the heartbeat monitor tries the whole verdict again.
        lost = self.store.mark_node_down(node_id, "node missed its heartbeats", evals_for)
        # Its lost allocations may still run there unchanged, so unreported in
        # deltas: the node's next beat is answered with a resync.
        self.sync.forget(node_id)
        log.warning("node %s missed heartbeats: down, %d allocations lost", node_id[:8], len(lost))
        if evals:
            self.broker.enqueue_many(evals)

    def set_eligibility(self, node_id: str, eligible: bool) -> Node:
        """POST /nodes/<id>/eligibility; a draining node stays ineligible."""
        node = self.store.get_node(node_id)
        if node is None:
            raise NotFound("Node not found")
        if eligible and node.drain is not None:
            raise Conflict("node is draining: cancel the drain to make it eligible")
        node = self.store.set_node_scheduling(node_id, eligible=eligible, drain=node.drain)
        log.info("node %s eligibility: %s", node_id[:8], "eligible" if eligible else "ineligible")
        if eligible:
            self.broker.unblock()  # blocked evaluations may fit there now
            self.evaluate_system_jobs(node_id)
        return node

    def drain_node(self, node_id: str, request: DrainRequest) -> Node:
        """POST /nodes/<id>/drain: start or update a drain, or cancel it."""
        node = self.store.get_node(node_id)
        if node is None:
            raise NotFound("Node not found")
        if request.cancel:
            return self._cancel_drain(node, eligible=not request.keep_ineligible)
        started = node.drain.get("started") if node.drain else None
        drain = new_drain(request.deadline_s, request.ignore_system_jobs, time.time(), started)
        node = self.store.set_node_scheduling(node_id, eligible=False, drain=drain)
        log.info("node %s drain started deadline=%.0fs", node_id[:8], request.deadline_s)
        self.drainer.watch(node_id)
        return node

    def _cancel_drain(self, node: Node, eligible: bool) -> Node:
        """As Nomad's `node drain -disable`: the node is eligible again, unless
        told to stay ineligible (`-keep-ineligible`)."""
        node = self.store.set_node_scheduling(node.node_id, eligible=eligible, drain=None)
        marked = [a for a in self.store.live_allocs_for_node(node.node_id) if a.migrate]
        if marked:
            # Unmarked, a copy whose replacement was placed is a duplicate
            # in its slot: the jobs' evaluations keep one of the two.
            self.store.set_migrate([a.allocation_id for a in marked], False)
            jobs = sorted({a.job_id for a in marked})
            self.planner.create_evals(jobs, TriggeredBy.NODE_DRAIN, node.node_id)
        log.info(
            "node %s drain canceled: %s", node.node_id[:8], "eligible" if eligible else "ineligible"
        )
        self.broker.unblock()
        self.evaluate_system_jobs(node.node_id)
        return node

    def endpoint_of(self, node_id: str) -> str | None:
        node = self.store.get_node(node_id)
        return node.endpoint.rstrip("/") if node and node.endpoint else None

    def _node_suspect(self, node_id: str, suspect: bool) -> None:
        """The pusher's verdict: no new placements on a node whose pushes fail."""
        self.store.cluster.set_suspect(node_id, suspect)
        if not suspect:
            self.broker.unblock()
            self.evaluate_system_jobs(node_id)

    def evaluate_system_jobs(self, node_id: str) -> None:
        """A node that may take placements (again) gets its system jobs' copies.

        Called when a node registers, comes back healthy or stops being
        suspect (and when it becomes eligible): an evaluation per system or
        sysbatch job, at once, so the copy lands within the heartbeat.
        """
        job_ids = [
            job.job_id
            for job in self.store.list_jobs()
            if job.type in SYSTEM_TYPES and not job.stopped
        ]
        if job_ids:
            log.info("node %s: evaluating %d system jobs", node_id[:8], len(job_ids))
            self.planner.create_evals(job_ids, TriggeredBy.NODE_UPDATE, node_id)


def _beat_answer(seq: int | None, resync: bool) -> dict:
    """The seed's answer, with ``ack``/``resync`` for a numbered beat."""
    answer: dict[str, object] = {"message": "Heartbeat received"}
    if seq is not None:
        answer.update(ack=seq, resync=resync)
    return answer
