"""Pushes allocations to agents (seed agent API), one delivery queue per node.

Placement never waits on an agent: the scheduler commits, then hands the
allocations here. Each node has its own ordered queue and its own workers
(started on demand, retired when idle), so a node that hangs delays only its
own pushes. For one allocation the latest wish wins, and a stop is final: a
stop replaces a place still waiting, follows one in flight, and a later place
of a stopped allocation is ignored — a stop is never dropped.

Places waiting together for one node (an evaluation's allocations, or a
stream of small jobs arriving faster than the node answers) go out as one
``POST /allocations/batch``: one request per node instead of one per
allocation, each allocation still accepted or refused on its own. Stops
waiting together go out the same way as one ``POST /allocations/stop``, which
the agent carries out side by side: a purge of a large job no longer waits for
its allocations' kills one after another. An agent without either route (it
answers 404 or 405) gets those one by one from then on.

A push that still fails after its retries is reported back (``on_failed``)
so the allocation can be failed and placed elsewhere. A node whose pushes
time out or are refused at the door becomes *suspect* (``on_suspect``): the
scheduler offers it no new placements until a push to it succeeds again, or
it heartbeats with nothing of ours hanging on it after ``suspect_hold``.

Past 400 lines: the queues, their workers, the batches and the retries share
one lock and one set of invariants (what is pending, what is in flight; a stop
is never dropped), which splitting would spread over modules.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from orch.server import catalog
from orch.structs import Allocation, Job, short_id
from orch.transport import ERRORS, HttpClient, PeerGone

log = logging.getLogger(__name__)

PLACE, STOP = "place", "stop"
IDLE_S = 2.0  # a node's worker with nothing to do retires after this
BATCH_MAX = 64  # places in one POST /allocations/batch (the agent takes 256)
# Stops in one POST /allocations/stop. The agent kills them side by side, so
# the call lasts about as long as one stop; fewer than the places, to keep
# the threads the agent starts for them few.
STOP_BATCH_MAX = 32


@dataclass(frozen=True)
class PushFailure:
    """Why a call to an agent failed; ``refused`` when it surely did nothing
    (a 4xx answer, no endpoint, connection refused), as opposed to no answer."""

    message: str
    refused: bool
    # The node did not take the call at all (timeout, connection refused):
    # a sign about the node, not about this allocation.
    node_fault: bool = False
    status: int | None = None  # the agent's HTTP status, if it answered


def alloc_payload(alloc: Allocation, job: Job) -> dict:
    """The agent's POST /allocations body (seed fields plus driver, job_type)."""
    group = job.group(alloc.task_group)
    if group is None:  # place() gets the job the allocations were made from
        raise ValueError(f"job {job.job_id} has no task group {alloc.task_group}")
    # Task.to_dict: the seed fields plus kill_signal/kill_timeout when set.
    tasks = [{k: v for k, v in t.to_dict().items() if k != "dispatch_payload"} for t in group.tasks]
    payload: dict[str, object] = {"name": group.name, "tasks": tasks}
    if group.shutdown_delay:
        payload["shutdown_delay"] = group.shutdown_delay
    if group.stop_after is not None:
        payload["disconnect"] = {"stop_after": group.stop_after}
    if group.restart is not None:
        payload["restart"] = group.restart
    if group.services:
        # The agent checks a host port: the label is resolved here, once.
        payload["services"] = [
            {**s, "port": catalog.service_port(s, alloc)} for s in group.services
        ]
    body: dict[str, object] = {
        "allocation_id": alloc.allocation_id,
        "job_id": alloc.job_id,
        "job_type": job.type.value,
        "task_group": payload,
        "index": alloc.index,  # the task's ORCH_ALLOC_INDEX and ORCH_ALLOC_NAME
    }
    if alloc.ports:
        body["ports"] = alloc.ports
    _add_meta_and_payload(body, job, group)
    return body


def _add_meta_and_payload(body: dict, job: Job, group) -> None:
    """Job meta with the group's over it, and a dispatched job's payload (if used)."""
    meta = {**job.meta, **group.meta}
    if meta:
        body["task_group"]["meta"] = meta
    takes_payload = False
    for entry, task in zip(body["task_group"]["tasks"], group.tasks, strict=True):
        if task.payload_file is not None:
            entry["dispatch_payload"] = {"file": task.payload_file}
            takes_payload = True
    if takes_payload and job.payload:
        body["dispatch_payload"] = job.payload


def _results(answer) -> dict | None:
    """A batch answer's per-allocation results (None if it has none)."""
    results = answer.get("allocations") if isinstance(answer, dict) else None
    return results if isinstance(results, dict) else None


