"""Register with the server, then heartbeat: every interval and on task changes.

Over 400 lines on purpose: registration, the beat's bodies and the rules for
when a beat goes (spacing, news, holds, deltas) share one thread's state and
one lock; split, each part would reach into the others' fields.

A task state change wakes the loop, which heartbeats at once when the last
heartbeat is at least MIN_SPACING old: a report waits on no timer when the
node is quiet. Changes that come while a heartbeat is in flight, or sooner
than MIN_SPACING after it, go out together in the next one, so that a busy
node reports many changes per heartbeat instead of one. News is the
exception: the first report of a service or system allocation the server
has heard nothing about from this node (its tasks just started, or failed
to) goes at once, spacing or not. That is the change a submitter waits for
(submit -> running; a deployment's progress); the spacing made it wait up
to MIN_SPACING behind the report of whatever else the node did just before,
such as the previous job's stop. Batch allocations stay spaced: their user
waits for the batch, and a busy batch node's cost is its beats per job
(news for each would double them: bench/README.md). When no beat is in
flight, news goes from the thread that learnt it (the task supervisor's
reader), not through a wake-up of this loop's thread: one thread hand-off
less on the report a submitter waits for. It waits NEWS_TIMEOUT at most for
the answer, and a beat that fails there leaves the news to this loop, which
alone sends news until one of its beats is answered.
A batch allocation's first report is held instead, for up to BATCH_HOLD
after its tasks started (Nomad's client gathers allocation updates for
200 ms, keeping the newest per allocation): a short batch job has ended by
then, and its one report (complete or failed, with the start and the task
events) replaces the two, `running` then `complete`, that each cost the
server a fold and a write and the agent an encoding. A terminal report is
never held; a batch job still running when the hold ends is reported then,
without waiting for another change. While only batch allocations' reports
are pending, beats are spaced BATCH_SPACING apart instead of MIN_SPACING:
a node finishing batch jobs at a steady rate sent one beat per job; at
this spacing it sends one per BATCH_SPACING, however many jobs ended
meanwhile. Any other change (news included) ends that longer wait. The
reports of allocations a client waits on are news (`expedite`; the server
says so with POST /allocations/hurry when a blocking read on their batch
job waits): a script running short jobs one after another does not wait
out the spacing, which only a stream nobody waits on needs.
A 404 means the server does not know us (it lost its state, or we were
garbage-collected): register again, then heartbeat at once.
With several servers (``--server URL1,URL2,URL3``) each call goes to the
one that answered last, the next on a connection error or a 503, and a
follower's redirect is followed to the leader (orch.transport.FailoverClient).

Heartbeats are numbered (``seq``). Once the server has shown it reads the
numbers (its answer echoes one as ``ack``), a beat carries only the
allocation reports that changed since the server last acknowledged a beat
(``delta``): a report counts as delivered only when the beat that carried it
is answered with its own number, so a lost beat or answer only means the
changes go again. Every FULL_BEAT_S, after registering and whenever the
server asks (``resync``), a beat carries every report, as the seed's does:
the server needs the whole picture to push what we lack and stop what it no
longer wants.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from orch import fastjson
from orch.agent.fingerprint import Fingerprint
from orch.agent.wake import Wake
from orch.config import AgentConfig
from orch.memory import release_free_memory
from orch.structs import TERMINAL_ALLOC
from orch.transport import ERRORS as REQUEST_ERRORS
from orch.transport import FailoverClient, HttpClient, Response, Servers

log = logging.getLogger(__name__)

TERMINAL = frozenset(status.value for status in TERMINAL_ALLOC)
MIN_SPACING = 0.015  # seconds between heartbeats caused by changes
# How long a batch allocation's first report waits for its end (above): its
# `running` is shown this much later, a short job's end no later.
BATCH_HOLD = 0.1
# Seconds between beats carrying only batch allocations' reports (above).
BATCH_SPACING = 0.05
# The connection to the server is kept only while heartbeats come close
# together (a burst of task changes); a node quiet this long lets it go. A
# server holding one idle keep-alive connection per node stops answering past
# waitress's connection limit (1,000) and slows with every connection it holds
# (bench/E2E_HEARTBEATS.md).
KEEPALIVE_IDLE = 0.1
BACKOFF_START = 0.05  # register retry: 50 ms doubling up to 1 s
BACKOFF_MAX = 1.0
REGISTER_TIMEOUT = (1.0, 5.0)  # (connect, read) seconds
HEARTBEAT_TIMEOUT = (1.0, 5.0)
# News sent from the thread that learnt it: that thread (the supervisor's
# reader) has other tasks' starts and exits to pass on, so it gives the
# server this long, then leaves the news to the loop's thread.
NEWS_TIMEOUT = (0.25, 0.5)
# A problem with the server is logged at WARNING when it starts, then again
# every WARN_EVERY seconds while it lasts; never more than one WARNING per
# WARN_GAP. A server that does not answer the first REGISTER_GRACE seconds is
# only DEBUG: `orch dev` starts the agents beside the server.
WARN_EVERY = 10.0
WARN_GAP = 1.0
REGISTER_GRACE = 2.0
FULL_BEAT_S = 30.0  # seconds between heartbeats carrying every report


class NodeLoop:
    """The agent's one conversation with the server, in its own thread."""

    def __init__(
        self,
        config: AgentConfig,
        node_id: str,
        endpoint: str,
        fp: Fingerprint,
        reports: Callable[[set, set | None], dict],
        used: Callable[[], tuple[int, int]],
        session: HttpClient | None = None,
        on_acked: Callable[[set], None] | None = None,
        secret: str | None = None,
    ):
        self.config = config
        self.node_id = node_id
        self.endpoint = endpoint
        self.fingerprint = fp
        self._reports = reports  # (exclude, only) -> {alloc id: (status, entry JSON)}
        # Finished allocations the server has taken: left out of heartbeats,
        # which would otherwise grow without end on a busy node.
        self._acked: set[str] = set()
        self._on_acked = on_acked  # told which finished ones the server took
        self._secret = secret  # proves we are this node (register, heartbeat)
        self._used = used
        self._servers = Servers(config.server)  # ValueError for a bad URL
        self._session = session or HttpClient(
            timeout=HEARTBEAT_TIMEOUT,
            token=config.token,
            tls_skip_verify=config.tls_skip_verify,
            # The servers listed and a leader we were sent to.
            max_hosts=len(self._servers.urls) + 1,
        )
        self._failover = FailoverClient(self._servers, self._session)
        self._wake = Wake()
        self._news = threading.Event()  # a change the spacing must not hold back
        # Allocations changed since the last beat was built: a delta beat
        # looks at these only, not at every allocation the node holds.
        self._changed: set[str] = set()
        self._changed_lock = threading.Lock()
        # A change other than a batch allocation's is pending (MIN_SPACING
        # applies), and whether the loop waits out BATCH_SPACING right now.
        self._urgent = False
        self._stretched = False
        # Batch allocations whose first report is held, and until when
        # (monotonic; in the order they came, so the first is due first).
        self._held: dict[str, float] = {}
        # One beat at a time, from the loop's thread or a news sender's; it
        # also guards the session, which a beat in flight is using.
        self._beating = threading.Lock()
        self._news_here = True  # off after a news beat failed, until a loop beat works
        # notify() calls so far, and how many of them the last beat built took.
        self._wakes = 0
        self._wakes_taken = 0
        self._stop = threading.Event()
        self._registered = threading.Event()
        self._registered_once = False  # the first registration retries faster
        self._reregister = threading.Event()  # registered, but attributes changed
        self._thread = threading.Thread(target=self._run, name="node-loop", daemon=True)
        self._last_error = ""
        self._last_warned = float("-inf")  # monotonic time of the last WARNING
        self._last_beat = 0.0  # monotonic time of the last heartbeat
        self.last_contact: float | None = None  # monotonic time of the last 2xx register or beat
        self._busy = True  # changes since memory was last trimmed
        self._seq = 0  # the last heartbeat's number
        self._deltas = False  # the server acknowledges numbered beats
        self._full_at = 0.0  # monotonic time the next beat must be full
        # The report (entry JSON) the server last acknowledged per allocation.
        self._delivered: dict[str, str] = {}
        # Allocations some beat has carried a report of (answered or not):
        # a change of any other is news.
        self._announced: set[str] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._news.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._beating:
            self._session.close()

    def notify(
        self, alloc_id: str | None = None, awaited: bool = False, hold: bool = False
    ) -> None:
        """A task (of `alloc_id`) changed state: heartbeat now (coalesced).

        ``awaited``: someone waits for the allocation to start (a service or
        system job's), so its first report is news. ``hold``: a batch
        allocation not finished yet, whose first report may wait BATCH_HOLD
        for its end."""
        first = False
        with self._changed_lock:
            if alloc_id is not None:
                self._changed.add(alloc_id)
                if hold and alloc_id not in self._announced:
                    first = not self._held
                    self._held.setdefault(alloc_id, time.monotonic() + BATCH_HOLD)
                else:
                    hold = False
                    self._held.pop(alloc_id, None)  # its end: it goes now
            if not hold:
                self._wakes += 1
            cut = False
            if alloc_id is None or awaited:
                self._urgent = True
                cut = self._stretched
        if cut:
            self._news.set()  # the batch spacing is not this change's
        if hold:
            # No beat for it now. A hold made while none was pending is due
            # before the loop's next wake-up: the waiting loop must see it
            # (later ones are due after it).
            if first:
                self._wake.poke()
            return
        if alloc_id is not None:
            # Only a server that takes deltas is known to have no report yet.
            if awaited and self._deltas and alloc_id not in self._announced:
                if self._send_news():
                    return
                self._news.set()
        self._wake.set()

    def expedite(self, alloc_id: str) -> None:
        """Someone waits for this allocation's report: one waiting out the
        batch spacing goes now, as news. A held first report stays held (its
        end, due soon, is the one waited for, and comes as news)."""
        with self._changed_lock:
            pending = alloc_id in self._changed and alloc_id not in self._held
        if pending:
            self.notify(alloc_id, awaited=True)

    def _send_news(self) -> bool:
        """Send the news from this thread if no beat is in flight; True if a
        beat carried every change there was (the loop need not wake)."""
        if (
            not self._news_here
            or self._stop.is_set()
            or self._reregister.is_set()
            or not self._registered.is_set()
            or not self._beating.acquire(blocking=False)
        ):
            return False
        try:
            sent = self._heartbeat(NEWS_TIMEOUT)
        except Exception:  # a bug must not reach the caller (the supervisor's reader)
            log.exception("news heartbeat error")
            sent = False
        finally:
            self._beating.release()
        if not sent:
            self._news_here = False  # the loop's next beat tries again
            return False
        if self._wake.is_set():
            # The loop waits out the spacing for changes this beat carried:
            # it need not (_covered), nor send an empty beat after it.
            self._news.set()
        with self._changed_lock:
            return not self._changed

    def _take_changed(self) -> set[str]:
        with self._changed_lock:
            changed, self._changed = self._changed, set()
            self._wakes_taken = self._wakes
            self._urgent = False
        return changed

    def _covered(self) -> bool:
        """Every change notified so far went with a beat (a news beat sent
        while the loop waited out the spacing) and none is due for another
        reason (a full beat, a resync): the loop's beat would carry nothing."""
        with self._changed_lock:
            taken = self._wakes_taken == self._wakes
        # A held report coming due needs a beat too.
        return taken and self._deltas and time.monotonic() < min(self._full_at, self._hold_due())

    def _hold_due(self) -> float:
        """When the first held report is due (monotonic), inf if none is held.

        Under the lock: a notifier adding a hold while this reads would make
        the dict's iterator fail. Never called with the lock held."""
        with self._changed_lock:
            return next(iter(self._held.values()), float("inf"))

    def _hold_back(self, changed: set[str], full: bool) -> set[str]:
        """Take the reports still held out of ``changed`` and return them;
        the others' holds end (a full beat carries every report)."""
        if not self._held:
            return set()
        now = time.monotonic()
        with self._changed_lock:
            held = self._held
            back = set() if full else {i for i in changed if held.get(i, now) > now}
            for alloc_id in changed - back:
                held.pop(alloc_id, None)
            # A hold runs out even if its change was lost (a beat's bug): a
            # hold left due would wake the loop again and again.
            while held and next(iter(held.values())) <= now:
                del held[next(iter(held))]
        changed -= back
        return back

    def _requeue(self, changed: set[str]) -> None:
        """A beat not acknowledged: what it carried goes again with the next."""
        with self._changed_lock:
            self._changed |= changed

    def update_fingerprint(self, fp: Fingerprint) -> None:
        """Attributes changed (a driver came or went): register again with them."""
        self.fingerprint = fp
        self._reregister.set()
        self._wake.set()

    def wait_registered(self, timeout: float | None = None) -> bool:
        return self._registered.wait(timeout)

    # -- bodies -----------------------------------------------------------

    def register_body(self) -> dict:
        res = self.fingerprint.resources
        return {
            "node_id": self.node_id,
            "region": self.config.region,
            "resources": {"cpu": res.cpu, "memory": res.memory},
            "healthy": True,
            "endpoint": self.endpoint,
            "attributes": {**self.fingerprint.attributes, "datacenter": self.config.datacenter},
            "meta": dict(self.config.meta),
            "port_range": self.config.port_range,
            **({"secret_id": self._secret} if self._secret else {}),
        }

    def heartbeat_body(
        self, full: bool = True, changed: set[str] | None = None
    ) -> tuple[bytes, dict]:
        """The heartbeat's JSON and the entry of each allocation in it.

        Allocation entries arrive encoded (each is encoded once per change,
        however many heartbeats repeat it) and are spliced in as they are;
        unless ``full``, only those the server has not acknowledged yet,
        looked for among ``changed`` when it is given."""
        total = self.fingerprint.resources
        cpu_used, memory_used = self._used()
        head = {
            "node_id": self.node_id,
            "resources": {
                "cpu": max(total.cpu - cpu_used, 0),
                "memory": max(total.memory - memory_used, 0),
                "cpu_used": cpu_used,
                "memory_used": memory_used,
            },
            "healthy": True,
            "timestamp": time.time(),
        }
        if self._secret:
            head["secret_id"] = self._secret
        self._seq += 1
        head["seq"] = self._seq
        reports = self._reports(self._acked, None if full else changed)
        if full:  # it names every allocation the node still holds
            self._announced = set(reports)
        else:
            head["delta"] = True
            delivered = self._delivered
            reports = {i: r for i, r in reports.items() if delivered.get(i) != r[1]}
            self._announced.update(reports)
        allocations = ",".join(
            f"{json.dumps(alloc_id)}:{entry}" for alloc_id, (_, entry) in reports.items()
        )
        data = (
            f'{fastjson.dumps(head, escape=True).decode()[:-1]},"allocations":{{{allocations}}}}}'
        )
        return data.encode(), reports

    def forget(self, alloc_id: str) -> None:
        """The allocation was removed from this node."""
        self._acked.discard(alloc_id)
        self._delivered.pop(alloc_id, None)
        self._announced.discard(alloc_id)
        with self._changed_lock:
            self._held.pop(alloc_id, None)

    def _acknowledge(self, sent: dict, full: bool) -> None:
        """Finished allocations are sent until the server has taken them once."""
        if full:  # what the node no longer holds is forgotten
            self._delivered = {alloc_id: entry for alloc_id, (_, entry) in sent.items()}
        else:
            self._delivered.update((alloc_id, entry) for alloc_id, (_, entry) in sent.items())
        fresh = {
            alloc_id
            for alloc_id, (status, _) in sent.items()
            if status in TERMINAL and alloc_id not in self._acked
        }
        self._acked.update(fresh)
        if fresh and self._on_acked is not None:
            self._on_acked(fresh)

    # -- the thread -----------------------------------------------------------

    def _run(self) -> None:
        woken = False  # by a change, not by the interval
        while not self._stop.is_set():
            try:
                if self._reregister.is_set() or not self._registered.is_set():
                    self._reregister.clear()
                    if not self._register():
                        return
                with self._beating:
                    if not (woken and self._covered()) and self._heartbeat():
                        self._news_here = True
            except Exception:  # a bug must not silence the node
                log.exception("heartbeat loop error")
            self._idle_wait(self.config.heartbeat_interval)
            woken = self._wake.is_set()
            if self._stop.is_set():
                return
            if self._wake.is_set():
                # Quiet since the last beat, or news: this change goes now.
                # Otherwise it waits out the spacing (news cuts the wait
                # short), gathering whatever else changes.
                wait = MIN_SPACING - (time.monotonic() - self._last_beat)
                if wait > 0 and not self._news.is_set():
                    self._news.wait(wait)
                self._batch_wait()
                self._wake.clear()
                self._news.clear()

    def _batch_wait(self) -> None:
        """Only batch allocations' reports pending: wait out BATCH_SPACING
        since the last beat; news or any other change ends the wait."""
        with self._changed_lock:
            if self._urgent or self._news.is_set():
                return
            self._stretched = True
        try:
            wait = BATCH_SPACING - (time.monotonic() - self._last_beat)
            if wait > 0:
                self._news.wait(wait)
        finally:
            with self._changed_lock:
                self._stretched = False

    def _idle_wait(self, interval: float) -> None:
        """Wait for a change or the next interval; drop the connection meanwhile.

        The first whole interval without a change after a busy spell (or
        after registering) is also when the heap's freed pages go back."""
        idle = min(KEEPALIVE_IDLE, interval)
        if self._wait_change(idle):
            self._busy = True
            return
        with self._beating:  # not under a news beat in flight
            # Not right after a news beat either: the next one may follow.
            if time.monotonic() - self._last_beat >= idle:
                self._session.close()  # its pools reopen on the next request
        if self._busy:
            self._busy = False
            release_free_memory()
        if self._wait_change(interval - idle):
            self._busy = True

    def _wait_change(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a change: True if one came, a held
        report's hold ending included (which then wakes the loop as a change)."""
        if self._wake.wait(timeout, self._hold_due):
            return True
        if self._hold_due() > time.monotonic():
            return False
        self._wake.set()
        return True

    def _register(self) -> bool:
        """Retry until registered; False if stopped first."""
        delay = BACKOFF_START
        started = time.monotonic()
        # The first registration of a process started beside its server (`orch
        # dev`) retries at BACKOFF_START through the grace: a doubling delay
        # made the nodes up to 0.4 s late for a server that took 0.5 s to listen.
        # Re-registrations (a fleet after a server restart) back off as before.
        flat_until = started + REGISTER_GRACE if not self._registered_once else started
        while not self._stop.is_set():
            try:
                resp = self._post("/register", self.register_body(), REGISTER_TIMEOUT)
                if resp.status_code == 200:
                    self.last_contact = time.monotonic()
                    self._full_at = 0.0  # a new session starts with every report
                    self._registered.set()
                    self._registered_once = True
                    self._last_error = ""
                    log.info(
                        "registered node %s server=%s endpoint=%s",
                        self.node_id,
                        self._servers.order()[0],
                        self.endpoint,
                    )
                    return True
                self._warn(f"register answered {resp.status_code}: {_error(resp)}")
            except REQUEST_ERRORS as exc:
                self._warn(
                    f"cannot reach server {self._servers} to register, "
                    f"retrying: {exc.__class__.__name__}: {exc}",
                    quiet=time.monotonic() - started < REGISTER_GRACE,
                )
            self._stop.wait(delay)
            if time.monotonic() >= flat_until:
                delay = min(delay * 2, BACKOFF_MAX)
        return False

    def _heartbeat(self, timeout=HEARTBEAT_TIMEOUT) -> bool:
        """One beat (the caller holds ``_beating``); True if it was answered."""
        full = not self._deltas or time.monotonic() >= self._full_at
        changed = self._take_changed()
        held = self._hold_back(changed, full)
        body, sent = self.heartbeat_body(full, changed)
        self._last_beat = time.monotonic()
        if not self._beat(body, sent, full, timeout):
            self._requeue(changed | held)
            return False
        if held:
            self._requeue(held)
        return True

    def _beat(self, body: bytes, sent: dict, full: bool, timeout=HEARTBEAT_TIMEOUT) -> bool:
        """Send one beat: True once the server acknowledged what it carried."""
        try:
            resp = self._post("/heartbeat", body, timeout)
        except REQUEST_ERRORS as exc:
            self._warn(
                f"heartbeat to server {self._servers} failed: {exc.__class__.__name__}: {exc}"
            )
            return False
        if 200 <= resp.status_code < 300:
            # Only an answer that kept the node alive: a 503 (no leader) or a
            # refusal is a failed beat, as in Nomad (a 307 was followed).
            self.last_contact = time.monotonic()
        if resp.status_code == 404:
            log.info("server does not know node %s: registering again", self.node_id)
            self._registered.clear()
            self._acked.clear()  # a server that forgot us learns everything
            self._deltas = False
            self._wake.set()  # heartbeat right after registering
            return False
        if resp.status_code != 200:
            self._warn(f"heartbeat answered {resp.status_code}: {_error(resp)}")
            return False
        self._last_error = ""
        return self._answered(resp, sent, full)

    def _answered(self, resp: Response, sent: dict, full: bool) -> bool:
        """A 200: what the beat carried is delivered if the answer names it."""
        try:
            answer = resp.json()
        except ValueError:
            answer = None
        acked = isinstance(answer, dict) and answer.get("ack") == self._seq
        if not acked:
            # A server without numbered beats (or a garbled answer): keep
            # sending everything, as the seed's agent does.
            self._deltas = False
            if full:
                self._acknowledge(sent, full)
            return False
        self._acknowledge(sent, full)
        if full:
            self._full_at = time.monotonic() + FULL_BEAT_S
        self._deltas = True
        if answer.get("resync") is True:
            self._full_at = 0.0
            self._wake.set()
        return True

    def _post(self, path: str, body: dict | bytes, timeout) -> Response:
        return self._failover.post(path, body, timeout=timeout)

    def _warn(self, message: str, quiet: bool = False) -> None:
        """WARNING for a new problem, again every WARN_EVERY s while it lasts.

        Retries run every second or faster: repeating each would flood the
        log, dropping every repeat would hide that the server is still away."""
        now = time.monotonic()
        since = now - self._last_warned
        new = message != self._last_error
        if quiet or since < WARN_GAP or not new and since < WARN_EVERY:
            log.debug("%s", message)
            return  # a new message not logged yet stays new
        log.warning("%s", message)
        self._last_warned = now
        self._last_error = message


def _error(resp: Response) -> str:
    try:
        return str(resp.json().get("error"))
    except (ValueError, AttributeError):
        return resp.text[:200]
