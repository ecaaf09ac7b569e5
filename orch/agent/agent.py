"""The node agent: its allocations, their reports, housekeeping and driver probes.

`Agent` is the in-process object the API and the server loop share; tests
drive it directly. The process around it (HTTP server, signals, `run`, the
`orch agent` entry point) is `main.py`.

Over 400 lines on purpose: the allocation table, its resource totals and
the heartbeat's reports share one lock, and the delta bookkeeping only
makes sense beside the table it summarises.
"""

from __future__ import annotations

import logging
import threading
import time

from orch.agent.allocrunner import AllocRunner
from orch.agent.checks import CheckRunner, check_host
from orch.agent.drivers import default_drivers
from orch.agent.drivers.base import Driver
from orch.agent.fingerprint import fingerprint, refresh_drivers
from orch.agent.loop import NodeLoop
from orch.agent.sidebyside import side_by_side
from orch.agent.spec import AllocSpec, parse_alloc
from orch.agent.state import AgentStore
from orch.config import AgentConfig
from orch.errors import NotFound, ValidationError
from orch.structs import TERMINAL_ALLOC, AllocStatus, JobType

log = logging.getLogger(__name__)

ALLOC_NOT_FOUND = "Allocation not found"
MIN_PROBE_INTERVAL = 1.0  # seconds between driver probes (the docker engine ping)
WATCH_INTERVAL = 0.2  # seconds between housekeeping rounds (GC, stop_after)
DISCONNECTED = "no contact with the server for disconnect.stop_after"
WAITED_MAX = 4096  # allocations remembered as waited on (POST /allocations/hurry)