def _item_failure(result) -> PushFailure:
    """One allocation of a batch the agent refused, or left out of its answer."""
    if isinstance(result, dict):
        return PushFailure(f"agent refused it: {str(result.get('error'))[:200]}", refused=True)
    # Unanswered for: the agent may or may not have taken it.
    return PushFailure("agent's batch answer left it out", refused=False)


@dataclass(frozen=True)
class _Wish:
    kind: str  # PLACE or STOP
    alloc: Allocation
    payload: dict | None = None


@dataclass(frozen=True)
class _BatchRoute:
    """An additive agent route that takes several wishes of one kind at once."""

    path: str
    item: Callable[[_Wish], object]  # one wish's entry in the body's list
    # The per-allocation results that count as done (a tuple: a refusal's
    # result is a dict, which a set could not be asked about).
    delivered: tuple[str, ...]
    stat: str  # the stats counter a delivered wish adds to


_PLACE_BATCH = _BatchRoute("/allocations/batch", lambda w: w.payload, ("accepted",), "placed")
# "not_found" as the seed DELETE's 404: nothing left to stop.
_STOP_BATCH = _BatchRoute(
    "/allocations/stop",
    lambda w: w.alloc.allocation_id,
    ("stopped", "not_found"),
    "stopped",
)


class _NodeQueue:
    """One node's pending wishes (by allocation, in order) and its workers."""

    def __init__(self, lock: threading.Lock):
        self.pending: OrderedDict[str, _Wish] = OrderedDict()
        self.inflight: dict[str, str] = {}  # alloc id -> kind being delivered
        self.workers = 0
        self.idle = 0
        self.ready = threading.Condition(lock)

    def next_wishes(self, limits: dict[str, int]) -> list[_Wish]:
        """The first wish whose allocation is not in flight and the wishes of
        its kind right behind it, up to ``limits[kind]`` (lock held)."""
        taken: list[_Wish] = []
        for alloc_id, wish in self.pending.items():
            if alloc_id in self.inflight:
                if taken:
                    break  # keep the queue's order: nothing overtakes it
                continue
            if taken and (wish.kind != taken[0].kind or len(taken) >= limits[wish.kind]):
                break
            taken.append(wish)
        for wish in taken:
            alloc_id = wish.alloc.allocation_id
            del self.pending[alloc_id]
            self.inflight[alloc_id] = wish.kind
        return taken


