"""TaskRunner: one task's state machine, restart policy and events.

Over 400 lines on purpose: the threaded and the notified paths of a run
share its state transitions, restart policy and kill handshake, which only
read right side by side.

It drives pending -> running -> complete|failed through a driver and
applies the restart policy (as Nomad's restart block: the group's, else the
agent's for service and system jobs; batch tasks restart only after a failure
and only with a group restart block).
Its state lives under the allocation's lock; every change is told to the
allocation (`allocrunner.py`), which reports and persists it.

A task whose driver notifies (exec: its supervisor's lines say when a task
started and ended) has no thread of its own for its first run: the start is
asked from the caller's thread, and the driver's calls record the rest. A
thread is started where something must wait: a restart's delay, a kill
asked before the answer came, a reattached process, other drivers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orch.agent import taskenv
from orch.agent.drivers import select_driver
from orch.agent.drivers.base import Driver, ExitResult, TaskContext
from orch.agent.flag import Flag
from orch.errors import DriverError
from orch.structs import TERMINAL_TASK, JobType, Task, TaskState, TaskStatus
from orch.validation import kill

if TYPE_CHECKING:
    from orch.agent.allocrunner import AllocRunner

log = logging.getLogger(__name__)

MAX_EVENTS = 20  # per task, oldest dropped (Nomad keeps 10)
JOIN_GRACE = 5.0  # after a stop returns, how long the task thread may take to record it

LOST_ON_RESTART = "agent restarted; task state lost"

P, R, C, F = (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.COMPLETE, TaskStatus.FAILED)
# Allowed task transitions; running -> pending is a restart waiting its delay.
TASK_TRANSITIONS = {P: {R, C, F}, R: {P, C, F}, C: set(), F: set()}


class RestartTracker:
    """Nomad's restart tracker: at most `attempts` restarts per `interval`."""

    def __init__(
        self,
        attempts: int,
        interval: float,
        delay: float,
        now: Callable[[], float] = time.monotonic,
        mode: str = "fail",
    ):
        self.attempts, self.interval, self.delay = attempts, interval, delay
        self.mode = mode
        self._now = now
        self._window_start: float | None = None
        self._count = 0

    @classmethod
    def for_group(cls, policy: dict | None, cfg) -> RestartTracker:
        """The group's restart block, else the agent's built-in policy."""
        if policy is None:
            return cls(cfg.restart_attempts, cfg.restart_interval, cfg.restart_delay)
        return cls(policy["attempts"], policy["interval"], policy["delay"], mode=policy["mode"])

    def next_delay(self) -> float | None:
        """Seconds to wait before the next restart, None when out of attempts."""
        now = self._now()
        if self._window_start is None or now - self._window_start > self.interval:
            self._window_start, self._count = now, 0
        self._count += 1
        if self._count <= self.attempts:
            return self.delay
        if self.mode != "delay":
            return None
        # Nomad's "delay" mode: wait out the window, then start a fresh one
        # that this restart opens.
        wait = max(self.delay, self._window_start + self.interval - now)
        self._window_start, self._count = now + wait, 1
        return wait