class Agent:
    """Owns the node's allocations; the API and the heartbeat loop read it."""

    def __init__(self, config: AgentConfig, *, drivers: dict[str, Driver] | None = None):
        self.config = config
        self.store = AgentStore(config.data_dir)
        self.node_id = self.store.node_id(config.node_id)
        self.drivers = (
            drivers
            if drivers is not None
            else default_drivers(
                task_user=config.task_user, state_dir=self.store.data_dir, bind=config.bind
            )
        )
        self.fingerprint = fingerprint(self.drivers)
        self.loop: NodeLoop | None = None
        self._allocs: dict[str, AllocRunner] = {}
        # DELETEd allocations: their last report, sent until the server has it,
        # so that one stopped behind the server's back is replaced.
        self._gone: dict[str, tuple[str, str]] = {}
        # Finished allocations the server has taken (end time by id): only the
        # newest config.gc_keep stay, files and all, for their logs.
        self._collectable: dict[str, float] = {}
        self._lock = threading.Lock()
        # What each allocation holds (cpu, memory) and the node's total, kept
        # up to date from the allocations that changed (`_unaccounted`), so
        # that a heartbeat's `used()` does not walk every allocation.
        self._held: dict[str, tuple[int, int]] = {}
        self._held_total = (0, 0)
        self._unaccounted: set[str] = set()
        self._stopping: set[str] = set()  # DELETEd, waiting their shutdown_delay
        # Those with `disconnect.stop_after`: the housekeeping's round looks
        # at these only, not at every allocation kept (gc_keep) 5 times a second.
        self._stop_after: set[str] = set()
        # Batch allocations someone waits on (`hurry`): their reports are news.
        self._waited: set[str] = set()
        self._closing = threading.Event()
        self.checks = CheckRunner(check_host(config))
        self._prober = threading.Thread(
            target=self._probe_drivers, daemon=True, name="driver-probe"
        )
        self._housekeeper = threading.Thread(
            target=self._housekeep, daemon=True, name="housekeeping"
        )

    # -- allocations --------------------------------------------------------

    def submit(self, spec: AllocSpec) -> bool:
        """Accept and start an allocation; False if it is already here."""
        with self._lock:
            if spec.allocation_id in self._allocs:
                return False
            self.store.forget_removal(spec.allocation_id)
            runner = self._new_runner(spec)
            self._add(runner)
        # DEBUG: at batch rates a line per allocation cost the push thread
        # as much as writing its alloc.json; a batch push says INFO once.
        log.debug(
            "alloc %s accepted job=%s group=%s tasks=%d",
            runner.short,
            spec.job_id,
            spec.task_group,
            len(spec.tasks),
        )
        runner.start()
        self.checks.watch(runner)
        return True

    def get(self, alloc_id: str) -> AllocRunner:
        with self._lock:
            runner = self._allocs.get(alloc_id)
        if runner is None:
            raise NotFound(ALLOC_NOT_FOUND)
        return runner

    def hurry(self, alloc_ids: list[str]) -> int:
        """POST /allocations/hurry: a client waits on these allocations (a
        blocking read of their batch job), so their reports are news from now
        on, not held for the batch spacing (loop.py); a report already waiting
        goes at once. Returns how many are ours (unknown ones may be in flight
        to us: they are remembered too)."""
        with self._lock:
            if len(self._waited) + len(alloc_ids) > WAITED_MAX:
                self._waited.clear()  # long done with, most of them
            self._waited.update(alloc_ids)
            ours = [a for a in alloc_ids if a in self._allocs]
        if self.loop is not None:
            for alloc_id in ours:
                self.loop.expedite(alloc_id)
        return len(ours)

    def stop_alloc(self, alloc_id: str) -> None:
        """DELETE: kill the tasks, then forget the allocation and its files.

        Once removed, an allocation is not answered (404); its last report is
        still sent until the server acknowledges it: a DELETE may not have come
        from the server, which must then replace what was stopped.
        """
        runner = self.get(alloc_id)
        if runner.slow_stop and not runner.finished:
            # Stopping may outlast the server's call (push_timeout): answer
            # now, stop behind it (a repeated DELETE finds it under way).
            with self._lock:
                if alloc_id in self._stopping:
                    return
                self._stopping.add(alloc_id)
            self.checks.unwatch(alloc_id)  # out of the checks at once
            self._stop_behind(alloc_id, runner)
            return
        self._stop_and_remove(alloc_id, runner)

    def _stop_behind(self, alloc_id: str, runner: AllocRunner) -> None:
        """`_stop_and_remove` in a thread of its own: a kill may take minutes."""
        threading.Thread(
            target=self._stop_and_remove,
            args=(alloc_id, runner),
            daemon=True,
            name=f"stop-{runner.short}",
        ).start()

    def stop_allocs(self, alloc_ids: list[str]) -> dict[str, object]:
        """POST /allocations/stop: `stop_alloc` for each, side by side (their
        kill grace periods overlap, as one allocation's tasks' do); answered
        once all are stopped and removed, with each one's result."""
        unique = list(dict.fromkeys(alloc_ids))
        results: dict[str, object] = {}

        def stop(alloc_id: str) -> None:
            try:
                self.stop_alloc(alloc_id)
                results[alloc_id] = "stopped"
            except NotFound:
                results[alloc_id] = "not_found"
            except Exception as exc:  # one allocation's failure is its own
                log.exception("stop of alloc %s failed", alloc_id[-8:])
                results[alloc_id] = {"error": f"{type(exc).__name__}: {exc}"}

        side_by_side(stop, unique, "stop-batch")
        return {alloc_id: results[alloc_id] for alloc_id in unique}

    def _stop_and_remove(self, alloc_id: str, runner: AllocRunner) -> None:
        """stop_alloc's work: kill the tasks, then forget the allocation."""
        # An allocation that had finished keeps its final status; one we stop
        # now reports `stopped` (the server knows whether it asked for that).
        last = runner.heartbeat_report() if runner.finished else None
        self.checks.unwatch(alloc_id)
        runner.stop()
        with self._lock:
            if self._allocs.get(alloc_id) is runner:
                self._drop(alloc_id)
            # One the server has already taken (finished, acknowledged) needs
            # no last word: it is gone for good at once (a purged job's).
            taken = self._collectable.pop(alloc_id, None) is not None
            if not taken:
                self._gone[alloc_id] = last or runner.heartbeat_report()
        self.store.remove_alloc(alloc_id)
        if taken:
            self._forget(alloc_id)
        elif self.loop is not None:
            self.loop.forget(alloc_id)  # its last word must not be left out
        log.info("alloc %s stopped and removed", runner.short)
        with self._lock:
            self._stopping.discard(alloc_id)
        self._notify()

    def log_path(self, alloc_id: str, task: str, kind: str) -> str:
        runner = self.get(alloc_id)
        if task not in runner.tasks:
            raise NotFound(f"Task {task} not found in allocation {alloc_id}")
        return self.store.log_path(alloc_id, task, kind)

    def allocations(self) -> list[AllocRunner]:
        with self._lock:
            return list(self._allocs.values())

    def heartbeat_reports(
        self, exclude: set | frozenset = frozenset(), only: set | None = None
    ) -> dict:
        """{alloc id: (status, entry JSON)} of every allocation not in
        `exclude` (finished ones the server has already taken), or of those
        in `only` (the ones that changed): what a heartbeat carries, encoded
        once per change, on disk first."""
        reports = {
            r.spec.allocation_id: r.heartbeat_report() for r in self._reported(exclude, only)
        }
        with self._lock:
            gone = [(k, v) for k, v in self._gone.items() if k not in exclude]
        reports.update(gone)
        return reports

    def acknowledged(self, alloc_ids: set) -> None:
        """The server has taken these finished allocations: forget the DELETEd
        ones, and collect the oldest beyond `gc_keep`."""
        with self._lock:
            for alloc_id in alloc_ids:
                if self._gone.pop(alloc_id, None) is not None:
                    self._forget(alloc_id)
                    continue
                runner = self._allocs.get(alloc_id)
                if runner is not None:
                    self._collectable[alloc_id] = runner.end_time or time.time()
        self.collect()

    def collect(self) -> None:
        """Remove the oldest acknowledged allocations beyond `gc_keep`, files too.

        Only those whose task threads are done: one reported finished may
        still be writing its last state, which would bring its files back."""
        with self._lock:
            excess = len(self._collectable) - self.config.gc_keep
            if excess <= 0:
                return
            victims: list[tuple[str, bool]] = []  # (id, its dirs reusable)
            for alloc_id in sorted(self._collectable, key=self._collectable.__getitem__):
                if len(victims) == excess:
                    break
                runner = self._allocs[alloc_id]
                if runner.finished:
                    victims.append((alloc_id, self._reusable(runner)))
            for alloc_id, _ in victims:
                del self._collectable[alloc_id]
                self._drop(alloc_id)
        for alloc_id, contained in victims:
            self.checks.unwatch(alloc_id)
            self.store.remove_alloc(alloc_id, reuse=contained)
            self._forget(alloc_id)
        if victims:
            log.info("collected %d finished allocations", len(victims))

    def _reusable(self, runner: AllocRunner) -> bool:
        """May its emptied dirs serve the next allocation? Only if no process
        of it is left, and its tasks ran as the agent's own user: a task
        user owns its task dir and could leave a mode or ACL on it for the
        next job."""
        return self.config.task_user is None and runner.contained

    def _add(self, runner: AllocRunner) -> None:
        """Into the table (caller holds the lock)."""
        alloc_id = runner.spec.allocation_id
        self._allocs[alloc_id] = runner
        self._unaccounted.add(alloc_id)
        if runner.spec.stop_after is not None:
            self._stop_after.add(alloc_id)

    def _drop(self, alloc_id: str) -> None:
        """Out of the table (caller holds the lock)."""
        del self._allocs[alloc_id]
        self._unaccounted.add(alloc_id)
        self._stop_after.discard(alloc_id)

    def _forget(self, alloc_id: str) -> None:
        """Drop the last trace of a removed allocation (it is gone for good)."""
        self.store.forget_removal(alloc_id)
        if self.loop is not None:
            self.loop.forget(alloc_id)

    def _reported(self, exclude, only):
        """The allocations a heartbeat carries; what it says is on disk first,
        or kept by the task's driver (exec's run records)."""
        if only is None:
            runners = self.allocations()
        else:
            with self._lock:
                runners = [r for r in map(self._allocs.get, only) if r is not None]
        for runner in runners:
            if runner.spec.allocation_id not in exclude:
                runner.persist(all_changes=False)
                yield runner

    def persist(self) -> None:
        """Write every allocation's unwritten changes (shutdown)."""
        for runner in self.allocations():
            runner.persist()

    def used(self) -> tuple[int, int]:
        """(cpu MHz, memory MB) reserved by allocations not yet terminal."""
        with self._lock:  # one reader at a time: totals move in order
            # Taken before reading: a change meanwhile is accounted next time.
            changed, self._unaccounted = self._unaccounted, set()
            cpu, memory = self._held_total
            for alloc_id in changed:
                runner = self._allocs.get(alloc_id)
                res = runner.reserved() if runner is not None else None
                old_cpu, old_memory = self._held.pop(alloc_id, (0, 0))
                cpu, memory = cpu - old_cpu, memory - old_memory
                if res is not None and (res.cpu or res.memory):
                    self._held[alloc_id] = (res.cpu, res.memory)
                    cpu, memory = cpu + res.cpu, memory + res.memory
            self._held_total = (cpu, memory)
        return cpu, memory

    def health(self) -> dict:
        registered = self.loop is not None and self.loop.wait_registered(0)
        return {
            "status": "ok",
            "node_id": self.node_id,
            "registered": registered,
            "allocations": len(self.allocations()),
        }

    # -- lifecycle ----------------------------------------------------------

    def restore(self) -> int:
        """Load the allocations a previous agent persisted; returns how many."""
        count = 0
        for doc in self.store.load_allocs():
            try:
                spec = parse_alloc(doc.get("spec") if isinstance(doc, dict) else None)
            except ValidationError as exc:
                log.warning("skipping persisted allocation: %s", exc)
                continue
            runner = AllocRunner.restore(
                doc, spec, self.config, self.drivers, self.store, self._notifier(spec)
            )
            if runner.stopped:  # a DELETE was cut short: finish it
                runner.hurry()  # its shutdown_delay began before we died: no new wait
                # Behind, as a DELETE's: its kill_timeout (up to 10 min) must
                # not keep the agent from serving and heartbeating.
                with self._lock:
                    self._add(runner)
                    self._stopping.add(spec.allocation_id)
                self._stop_behind(spec.allocation_id, runner)
                continue
            with self._lock:
                self._add(runner)
            runner.start()
            self.checks.watch(runner)
            count += 1
        if count:
            log.info("restored %d allocations from %s", count, self.store.data_dir)
        return count

    def start_loop(self, endpoint: str) -> NodeLoop:
        self.loop = NodeLoop(
            self.config,
            self.node_id,
            endpoint,
            self.fingerprint,
            self.heartbeat_reports,
            self.used,
            on_acked=self.acknowledged,
            secret=self.store.node_secret(),
        )
        self.loop.start()
        self._prober.start()
        self._housekeeper.start()
        return self.loop

    def _housekeep(self) -> None:
        """Every WATCH_INTERVAL: collect garbage, stop disconnected tasks."""
        stopping: set[str] = set()
        while not self._closing.wait(WATCH_INTERVAL):
            try:
                self.collect()  # what an acknowledgement left for later
                self._stop_disconnected(stopping)
            except Exception:  # a bug must not end the housekeeping
                log.exception("housekeeping failed")

    def _stop_disconnected(self, stopping: set[str]) -> None:
        """Stop the tasks of groups with `disconnect.stop_after` once the
        server has been out of reach that long (Nomad's
        stop_after_client_disconnect): by then the server has placed them
        elsewhere, and a service must not run twice for longer."""
        with self._lock:
            runners = [self._allocs[alloc_id] for alloc_id in self._stop_after]
        stopping &= {r.spec.allocation_id for r in runners}
        contact = None if self.loop is None else self.loop.last_contact
        if contact is None or not runners:
            return
        away = time.monotonic() - contact
        for runner in runners:
            limit = runner.spec.stop_after
            if (
                limit is None
                or away < limit
                or runner.finished
                or runner.spec.allocation_id in stopping
            ):
                continue
            stopping.add(runner.spec.allocation_id)
            log.warning(
                "alloc %s: no contact with the server for %.1fs "
                "(disconnect.stop_after %gs): stopping its tasks",
                runner.short,
                away,
                limit,
            )
            # Killing waits out the grace period: never in this thread.
            threading.Thread(
                target=runner.kill,
                daemon=True,
                name=f"stop-{runner.short}",
                args=(DISCONNECTED,),
                kwargs={"fails": True},
            ).start()

    def _probe_drivers(self) -> None:
        """Each heartbeat interval, probe the drivers; register again on a change.

        Its own thread, so that an engine slow to answer never delays a heartbeat.
        """
        interval = max(self.config.heartbeat_interval, MIN_PROBE_INTERVAL)
        while not self._closing.wait(interval):
            try:
                fresh = refresh_drivers(self.fingerprint, self.drivers)
            except Exception:
                log.exception("driver probe failed")
                continue
            if fresh is not self.fingerprint:
                changed = {
                    k: v
                    for k, v in fresh.attributes.items()
                    if self.fingerprint.attributes.get(k) != v
                }
                log.info("driver attributes changed %s: registering again", changed)
                self.fingerprint = fresh
                if self.loop is not None:  # started before this thread: always
                    self.loop.update_fingerprint(fresh)

    def shutdown(self, stop_tasks: bool) -> None:
        """Stop heartbeating; with stop_tasks, kill every task (in parallel)."""
        # The loop goes first: a leaving node's last word must not be the
        # failures we cause ourselves; the server marks its allocations lost.
        self._closing.set()
        self.checks.close()
        if self.loop is not None:
            self.loop.stop()
        for runner in self.allocations():
            runner.hurry()  # a stop under way must not wait out its shutdown_delay
        if stop_tasks:
            side_by_side(
                lambda r: r.kill("agent shutting down", fails=True), self.allocations(), "shutdown"
            )
        self.persist()
        for driver in self.drivers.values():
            driver.close()

    def _new_runner(self, spec: AllocSpec) -> AllocRunner:
        runner: AllocRunner | None = None

        notify = self._notifier(spec)
        batch = spec.job_type is JobType.BATCH

        def changed() -> None:
            if runner is not None and _nothing_new(runner):
                notify(wake=False)  # its resources count; no beat for it yet
                return
            # A batch allocation's first report may wait for its end (loop.py).
            notify(hold=batch and runner is not None and runner.last_status not in TERMINAL_ALLOC)
            if runner is not None:
                self.checks.kick(runner)  # tasks just started: check them now

        runner = AllocRunner(spec, self.config, self.drivers, self.store, changed)
        return runner

    def _notifier(self, spec: AllocSpec):
        """What an allocation calls on a change: the next heartbeat carries it."""
        alloc_id = spec.allocation_id
        service = spec.job_type is not JobType.BATCH  # its start is waited for

        def notify(wake: bool = True, hold: bool = False) -> None:
            with self._lock:
                self._unaccounted.add(alloc_id)
                # A waited batch allocation's end (or a report its hold let go).
                awaited = service or (not hold and alloc_id in self._waited)
            if wake and self.loop is not None:
                self.loop.notify(alloc_id, awaited, hold)

        return notify

    def _notify(self) -> None:
        if self.loop is not None:
            self.loop.notify()


def _nothing_new(runner: AllocRunner) -> bool:
    """True for an allocation that has not started a task yet: the server
    placed it pending and knows that much, so a heartbeat now would cost it a
    request that says nothing; the first start (or failure) is what it waits
    for, and the next heartbeat carries the entry anyway. Called after each
    change, which derived the status just before (`last_status`)."""
    return runner.last_status is AllocStatus.PENDING and runner.last_task_start() is None
