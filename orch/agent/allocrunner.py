"""AllocRunner: an allocation's tasks together, its status, its file on disk.

Each task has a TaskRunner (`taskrunner.py`: its thread, state machine and
restart policy); when one fails for good the allocation kills its siblings.
Every state change is reported through `on_change()`, which the heartbeat
loop turns into an immediate heartbeat. On disk, an allocation is written
when it arrives (before any task starts) and when it ends, at once, unless
its tasks all completed under a driver that keeps their exits (exec's run
records); other changes are written by the heartbeat loop before it reports
them (`persist()`), so a burst of changes costs one write, except those the
driver keeps (`changed(recoverable=True)`: an exec task's start). An agent
killed before such a write finds its tasks again through their drivers
(`Driver.find`), and how they ended.

Over 400 lines on purpose: an allocation's status, its tasks' lifecycle and
what goes to disk when share one lock; the file write rules (what a crash
may lose) are read best beside the state changes that trigger them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from orch import fastjson
from orch.agent import taskenv
from orch.agent.drivers import select_driver
from orch.agent.drivers.base import Driver, TaskContext
from orch.agent.flag import Flag
from orch.agent.sidebyside import side_by_side
from orch.agent.spec import AllocSpec
from orch.agent.state import AgentStore
from orch.agent.taskrunner import TaskRunner
from orch.config import AgentConfig
from orch.errors import DriverError
from orch.structs import TERMINAL_TASK, AllocStatus, Resources, Task, TaskState, TaskStatus

log = logging.getLogger(__name__)

R, F = TaskStatus.RUNNING, TaskStatus.FAILED


class AllocRunner:
    """Owns one allocation: its task runners, its status, its file on disk."""

    def __init__(
        self,
        spec: AllocSpec,
        config: AgentConfig,
        drivers: dict[str, Driver],
        store: AgentStore,
        on_change: Callable[[], None] = lambda: None,
        now: Callable[[], float] = time.time,
    ):
        self.spec = spec
        self.config = config
        self.drivers = drivers
        self.store = store
        self.now = now
        self.lock = threading.RLock()
        # The tail: time-ordered ids (UUIDv7) share their first characters.
        self.short = spec.allocation_id[-8:]
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.stopped = False
        self._last_status = AllocStatus.PENDING
        self._on_change = on_change
        self._done = Flag()
        self._hurry = Flag()  # set on agent shutdown: no shutdown_delay
        self._finished: set[str] = set()
        self._dirty = True  # state not yet on disk
        # ... of which some no driver could tell a restarted agent (a restart
        # count, a failure, a kill): what a heartbeat may not report unwritten.
        self._must_write = True
        self._saved = False  # written at least once
        self._persist_lock = threading.Lock()  # one writer at a time, newest last
        self._entry: dict | None = None  # heartbeat entry until the next change
        self._report: tuple[str, str] | None = None  # ... and its status and JSON
        self._spec_json: bytes | None = None  # the spec never changes: encoded once
        # The last result of each health check by "<service>/<check>"
        # (orch.agent.checks); reported, never persisted: checks run again.
        self.check_results: dict[str, dict] = {}
        self._check_count = sum(len(s.get("checks") or ()) for s in spec.services)
        self.tasks: dict[str, TaskRunner] = {}
        for task in spec.tasks:
            runner = TaskRunner(self, task)
            runner.state.events.append(
                {"time": now(), "type": "Received", "message": "Task received by agent"}
            )
            self.tasks[task.name] = runner

    @classmethod
    def restore(cls, doc: dict, *args: Any, **kwargs: Any) -> AllocRunner:
        """Rebuild from alloc.json; live processes are reattached, dead ones lost.

        A task with no saved handle may have been started all the same (the
        agent died before saving it): its driver is asked to find it, and
        if it cannot, the task was never started and starts now.
        """
        alloc = cls(*args, **kwargs)
        alloc.start_time, alloc.end_time = doc.get("start_time"), doc.get("end_time")
        alloc.stopped = bool(doc.get("stopped"))
        states = doc.get("tasks") or {}
        handles = doc.get("handles") or {}
        for name, runner in alloc.tasks.items():
            state = TaskState.from_dict(states.get(name) or {})
            runner.state = state
            if state.status in TERMINAL_TASK:
                alloc._finished.add(name)
                continue
            recovered = alloc._recover(runner.task, handles.get(name))
            if recovered is not None:
                runner.reattach(*recovered)
            elif handles.get(name) or state.status == R or alloc._was_started(runner.task):
                runner.mark_lost()  # it had a process, and that is gone
                alloc._finished.add(name)
            # else: never started (or between restarts); its thread starts it.
        return alloc

    def _was_started(self, task: Task) -> bool:
        """Started, though the file does not say so (an exec start is not
        written before it is reported: its run record says it happened)."""
        driver = self.drivers.get(task.driver)
        return driver is not None and driver.was_started(self.task_context(task))

    def _recover(self, task: Task, handle_json: dict | None):
        """(driver, handle, handle_json) of a task's live (or ended) process, or None."""
        if not handle_json:
            # Killed between starting it and saving its handle: a driver that
            # names its processes (docker) still finds it.
            driver = self.drivers.get(task.driver)
            if driver is None:
                return None
            handle = driver.find(self.task_context(task))
            return None if handle is None else (driver, handle, driver.handle_to_json(handle))
        # The driver that started it, even if selection would now differ
        # (a docker task that fell back to exec, then docker came up).
        driver = self.drivers.get(handle_json.get("driver") or "")
        if driver is None:
            try:
                driver, _ = select_driver(task, self.drivers)
            except DriverError:
                return None
        handle = driver.recover(handle_json)
        return None if handle is None else (driver, handle, handle_json)

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Start the task threads (only those not already terminal)."""
        # On disk before any task starts: an agent killed a moment later
        # must find the allocation, and through it the task, when it restarts.
        self.changed()
        if self.tasks.keys() == self._finished:
            self._done.set()
        for name, runner in self.tasks.items():
            if name not in self._finished and not runner.terminal:
                runner.start()  # each start tells its own changes (events, running, ended)
        failed = [r for r in self.tasks.values() if r.state.status == F]
        if failed:
            self._kill_siblings(failed[0])

    def kill(self, reason: str, *, fails: bool) -> None:
        """Kill every task in parallel; returns once all are dead."""
        _kill_parallel(list(self.tasks.values()), reason, fails)
        self.changed()

    def stop(self) -> None:
        """DELETE: stop the allocation for good; its status becomes stopped.

        The caller has taken it out of the health checks (and the server out
        of the catalog); the group's shutdown_delay lets clients that found
        it a moment earlier finish before the tasks get their kill signal.
        """
        with self.lock:
            self.stopped = True
        self._shutdown_delay()
        self.kill("allocation stopped", fails=False)
        with self.lock:
            if self.end_time is None:
                self.end_time = self.now()
        self.changed()

    def _shutdown_delay(self) -> None:
        delay = self.spec.shutdown_delay
        if not delay or self.finished or self._hurry.is_set():
            return
        log.info("alloc %s: waiting shutdown_delay %gs before killing", self.short, delay)
        for runner in self.tasks.values():
            runner.note("Waiting for shutdown delay", f"{delay:g}s before the kill signal")
        self._hurry.wait(delay)

    @property
    def slow_stop(self) -> bool:
        """A shutdown_delay, or a kill_timeout longer than the agent's default."""
        longest = max(runner.kill_timeout for runner in self.tasks.values())
        return bool(self.spec.shutdown_delay) or longest > self.config.kill_timeout

    def hurry(self) -> None:
        """The agent is leaving: a stop under way skips what is left of its shutdown_delay."""
        self._hurry.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Until every task is terminal, or `timeout` seconds: True if they all are."""
        return self._done.wait(timeout)

    @property
    def finished(self) -> bool:
        """Every task is terminal: nothing more will happen here."""
        return self._done.is_set()

    @property
    def contained(self) -> bool:
        """Finished, and no task left a process behind: its dirs may be reused."""
        return self.finished and all(r.contained for r in self.tasks.values())

    def task_finished(self, runner: TaskRunner) -> None:
        """Called by a task thread when it is done for good."""
        with self.lock:
            self._finished.add(runner.task.name)
            all_done = self._finished == self.tasks.keys()
            kept = runner.exit_kept
        if runner.failed_by_itself:
            self._kill_siblings(runner)
        self.changed(recoverable=kept)
        if all_done:
            self._done.set()

    def _kill_siblings(self, failed: TaskRunner) -> None:
        siblings = [r for r in self.tasks.values() if r is not failed]
        _kill_parallel(siblings, f"sibling task {failed.task.name} failed", True)

    # -- what we report ----------------------------------------------------

    def task_context(self, task: Task) -> TaskContext:
        alloc_id = self.spec.allocation_id
        runner = self.tasks.get(task.name)
        task_dir = self.store.task_dir(alloc_id, task.name)
        env = taskenv.task_env(
            self.spec,
            task,
            self.config,
            alloc_dir=self.store.alloc_dir(alloc_id),
            task_dir=task_dir,
        )
        return TaskContext(
            alloc_id=alloc_id,
            job_id=self.spec.job_id,
            task_name=task.name,
            config=task.config,
            resources=task.resources,
            task_dir=task_dir,
            stdout_path=self.store.log_path(alloc_id, task.name, "stdout"),
            stderr_path=self.store.log_path(alloc_id, task.name, "stderr"),
            env=env,
            attempt=runner.state.restarts if runner is not None else 0,
            ports=self.spec.ports,
        )

    def status(self) -> AllocStatus:
        """Derived from the tasks; a stopped allocation is `stopped`."""
        with self.lock:
            if self.stopped:
                return AllocStatus.STOPPED
            statuses = [r.state.status for r in self.tasks.values()]
        if R in statuses:
            return AllocStatus.RUNNING
        if all(s in TERMINAL_TASK for s in statuses):
            return AllocStatus.FAILED if F in statuses else AllocStatus.COMPLETE
        return AllocStatus.PENDING

    @property
    def last_status(self) -> AllocStatus:
        """The status as of the last `changed()`: what its notifier reads
        after each change, without deriving it from the tasks again."""
        return self._last_status

    def reserved(self) -> Resources:
        """Resources held on the node: the tasks' demand until terminal."""
        if not self.finished and self.status() in (AllocStatus.PENDING, AllocStatus.RUNNING):
            return self.spec.resources
        return Resources()

    def heartbeat_entry(self) -> dict:
        """The seed's heartbeat allocation entry (+ restarts, events per task).

        Built once per change: a node's heartbeat repeats every live allocation.
        """
        with self.lock:
            if self._entry is None:
                tasks = {}
                for name, runner in self.tasks.items():
                    state = runner.state.to_dict()
                    state["events"] = list(state["events"])
                    tasks[name] = state
                self._entry = {
                    "status": self.status().value,
                    "start_time": self.start_time,
                    "end_time": self.end_time,
                    "tasks": tasks,
                }
                if self.check_results:
                    self._entry["checks"] = {k: dict(v) for k, v in self.check_results.items()}
                    self._entry["health"] = self.health()
            return self._entry

    # -- health checks (orch.agent.checks) ----------------------------------

    def record_check(self, key: str, ok: bool, output: str, when: float) -> None:
        """A check's result; the heartbeat hears of it only when it changed."""
        result = {"status": "passing" if ok else "failing", "output": output, "time": when}
        with self.lock:
            old = self.check_results.get(key)
            if old is not None and old["status"] == result["status"]:
                if old["output"] == output:
                    return
            self.check_results[key] = result
            self._entry = self._report = None
        self._on_change()

    def clear_checks(self) -> None:
        """Forget the results (the tasks are not running): health is unknown again."""
        with self.lock:
            if not self.check_results:
                return
            self.check_results = {}
            self._entry = self._report = None
        self._on_change()

    def health(self) -> str | None:
        """healthy (every check passing), unhealthy (any failing), None (unknown)."""
        with self.lock:
            statuses = [r["status"] for r in self.check_results.values()]
        if "failing" in statuses:
            return "unhealthy"
        if statuses and len(statuses) == self._check_count:
            return "healthy"
        return None

    def last_task_start(self) -> float | None:
        """When a task last (re)started: check_restart's grace counts from it."""
        with self.lock:
            starts = [r.state.start_time for r in self.tasks.values() if r.state.start_time]
        return max(starts) if starts else None

    def restart_tasks(self, reason: str) -> None:
        """Restart every running task (a check failed `check_restart.limit` times)."""
        for runner in list(self.tasks.values()):
            runner.restart(reason)

    def check_env(self) -> dict:
        """A script check's environment: the agent's, with the first task's over it."""
        return {**os.environ, **self.task_context(self.spec.tasks[0]).env}

    def heartbeat_report(self) -> tuple[str, str]:
        """(status, the heartbeat entry as JSON), encoded once per change.

        The status is what the node's acknowledgement reads: a stopped
        allocation whose tasks are still being killed reads `running`, so it
        is reported again when they end (their exit codes and events), not
        taken as finished at the stop."""
        with self.lock:
            if self._report is None:
                entry = self.heartbeat_entry()
                status = entry["status"]
                if self.stopped and any(
                    r.state.status == TaskStatus.RUNNING for r in self.tasks.values()
                ):
                    status = AllocStatus.RUNNING.value
                self._report = (status, fastjson.dumps(entry, escape=True).decode())
            return self._report

    def to_dict(self) -> dict:
        """`GET /allocations/<id>`: the seed fields plus job_type."""
        entry = self.heartbeat_entry()
        return {
            "allocation_id": self.spec.allocation_id,
            "job_id": self.spec.job_id,
            "task_group": self.spec.task_group,
            "job_type": self.spec.job_type.value,
            **entry,
        }

    def _state_doc(self) -> dict:
        return {
            "stopped": self.stopped,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "tasks": {n: r.state.to_dict() for n, r in self.tasks.items()},
            "handles": {n: r.handle_json for n, r in self.tasks.items() if r.handle_json},
        }

    def _doc_json(self) -> bytes:
        """What alloc.json holds (the spec, the task states, the drivers'
        handles) encoded, the spec's part only once (caller holds the lock)."""
        if self._spec_json is None:
            self._spec_json = fastjson.dumps(self.spec.to_dict(), escape=True)
        state = fastjson.dumps(self._state_doc(), escape=True)
        return b'{"spec":%s,%s' % (self._spec_json, state[1:])

    def changed(self, recoverable: bool = False) -> None:
        """Update alloc times, mark for writing, and tell the heartbeat loop.

        Written at once the first time and when the allocation is over
        (unless its drivers keep how it ended); otherwise by the next
        `persist()` (the heartbeat loop's, before it reports the change).
        `recoverable`: a restarted agent learns this change from the driver
        (an exec task started or completed: its run record), so a heartbeat
        may report it before it is written."""
        with self.lock:
            self._update_times()
            self._dirty = True
            self._must_write = self._must_write or not recoverable
            self._entry = self._report = None
            urgent = not self._saved or self.stopped or self._ended_unrecorded()
        if urgent:
            self.persist()
        self._on_change()

    def _ended_unrecorded(self) -> bool:
        """Over, and only this file would say how (caller holds the lock, and
        has just derived the status: `_update_times`)."""
        if self._last_status not in (AllocStatus.COMPLETE, AllocStatus.FAILED):
            return False
        return not all(runner.exit_kept for runner in self.tasks.values())

    def persist(self, all_changes: bool = True) -> None:
        """Write the allocation's state if it changed since the last write;
        unless `all_changes`, only if a change no driver recovers is unwritten."""
        with self._persist_lock:
            with self.lock:
                if not self._dirty or not (all_changes or self._must_write):
                    return
                self._dirty = self._must_write = False
                self._saved = True
                doc = self._doc_json()
            try:
                self.store.save_alloc(self.spec.allocation_id, doc, tuple(self.tasks))
            except OSError as exc:
                log.warning("cannot persist alloc=%s error=%s", self.short, exc)
                with self.lock:
                    self._dirty = self._must_write = True

    def _update_times(self) -> None:
        if self.start_time is None:  # set once: later changes need not look
            starts = [r.state.start_time for r in self.tasks.values() if r.state.start_time]
            if starts:
                self.start_time = min(starts)
        status = self.status()
        if status != self._last_status:
            log.debug("alloc %s: %s -> %s", self.short, self._last_status.value, status.value)
            self._last_status = status
        if status in (AllocStatus.COMPLETE, AllocStatus.FAILED) and self.end_time is None:
            ends = [r.state.end_time for r in self.tasks.values() if r.state.end_time]
            self.end_time = max(ends) if ends else self.now()
        elif status in (AllocStatus.PENDING, AllocStatus.RUNNING):
            self.end_time = None


def _kill_parallel(runners: list[TaskRunner], reason: str, fails: bool) -> None:
    """Kill tasks side by side, so the grace periods overlap instead of adding up."""
    side_by_side(
        lambda r: r.kill(reason, fails=fails), [r for r in runners if not r.terminal], "kill"
    )
