"""Telling agents that a client waits on a batch allocation's report.

An agent spaces beats that carry only batch allocations' reports
BATCH_SPACING apart (orch/agent/loop.py): a node finishing a stream of
short jobs then sends one beat per spacing, not one per job. A client that
runs short jobs one after another waits for that spacing on about half of
them (bench/README.md). The agent cannot tell that client from a stream;
the server can: the client holds a blocking read on the job. When one is
about to wait, the job's live batch allocations' nodes are asked, with
``POST /allocations/hurry``, to send those reports at once.

Only waited jobs pay for it (one small call per allocation and status),
and it is a hint: it is sent once, from one thread, without retries, and a
failure (an agent without the route, a lost node) only means the report
comes with the spacing, as before.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from orch.structs import Allocation, AllocStatus, JobType
from orch.transport import ERRORS, HttpClient

if TYPE_CHECKING:
    from orch.server.state import StateStore

log = logging.getLogger(__name__)

PATH = "/allocations/hurry"
TIMEOUT = (1.0, 2.0)  # (connect, read) seconds: a hint is not worth waiting on
REMEMBERED = 4096  # (allocation, status) pairs already told, newest kept
PER_CALL = 256  # allocation ids in one call (the agent takes 256)


class Hurrier:
    """The blocking queries' `on_wait`: hurries the nodes of waited allocations."""

    def __init__(
        self,
        store: StateStore,
        endpoint_of: Callable[[str], str | None],
        token: str | None = None,
    ):
        self._store = store
        self._endpoint_of = endpoint_of
        self._token = token
        self._lock = threading.Lock()
        # Told already, per status: its running and its end are each waited for once.
        self._told: OrderedDict[tuple[str, AllocStatus], None] = OrderedDict()
        self._queue: queue.SimpleQueue[tuple[str, list[str]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stats = {"sent": 0, "failed": 0}  # calls to agents (orch_hurry_total)

    def waiting(self, job_ids: list[str]) -> None:
        """A blocking query on these jobs is about to wait."""
        by_node: dict[str, list[str]] = {}
        for job_id in job_ids:
            job = self._store.get_job(job_id)
            if job is None or job.type is not JobType.BATCH:
                continue  # a service's start is news to its agent already
            for alloc in self._store.allocs_for_job(job_id):
                if alloc.holds_resources() and alloc.node_id and self._first(alloc):
                    by_node.setdefault(alloc.node_id, []).append(alloc.allocation_id)
        if by_node:
            self._start()
            for node_id, alloc_ids in by_node.items():
                for at in range(0, len(alloc_ids), PER_CALL):
                    self._queue.put((node_id, alloc_ids[at : at + PER_CALL]))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            started = self._thread is not None
        if started:
            self._queue.put(None)

    def _first(self, alloc: Allocation) -> bool:
        key = (alloc.allocation_id, alloc.client_status)
        with self._lock:
            if key in self._told:
                return False
            self._told[key] = None
            if len(self._told) > REMEMBERED:
                self._told.popitem(last=False)
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, daemon=True, name="hurry")
            self._thread.start()

    def _run(self) -> None:
        client = HttpClient(timeout=TIMEOUT, token=self._token)
        try:
            while (item := self._queue.get()) is not None:
                node_id, alloc_ids = item
                endpoint = self._endpoint_of(node_id)
                if not endpoint:
                    continue
                try:
                    resp = client.post(endpoint + PATH, {"allocations": alloc_ids})
                    ok = resp.status_code == 200  # an older agent: 404
                except ERRORS as exc:
                    log.debug("hurry to node %s failed: %s", node_id, exc)
                    ok = False
                self.stats["sent" if ok else "failed"] += 1
        finally:
            client.close()