class TaskRunner:
    """Runs one task in its own thread; its state lives under the alloc's lock."""

    def __init__(self, alloc: AllocRunner, task: Task):
        self.alloc = alloc
        self.task = task
        self.state = TaskState()
        self.handle_json: dict | None = None
        self._recovered: tuple[Driver, Any] | None = None
        self._driver: Driver | None = None
        self._handle: Any = None
        self._killed = Flag()
        self._kill_reason = ""
        self._kill_fails = False
        self._restart_reason = ""  # set by restart(): the next exit starts it again
        self._restarts = RestartTracker.for_group(alloc.spec.restart, alloc.config)
        self._started = False  # start() was called: something will record the end
        self._thread: threading.Thread | None = None  # the one waiting for it, if any
        self._over = Flag()  # ended for good, recorded, allocation told
        # Every run so far left nothing behind (None: no run ended yet).
        self._runs_contained: bool | None = None

    @property
    def terminal(self) -> bool:
        return self.state.status in TERMINAL_TASK

    @property
    def contained(self) -> bool:
        """Runs ended, and each left no process behind (its cgroups were empty)."""
        return self._runs_contained is True

    @property
    def failed_by_itself(self) -> bool:
        """Failed for its own reasons (not killed by us)."""
        return self.state.status == F and not self._killed.is_set()

    @property
    def exit_kept(self) -> bool:
        """Completed on its own under a driver that keeps its exit (caller holds alloc.lock)."""
        driver = self._driver
        return (
            self.state.status == C
            and not self._killed.is_set()
            and driver is not None
            and driver.keeps_exits
        )

    def live_handle(self) -> tuple[Driver, Any] | None:
        """(driver, handle) of the running process, None when none runs."""
        with self.alloc.lock:
            if self._driver is None or self._handle is None:
                return None
            return self._driver, self._handle

    def reattach(self, driver: Driver, handle: Any, handle_json: dict) -> None:
        """Watch a process an earlier agent started instead of starting one."""
        # Set before the thread starts, so that a kill finds the handle.
        self._recovered = (driver, handle)
        self._driver, self._handle, self.handle_json = driver, handle, handle_json
        if self.state.status == P:  # started, but the agent died before saying so
            self._set(R, start_time=self.alloc.now(), end_time=None, exit_code=None, error=None)
        self._event("Reattached", "Task process still alive after agent restart")

    def mark_lost(self) -> None:
        """Its process died with an earlier agent: what happened is unknown."""
        self._runs_contained = False
        self._set(F, error=LOST_ON_RESTART, end_time=self.alloc.now())
        self._event("Task Lost", LOST_ON_RESTART)

    def start(self) -> None:
        with self.alloc.lock:  # a kill before start finishes the task itself
            if self.terminal or self._killed.is_set() or self._started:
                return
            self._started = True
            recovered = self._recovered is not None
        if recovered or not self._start_notified():
            self._spawn(self._loop)

    def join(self, timeout: float | None = None) -> None:
        """Until the task's end is recorded (at once if it never started)."""
        if self._started and threading.current_thread() is not self._thread:
            self._over.wait(timeout)

    def _spawn(self, body: Callable[[], None]) -> None:
        self._thread = threading.Thread(
            target=self._run,
            args=(body,),
            daemon=True,
            name=f"task-{self.alloc.short}-{self.task.name}",
        )
        self._thread.start()

    def kill(self, reason: str, *, fails: bool) -> None:
        """Stop the task for good; blocks until its process is dead."""
        with self.alloc.lock:
            if self.terminal:
                return
            first = not self._killed.is_set()  # else someone else is killing it
            if first:
                self._kill_reason, self._kill_fails = reason, fails
                self._killed.set()
                self._event("Killing", reason)
            driver, handle = self._driver, self._handle
            never_started = not self._started
        if first:
            self.alloc.changed()
            if driver is not None and handle is not None:  # set together
                self._stop_process(driver, handle)
        if never_started:  # no thread will record it
            if first:
                with self.alloc.lock:
                    self._finish_killed(None, self.alloc.now())
                self.alloc.task_finished(self)
                self._over.set()
            return
        self.join(self.kill_timeout + JOIN_GRACE)

    @property
    def kill_timeout(self) -> float:
        """The task's kill_timeout, else the agent's default."""
        if self.task.kill_timeout is not None:
            return self.task.kill_timeout
        return self.alloc.config.kill_timeout

    def _stop_process(self, driver: Driver, handle: Any) -> None:
        """The task's kill_signal (SIGTERM by default), SIGKILL after its kill_timeout."""
        driver.stop(handle, self.kill_timeout, kill.signal_number(self.task.kill_signal))

    def restart(self, reason: str) -> bool:
        """Stop the running process so that it starts again at once (check_restart)."""
        with self.alloc.lock:
            if self.state.status != R or self._killed.is_set() or self._handle is None:
                return False
            self._restart_reason = reason
            driver, handle = self._driver, self._handle
            self._event("Restart Signaled", reason)
        self.alloc.changed()
        if driver is not None:
            self._stop_process(driver, handle)
        return True

    # -- without a thread (a driver that notifies) ------------------------

    def _start_notified(self) -> bool:
        """Start through a driver that calls back; False: it needs the thread."""
        try:
            driver, note = select_driver(self.task, self.alloc.drivers)
        except DriverError:
            return False  # the thread records why
        if not driver.notifies:
            return False
        if self._killed.is_set():
            self._exited(None)
            return True
        try:
            ctx = self._prepare(driver, note)
            driver.start_notified(ctx, self._on_started(driver), self._exited)
        except DriverError as exc:
            self._locked_event("Driver Failure", exc.message)
            self._exited(ExitResult(exit_code=None, error=exc.message))
        except Exception:  # as a task thread's crash: never the caller's (the push's)
            log.exception("task runner crashed alloc=%s task=%s", self.alloc.short, self.task.name)
            self._crashed()
            self._after(None)
        return True

    def _on_started(self, driver: Driver) -> Callable[[Any, DriverError | None], None]:
        def started(handle: Any, error: DriverError | None) -> None:
            if error is not None:
                self._locked_event("Driver Failure", error.message)
                self._exited(ExitResult(exit_code=None, error=error.message))
            elif self._running(driver, handle):
                # Killed while the start was asked: stopping waits, not here.
                threading.Thread(
                    target=self._stop_process, args=(driver, handle), daemon=True
                ).start()

        return started

    def _exited(self, result: ExitResult | None) -> None:
        """The run of a notifying driver ended (None: killed before it started)."""
        try:
            if result is not None:
                self._ended(result)
            delay = self._record_exit(result)
        except Exception:  # as a thread's crash: the task fails, the agent goes on
            log.exception("task runner crashed alloc=%s task=%s", self.alloc.short, self.task.name)
            self._crashed()
            delay = None
        self._after(delay)

    def _after(self, delay: float | None) -> None:
        """A notified run is recorded: restart it after `delay`, or finish."""
        if delay is not None:
            self._spawn(lambda: self._restart_after(delay))
        elif self.failed_by_itself and len(self.alloc.tasks) > 1:
            self._spawn(lambda: None)  # killing its siblings waits: not here
        else:
            self.alloc.task_finished(self)
            self._over.set()

    # -- the task thread -------------------------------------------------

    def _run(self, body: Callable[[], None]) -> None:
        try:
            body()
        except Exception:  # keep the agent alive, fail the task
            log.exception("task runner crashed alloc=%s task=%s", self.alloc.short, self.task.name)
            self._crashed()
        self.alloc.task_finished(self)
        self._over.set()

    def _crashed(self) -> None:
        self._runs_contained = False
        with self.alloc.lock:
            if not self.terminal:
                self._set(F, error="internal error in the task runner", end_time=self.alloc.now())
        self.alloc.changed()

    def _loop(self) -> None:
        result: ExitResult | None
        if self._recovered is not None:
            driver, handle = self._recovered
            self._recovered = None
            result = self._wait(driver, handle)
        else:
            result = self._start_and_wait()
        self._restart_loop(result)

    def _restart_after(self, delay: float) -> None:
        if self._restart_wait(delay):
            self._restart_loop(self._start_and_wait())

    def _restart_loop(self, result: ExitResult | None) -> None:
        while True:
            delay = self._record_exit(result)
            if delay is None or not self._restart_wait(delay):
                return
            result = self._start_and_wait()

    def _restart_wait(self, delay: float) -> bool:
        """Wait out a restart's delay; False if killed meanwhile (recorded)."""
        if self._killed.wait(delay):
            with self.alloc.lock:
                self._finish_killed(None, self.alloc.now())
            return False
        return True

    def _prepare(self, driver: Driver, note: str | None) -> TaskContext:
        """The context of the next start, its payload written."""
        if note:
            self._locked_event("Driver", note)
        ctx = self.alloc.task_context(self.task)
        taskenv.write_payload(ctx.task_dir, self.task.payload_file, self.alloc.spec.payload_bytes())
        return ctx

    def _start_and_wait(self) -> ExitResult | None:
        if self._killed.is_set():
            return None
        try:
            driver, note = select_driver(self.task, self.alloc.drivers)
            handle = driver.start(self._prepare(driver, note))
        except DriverError as exc:
            self._locked_event("Driver Failure", exc.message)
            return ExitResult(exit_code=None, error=exc.message)
        if self._running(driver, handle):
            self._stop_process(driver, handle)
        return self._wait(driver, handle)

    def _running(self, driver: Driver, handle: Any) -> bool:
        """Record a started process; True if a kill came meanwhile (stop it)."""
        with self.alloc.lock:
            self._driver, self._handle = driver, handle
            self.handle_json = driver.handle_to_json(handle)
            self._set(R, start_time=self.alloc.now(), end_time=None, exit_code=None, error=None)
            self._event("Started", "Task started by driver")
            killed_meanwhile = self._killed.is_set()
        # A driver that keeps its runs (exec) finds this one again after an
        # agent restart: the heartbeat need not wait for it to be written.
        self.alloc.changed(recoverable=driver.keeps_exits)
        return killed_meanwhile

    def _wait(self, driver: Driver, handle: Any) -> ExitResult:
        result = None
        while result is None:
            result = driver.wait(handle, None)
        self._ended(result)
        return result

    def _ended(self, result: ExitResult) -> None:
        """The process is gone: forget its handle, say how it ended."""
        with self.alloc.lock:
            self._handle = None
            self.handle_json = None
            if result.oom_killed:
                self._event("OOM", result.error or "memory limit exceeded")
            self._event("Terminated", result.describe())

    def _record_exit(self, result: ExitResult | None) -> float | None:
        """Record an exit (None: killed before starting); the delay before
        starting again, None when the task is over."""
        now = self.alloc.now()
        # Every end passes here; None (killed before its start was answered) is not known clean.
        ok = result is not None and result.contained
        self._runs_contained = ok and self._runs_contained is not False
        with self.alloc.lock:
            # None comes only from a kill (the flag is never cleared).
            if self._killed.is_set() or result is None:
                self._finish_killed(result, now)
                return None
            if self._restart_reason:
                # Asked for (a failing check): at once, outside the restart policy.
                delay, message = 0.0, self._restart_reason
                self._restart_reason = ""
            elif not self._restarts_after(result):
                self._finish(result, now)
                return None
            else:
                next_delay = self._restarts.next_delay()
                if next_delay is None:
                    self._event(
                        "Not Restarting",
                        (
                            f"Exceeded allowed attempts {self._restarts.attempts} in "
                            f"interval {self._restarts.interval:g}s"
                        ),
                    )
                    self._finish(result, now, force_fail=True)
                    return None
                delay, message = next_delay, f"Task restarting in {next_delay:g}s"
            self.state.restarts += 1
            self._event("Restarting", message)
            self._set(P, exit_code=result.exit_code, error=result.error)
        self.alloc.changed()
        return delay

    def _restarts_after(self, result: ExitResult) -> bool:
        """Long-running kinds restart their tasks; batch and sysbatch ones finish,
        unless their group has a restart block and the task failed (as Nomad's)."""
        spec = self.alloc.spec
        if spec.job_type in (JobType.SERVICE, JobType.SYSTEM):
            return True
        return spec.restart is not None and not result.successful

    def _finish(self, result: ExitResult, now: float, force_fail: bool = False) -> None:
        if result.successful and not force_fail:
            self._set(C, exit_code=result.exit_code, error=None, end_time=now)
            return
        error = result.error or f"exit code {result.exit_code}"
        if force_fail:
            error = f"restart attempts exhausted; last exit: {error}"
        self._set(F, exit_code=result.exit_code, error=error, end_time=now)

    def _finish_killed(self, result: ExitResult | None, now: float) -> None:
        self._event("Killed", "Task successfully killed")
        code = result.exit_code if result is not None else self.state.exit_code
        if self._kill_fails:
            self._set(F, exit_code=code, error=self._kill_reason, end_time=now)
        else:
            self._set(C, exit_code=code, error=None, end_time=now)

    # -- state writes (caller holds alloc.lock) ---------------------------

    def _set(self, status: TaskStatus, **fields) -> None:
        """The one place a task's status is written; checks the transition."""
        old = self.state.status
        if status != old and status not in TASK_TRANSITIONS[old]:
            raise RuntimeError(
                f"task {self.task.name}: illegal transition {old.value} -> {status.value}"
            )
        for name, value in fields.items():
            setattr(self.state, name, value)
        self.state.status = status
        if status != old:
            log.debug(
                "alloc %s task %s: %s -> %s",
                self.alloc.short,
                self.task.name,
                old.value,
                status.value,
            )

    def _event(self, kind: str, message: str) -> None:
        events = self.state.events
        events.append({"time": self.alloc.now(), "type": kind, "message": message})
        del events[:-MAX_EVENTS]

    def note(self, kind: str, message: str) -> None:
        """An event on a task still alive (e.g. waiting its shutdown_delay)."""
        if not self.terminal:
            self._locked_event(kind, message)

    def _locked_event(self, kind: str, message: str) -> None:
        with self.alloc.lock:
            self._event(kind, message)
        self.alloc.changed()