class Pusher:
    """Sends POST/DELETE /allocations to agents in the background."""

    def __init__(
        self,
        *,
        endpoint_of,
        on_failed,
        on_suspect=None,
        wanted=None,
        workers: int = 4,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        retries: int = 3,
        token: str | None = None,
        backoff: float = 0.2,
        suspect_hold: float = 10.0,
        batch_max: int = BATCH_MAX,
    ):
        self._endpoint_of = endpoint_of  # node_id -> URL or None
        self._on_failed = on_failed  # (alloc, PushFailure) -> None
        self._on_suspect = on_suspect or (lambda node_id, suspect: None)
        # alloc -> still to run? Asked again just before a place goes out:
        # behind a hung node's queue, a placement may be lost or purged by then.
        self._wanted = wanted or (lambda alloc: True)
        self._workers = workers  # per node
        self._timeout = (min(connect_timeout, timeout), timeout)
        self._retries = retries
        self._backoff = backoff
        self._token = token
        self._suspect_hold = suspect_hold
        self._lock = threading.Lock()
        self._queues: dict[str, _NodeQueue] = {}
        self._suspect: dict[str, float] = {}  # node id -> monotonic time marked
        # Held across a verdict and its callback, so that the scheduler
        # learns verdicts in the order they were reached.
        self._verdicts = threading.Lock()
        self._closed = False
        self._batch_max = batch_max  # 1: the seed's call for every place
        # route -> the nodes whose agent lacks it (an older or other agent)
        self._no_batch_route: dict[str, set[str]] = {
            _PLACE_BATCH.path: set(),
            _STOP_BATCH.path: set(),
        }
        self.stats = {"placed": 0, "stopped": 0, "failed": 0, "batches": 0}

    # ---- wishes ------------------------------------------------------------

    def place(self, allocs: list[Allocation], job: Job) -> None:
        for alloc in allocs:
            self._enqueue(_Wish(PLACE, alloc, alloc_payload(alloc, job)))

    def stop(self, allocs: list[Allocation]) -> None:
        for alloc in allocs:
            self._enqueue(_Wish(STOP, alloc))

    def busy(self, alloc_id: str, node_id: str | None = None) -> bool:
        """Whether a push of the allocation (to ``node_id``, if known: one
        look-up instead of one per node with pushes) is waiting or in flight."""
        with self._lock:
            queues = (
                self._queues.values()
                if node_id is None
                else filter(None, [self._queues.get(node_id)])
            )
            return any(alloc_id in q.pending or alloc_id in q.inflight for q in queues)

    def _enqueue(self, wish: _Wish) -> None:
        alloc_id, node_id = wish.alloc.allocation_id, wish.alloc.node_id
        with self._lock:
            if self._closed:
                return
            queue = self._queues.get(node_id)
            if queue is None:
                queue = self._queues[node_id] = _NodeQueue(self._lock)
            if wish.kind == PLACE and (
                getattr(queue.pending.get(alloc_id), "kind", None) == STOP
                or queue.inflight.get(alloc_id) == STOP
            ):
                return  # a stop is final: never place it again
            # A stop replaces a place still waiting (it keeps its turn); one
            # behind a place in flight waits for it (next_wish skips it).
            queue.pending[alloc_id] = wish
            # A suspect node gets one worker: its calls time out one by one
            # instead of holding several threads.
            limit = 1 if node_id in self._suspect else self._workers
            if queue.idle:
                queue.ready.notify()
            elif queue.workers < limit:
                queue.workers += 1
                threading.Thread(
                    target=self._work,
                    args=(node_id, queue),
                    name=f"push-{node_id[:8]}",
                    daemon=True,
                ).start()

    # ---- a node's worker -----------------------------------------------------

    def _work(self, node_id: str, queue: _NodeQueue) -> None:
        client = HttpClient(timeout=self._timeout, token=self._token, max_hosts=1)
        try:
            while True:
                wishes = self._take(node_id, queue)
                if not wishes:
                    return
                try:
                    self._deliver_many(wishes, client)
                except Exception:
                    log.exception("push crashed alloc=%s", wishes[0].alloc.allocation_id)
                finally:
                    with self._lock:
                        for wish in wishes:
                            queue.inflight.pop(wish.alloc.allocation_id, None)
        finally:
            client.close()

    def _take(self, node_id: str, queue: _NodeQueue) -> list[_Wish]:
        """The node's next wishes; none when the worker retires (idle, closed)."""
        limits = {
            PLACE: 1 if node_id in self._no_batch_route[_PLACE_BATCH.path] else self._batch_max,
            STOP: 1
            if node_id in self._no_batch_route[_STOP_BATCH.path]
            else min(self._batch_max, STOP_BATCH_MAX),
        }
        with self._lock:
            deadline = time.monotonic() + IDLE_S
            while not self._closed:
                wishes = queue.next_wishes(limits)
                if wishes:
                    return wishes
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                queue.idle += 1
                queue.ready.wait(left)
                queue.idle -= 1
            queue.workers -= 1
            if not queue.workers and not queue.pending and self._queues.get(node_id) is queue:
                del self._queues[node_id]
            return []

    def _deliver_many(self, wishes: list[_Wish], client: HttpClient) -> None:
        """One wish as the seed's call; several places, or stops, as one batch."""
        if len(wishes) == 1:
            self._deliver(wishes[0], client)
            return
        if wishes[0].kind == STOP:
            self._deliver_batch(wishes, client, _STOP_BATCH)
            return
        wanted = [w for w in wishes if w.kind != PLACE or self._wanted(w.alloc)]
        if len(wanted) < len(wishes):
            log.debug("%d places skipped: no longer wanted", len(wishes) - len(wanted))
        if len(wanted) == 1:
            self._deliver(wanted[0], client)
        elif wanted:
            self._deliver_batch(wanted, client, _PLACE_BATCH)

    def _deliver_batch(self, wishes: list[_Wish], client: HttpClient, route: _BatchRoute) -> None:
        node_id = wishes[0].alloc.node_id
        body = {"allocations": [route.item(w) for w in wishes]}
        answers: list = []
        failure = self._call(client, "POST", node_id, route.path, body, answers=answers)
        results = _results(answers[0]) if answers else None
        # No such route (or an answer without results: not orch's agent), or
        # too large a body: the wishes go one by one by the seed's calls (a
        # repeated push or stop is taken idempotently).
        if (failure is None and results is None) or (
            failure is not None and failure.status in (404, 405, 413)
        ):
            if failure is None or failure.status != 413:
                log.info(
                    "node %s has no %s route: one call per allocation", node_id[:8], route.path
                )
                self._no_batch_route[route.path].add(node_id)
            for wish in wishes:
                self._deliver(wish, client)
            return
        self.stats["batches"] += failure is None
        results = results or {}
        for wish in wishes:
            result = results.get(wish.alloc.allocation_id) if failure is None else None
            if result in route.delivered:
                self.stats[route.stat] += 1
                continue
            self._failed(wish, failure or _item_failure(result))

    def _deliver(self, wish: _Wish, client: HttpClient) -> None:
        alloc = wish.alloc
        if wish.kind == PLACE and not self._wanted(alloc):
            log.debug("place skipped alloc=%s: no longer wanted", short_id(alloc.allocation_id))
            return
        if wish.kind == PLACE:
            failure = self._call(client, "POST", alloc.node_id, "/allocations", wish.payload)
        else:
            failure = self._call(
                client,
                "DELETE",
                alloc.node_id,
                f"/allocations/{alloc.allocation_id}",
                None,
                ok=(200, 404),
            )
        if failure is None:
            self.stats["placed" if wish.kind == PLACE else "stopped"] += 1
            return
        self._failed(wish, failure)

    def _failed(self, wish: _Wish, failure: PushFailure) -> None:
        alloc = wish.alloc
        log.warning(
            "%s failed alloc=%s node=%s: %s",
            wish.kind,
            short_id(alloc.allocation_id),
            alloc.node_id[:8],
            failure.message,
        )
        if wish.kind == PLACE:
            self.stats["failed"] += 1
            self._on_failed(alloc, failure)

    def _call(
        self,
        client: HttpClient,
        method: str,
        node_id: str,
        path: str,
        body,
        ok=(200,),
        answers: list | None = None,
    ) -> PushFailure | None:
        """One call with bounded retries; None on success, else the last failure.

        A suspect node gets one attempt: its queue must not stall for
        retries that time out in turn. The successful answer's JSON goes to
        ``answers`` when given."""
        failure = PushFailure("node has no endpoint", refused=True)
        reached = False  # an earlier attempt may have got through
        for attempt in range(self._retries):
            endpoint = self._endpoint_of(node_id)
            if not endpoint:
                return replace(failure, refused=failure.refused and not reached)
            outcome = self._attempt(client, method, endpoint + path, body, ok, answers)
            if outcome is None:
                self._set_suspect(node_id, False)
                return None
            failure = outcome
            if failure.node_fault:
                self._set_suspect(node_id, True)
            if failure.refused:
                # Refused now, but an unanswered attempt before may have
                # been taken (the agent died after persisting it): unsure.
                return replace(failure, refused=not reached)
            reached = True
            if self.suspect(node_id):
                return failure
            time.sleep(self._backoff * (2**attempt))
        return failure

    def _attempt(
        self, client: HttpClient, method: str, url: str, body, ok, answers: list | None = None
    ) -> PushFailure | None:
        try:
            resp = client.request(method, url, body=body)
        except ConnectionRefusedError as exc:
            # Nothing listens there: the agent surely did nothing.
            return PushFailure(f"{type(exc).__name__}: {exc}", refused=True, node_fault=True)
        except TimeoutError as exc:
            return PushFailure(f"timed out: {exc}", refused=False, node_fault=True)
        except PeerGone as exc:
            # The agent went away, perhaps after it had read this call.
            return PushFailure(f"{type(exc).__name__}: {exc}", refused=False, node_fault=True)
        except (*ERRORS, ValueError) as exc:
            return PushFailure(f"{type(exc).__name__}: {exc}", refused=False)
        if resp.status_code in ok:
            if answers is not None:
                try:
                    answers.append(resp.json())
                except ValueError:
                    answers.append(None)
            return None
        message = f"agent answered {resp.status_code}: {resp.text[:200]}"
        # A 4xx is the agent refusing this call: retrying won't help.
        return PushFailure(message, refused=400 <= resp.status_code < 500, status=resp.status_code)

    # ---- suspect nodes -------------------------------------------------------

    def suspect(self, node_id: str) -> bool:
        with self._lock:
            return node_id in self._suspect

    def suspects(self) -> int:
        """How many nodes are suspect now (a metrics gauge)."""
        with self._lock:
            return len(self._suspect)

    def _set_suspect(self, node_id: str, suspect: bool) -> None:
        with self._verdicts:
            with self._lock:
                if suspect == (node_id in self._suspect):
                    return
                if suspect:
                    self._suspect[node_id] = time.monotonic()
                else:
                    del self._suspect[node_id]
            log.warning(
                "node %s: %s",
                node_id[:8],
                "pushes fail: suspect, no new placements"
                if suspect
                else "answers again: no longer suspect",
            )
            self._on_suspect(node_id, suspect)

    def heartbeat_ok(self, node_id: str) -> None:
        """A heartbeat round trip worked: a suspect node is offered work again,
        once it was suspect for ``suspect_hold`` and no push to it hangs."""
        with self._lock:
            since = self._suspect.get(node_id)
            if (
                since is None
                or time.monotonic() - since < self._suspect_hold
                or node_id in self._queues
            ):
                return
        self._set_suspect(node_id, False)

    def endpoint_changed(self, node_id: str) -> None:
        """The node registered at a new address: what made it suspect is gone."""
        self._set_suspect(node_id, False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for queue in self._queues.values():
                queue.ready.notify_all()
