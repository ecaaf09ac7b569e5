"""The exec driver: a task is a local process group started by the agent's task supervisor.

Over 400 lines on purpose: starting, waiting (blocking or notified),
stopping and recovering a run all read the same run record and handle.

What runs (argv, env, cwd, user) comes from the task's config
(`exec_config.py`). Tasks are started, reaped and recorded by one small
supervisor process per agent (`orch.agent.tasksup`, reached through
`tasksup.client.SupervisorClient`) that outlives the agent: each run (start)
of a task has a record, `<task dir>/.orch-run-<n>.json`, claimed before the
start, then appended to: its pid, then how it ended (see
`tasksup/records.py`). A restarted agent reattaches through these records,
also to a run it asked for but had not yet saved the handle of. The process
group is the unit of control, as in supervisor/circus (`procs.py`): SIGTERM
to the group, poll, then SIGKILL.

Memory (a hard limit, swap included) and CPU weight go into a cgroup per task
where the agent may create one (`cgroups.py`); elsewhere the supervisor
watches the RSS of the task's process tree and kills it past the limit.
A task's cgroups go back to the `Cgroups` pool when its run ends (the
supervisor keeps them for us, `cgroups_kept` in the record), so the next
task with the same limits need not make its own.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from orch.agent import taskenv
from orch.agent.drivers import procs
from orch.agent.drivers.base import Driver, ExitResult, TaskContext, oom_error
from orch.agent.drivers.cgroups import Cgroups, cpu_shares
from orch.agent.drivers.exec_config import build_argv, build_env, resolve_cwd, resolve_user
from orch.agent.state import make_dir
from orch.agent.tasksup.client import SupervisorClient, data_dir_tag, supervisor_name
from orch.agent.tasksup.records import read_record, run_ended
from orch.errors import DriverError

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.02
REAP_TIMEOUT = 5.0  # after SIGKILL, how long we wait for the group to vanish
FOREIGN_POLL = 0.2  # polling a reattached process we are not the parent of
# In the task dir: one record per run (start) of the task. A file beside the
# logs, not in a directory of its own: a directory more per task cost a mkdir
# and, at garbage collection, an rmdir, the dearest of the task's file
# operations on ext4. Runs recorded by older agents are still found.
RUN_PREFIX = ".orch-run-"
LEGACY_RUN_DIR = ".orch"
SUPERVISOR_LOG = "supervisor.log"  # in the agent's data dir
CLAIM_WAIT = 5.0  # how long a run's record may lack its pid while starting
STATUS_LOST = "task supervisor ended without recording the exit status"
# start_notified's first call: (handle, None) once started, (None, error) if not.
StartedCallback = Callable[["ExecHandle | None", "DriverError | None"], None]


@dataclass
class ExecHandle:
    """A started task: its group leader and the supervisor that reaps it."""

    pid: int
    pgid: int
    create_time: float | None = None
    supervisor_pid: int | None = None
    supervisor_create_time: float | None = None
    record_path: str | None = None  # the run's record (None: a legacy pid-only handle)
    memory_mb: int = 0


class ExecDriver(Driver):
    """Runs tasks as local process groups."""

    name = "exec"
    keeps_exits = True  # the run record says how each run ended
    notifies = True  # start_notified: the supervisor's lines say when it started and ended

    def __init__(
        self,
        *,
        poll_interval: float = POLL_INTERVAL,
        cgroups: Cgroups | None = None,
        user: str | None = None,
        state_dir: str | None = None,
    ):
        self._poll = poll_interval
        if cgroups is None and state_dir:
            # Named for our data dir: a restarted agent takes back at once
            # the idle cgroups a killed one left (`Cgroups._sweep`).
            cgroups = Cgroups(owner=data_dir_tag(state_dir)[:12])
            cgroups.detect()
        self._cgroups = cgroups if cgroups is not None else Cgroups()
        self._user = resolve_user(user) if user else None
        log_path = os.path.join(state_dir, SUPERVISOR_LOG) if state_dir else None
        self._supervisor = SupervisorClient(supervisor_name(state_dir), log_path)
        self._task_cgroups: dict[str, list[str]] = {}  # run record -> its cgroup dirs
        # A driver dropped without close() (tests) still lets its supervisor go
        # and removes its idle pooled cgroups.
        weakref.finalize(self, self._supervisor.close)
        weakref.finalize(self, self._cgroups.drain)

    def close(self) -> None:
        self._supervisor.close()
        self._cgroups.drain()

    def start(self, ctx: TaskContext) -> ExecHandle:
        spec = self._spec(ctx)
        dirs = spec.get("cgroup_dirs") or []
        try:
            answer, sup_pid, sup_created = self._supervisor.start(spec)
        except DriverError:
            self._cgroups.forget(dirs)  # it never got them
            raise
        return self._started(ctx, spec, answer, sup_pid, sup_created)

    def start_notified(self, ctx: TaskContext, on_started: StartedCallback, on_exit) -> None:
        """start() without waiting: `on_started(handle, error)`, then
        `on_exit(result)`, come from the supervisor's reader thread (or from
        a thread of their own where they would have to wait: a run an
        earlier supervisor claimed, a lost connection)."""
        spec = self._spec(ctx)
        dirs = spec.get("cgroup_dirs") or []

        def answered(answer: dict, sup_pid: int, sup_created: float | None) -> None:
            if answer.get("claimed") and "error" not in answer:
                # Taking over an earlier start may wait for its record: not here.
                threading.Thread(
                    target=self._take_over, args=(ctx, on_started, on_exit), daemon=True
                ).start()
                self._cgroups.forget(dirs)
                return
            try:
                handle = self._started(ctx, spec, answer, sup_pid, sup_created)
            except DriverError as exc:
                on_started(None, exc)
                return
            # Before on_started: the end line cannot come before we return.
            self._supervisor.on_exit(handle.pid, lambda line: self._ended(handle, line, on_exit))
            on_started(handle, None)

        try:
            self._supervisor.start_async(spec, answered)
        except DriverError:
            self._cgroups.forget(dirs)
            raise

    def _take_over(self, ctx: TaskContext, on_started: StartedCallback, on_exit) -> None:
        try:
            handle = self._claimed(ctx)
        except DriverError as exc:
            on_started(None, exc)
            return
        on_started(handle, None)
        on_exit(self._wait_blocking(handle))

    def _ended(self, handle: ExecHandle, line: dict | None, on_exit) -> None:
        """The supervisor said the run ended (None: we lost it first)."""
        record_path = handle.record_path
        assert record_path is not None  # a started handle always has its record
        if line is not None and not run_ended(line):  # an older supervisor's bare line
            line = read_record(record_path)
        if line is None or not run_ended(line):
            # Lost, or the end is not recorded: wait the long way, in a thread.
            threading.Thread(
                target=lambda: on_exit(self._wait_blocking(handle)), daemon=True
            ).start()
            return
        self._release_cgroups(record_path, line)
        on_exit(exit_result(line, handle.memory_mb))

    def _wait_blocking(self, handle: ExecHandle) -> ExitResult:
        result = None
        while result is None:
            result = self.wait(handle, None)
        return result

    def _spec(self, ctx: TaskContext) -> dict:
        """The supervisor's start request: what runs, where, with which limits."""
        ctx = taskenv.interpolated(ctx)  # ${ORCH_...} in command, args and env
        argv = build_argv(ctx.config)
        env = build_env(ctx)
        make_dir(ctx.task_dir)
        if self._user is not None:  # the task's own dir is writable by it
            _chown(ctx.task_dir, self._user)
        cwd = resolve_cwd(ctx)
        spec: dict[str, Any] = {
            "argv": argv,
            "env": env,
            "cwd": cwd,
            "stdout": ctx.stdout_path,
            "stderr": ctx.stderr_path,
            "record_path": run_path(ctx),
            "memory_mb": ctx.resources.memory,
            "user": self._user,
        }
        spec.update(self._limits(ctx))
        return spec

    def _started(
        self, ctx: TaskContext, spec: dict, answer: dict, sup_pid: int, sup_created: float | None
    ) -> ExecHandle:
        """The handle from the supervisor's answer to a start; raises DriverError."""
        dirs = spec.get("cgroup_dirs") or []
        record_path = spec["record_path"]
        if "error" in answer or answer.get("claimed"):
            self._cgroups.forget(dirs)  # the supervisor removed them already
            if "error" in answer:
                raise DriverError(answer["error"])
            return self._claimed(ctx)
        if dirs:
            self._task_cgroups[record_path] = dirs
        pid = int(answer["pid"])
        # The supervisor takes it from its clock at the fork; an older
        # supervisor (still serving after an agent upgrade) may not send it.
        created = answer.get("create_time")
        log.debug(
            "exec started alloc=%s task=%s pid=%d supervisor=%d",
            ctx.alloc_id,
            ctx.task_name,
            pid,
            sup_pid,
        )
        return ExecHandle(
            pid=pid,
            pgid=pid,
            create_time=created if created is not None else procs.create_time(pid),
            supervisor_pid=sup_pid,
            supervisor_create_time=sup_created,
            record_path=record_path,
            memory_mb=ctx.resources.memory,
        )

    def _claimed(self, ctx: TaskContext) -> ExecHandle:
        """This run was started by an earlier agent's supervisor: take it over."""
        handle = self.find(ctx)
        if handle is None:
            doc = read_record(run_path(ctx)) or {}
            raise DriverError(
                doc.get("error")
                or (f"task run {ctx.attempt} was claimed by a supervisor that did not start it")
            )
        log.info(
            "exec alloc=%s task=%s run %d already started by an earlier "
            "supervisor: reattached pid=%d",
            ctx.alloc_id,
            ctx.task_name,
            ctx.attempt,
            handle.pid,
        )
        return handle

    def find(self, ctx: TaskContext) -> ExecHandle | None:
        """The run of this start, from its record in the task dir, if it was started."""
        path = recorded_run_path(ctx)
        deadline = time.monotonic() + CLAIM_WAIT
        while True:
            doc = read_record(path)
            if doc is None:
                return None  # never started
            if "pid" in doc or "error" in doc:
                break
            sup = doc.get("supervisor_pid")
            if sup is None or not procs.alive(sup, None) or time.monotonic() > deadline:
                return None
            time.sleep(FOREIGN_POLL / 4)  # its supervisor is starting it right now
        if "pid" not in doc:
            return None
        pid = int(doc["pid"])
        handle = ExecHandle(
            pid=pid,
            pgid=pid,
            create_time=None,
            supervisor_pid=doc.get("supervisor_pid"),
            record_path=path,
            memory_mb=int(doc.get("memory_mb") or 0),
        )
        if run_ended(doc) or self._supervised(handle):
            return handle
        return None

    def was_started(self, ctx: TaskContext) -> bool:
        """Its run's record has a pid: started, even if nothing now says how it ended."""
        return "pid" in (read_record(recorded_run_path(ctx)) or {})

    def _limits(self, ctx: TaskContext) -> dict:
        """The supervisor's share of the limits: cgroups to join, else a watchdog."""
        memory, cpu = ctx.resources.memory, ctx.resources.cpu
        if memory <= 0 and cpu <= 0:
            return {}

        # Unique per start: a previous run's supervisor may still be removing
        # its own. Named only when one is made (most starts reuse a pooled one).
        def name() -> str:
            return f"{ctx.alloc_id}-{ctx.task_name}-{uuid.uuid4().hex[:8]}"

        group = self._cgroups.create(name, memory, cpu_shares(cpu) if cpu > 0 else 0)
        if group is None:
            return {"watchdog_mb": memory}
        return {
            "cgroup_procs": list(group.procs),
            "cgroup_oom_files": list(group.oom_files),
            "cgroup_dirs": list(group.dirs),
            "cgroup_home_procs": list(group.home_procs),
            "cgroup_keep": True,
        }

    def wait(self, handle: ExecHandle, timeout: float | None) -> ExitResult | None:
        if handle.record_path is not None:
            return self._wait_supervised(handle, handle.record_path, timeout)
        # A handle of an older agent without a supervisor: its pid is all we have.
        if not self._wait_foreign(handle, timeout):
            return None
        # The group is the task: stragglers (background children) die with
        # the leader, as Nomad's executor does, so nothing leaks.
        procs.signal_group(handle.pgid, signal.SIGKILL)
        return ExitResult(
            exit_code=None,
            error=("task exited while the agent was not its parent: exit status unknown"),
        )

    def _wait_supervised(
        self, handle: ExecHandle, record_path: str, timeout: float | None
    ) -> ExitResult | None:
        """Until the run's record says how it ended: the supervisor we are
        connected to says when; one we are not (an earlier agent's) is
        checked every FOREIGN_POLL."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ended = self._supervisor.watch(handle.pid)
        try:
            while True:
                ended.clear()
                record = read_record(record_path)
                if run_ended(record):
                    break
                ours = self._supervisor.serves(handle.supervisor_pid)
                if not ours and not self._supervised(handle):
                    record = read_record(record_path)
                    if run_ended(record):  # written as it left
                        break
                    _kill_orphan(handle)
                    return ExitResult(exit_code=None, error=STATUS_LOST)
                wait = None if ours else FOREIGN_POLL
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    wait = remaining if wait is None else min(wait, remaining)
                ended.wait(wait)
        finally:
            self._supervisor.unwatch(handle.pid, ended)
        self._release_cgroups(record_path, record)
        return exit_result(record, handle.memory_mb)

    def _release_cgroups(self, record_path: str, record: dict | None) -> None:
        """The ended run's cgroups back to the pool (or removed, if an
        earlier agent made them); the supervisor removes those it did not keep."""
        dirs = self._task_cgroups.pop(record_path, None)
        kept = (record or {}).get("cgroups_kept")
        if isinstance(kept, list) and all(isinstance(d, str) for d in kept):
            self._cgroups.release(kept)
        elif dirs:
            self._cgroups.release(dirs, kept=False)

    def stop(self, handle: ExecHandle, timeout: float, sig: int = signal.SIGTERM) -> None:
        """Returns once every process of the task's group is gone."""
        if handle.record_path is not None and run_ended(read_record(handle.record_path)):
            # Over already: the supervisor SIGKILLed the group before reaping
            # its leader, but members may still be dying. Wait, never signal:
            # the leader's pid may be another's now.
            if not self._wait_group_gone(handle, REAP_TIMEOUT):
                log.warning(
                    "task pgid=%d still has processes %.1fs after its end",
                    handle.pgid,
                    REAP_TIMEOUT,
                )
            return
        escaped = procs.descendants(handle.pid)
        procs.signal_group(handle.pgid, sig)
        if not self._wait_group_gone(handle, timeout):
            name = signal.Signals(sig).name
            log.info("task pgid=%d ignored %s for %.1fs: SIGKILL", handle.pgid, name, timeout)
            procs.signal_group(handle.pgid, signal.SIGKILL)
            self._wait_group_gone(handle, REAP_TIMEOUT)
        # Children that left the group (setsid) were snapshotted before the kill.
        for proc in escaped:
            try:
                proc.kill()
            except psutil.Error:
                pass
        self._wait_procs_gone(escaped, REAP_TIMEOUT)

    def handle_to_json(self, handle: ExecHandle) -> dict:
        return {
            "driver": self.name,
            "pid": handle.pid,
            "pgid": handle.pgid,
            "create_time": handle.create_time,
            "supervisor_pid": handle.supervisor_pid,
            "supervisor_create_time": handle.supervisor_create_time,
            "record_path": handle.record_path,
            "memory_mb": handle.memory_mb,
        }

    def recover(self, handle_json: dict) -> ExecHandle | None:
        try:
            pid = int(handle_json["pid"])
            pgid = int(handle_json.get("pgid") or pid)
            sup_pid = handle_json.get("supervisor_pid")
            sup_pid = int(sup_pid) if sup_pid is not None else None
            memory_mb = int(handle_json.get("memory_mb") or 0)
        except (KeyError, TypeError, ValueError):
            return None
        created = handle_json.get("create_time")
        record_path = handle_json.get("record_path")
        handle = ExecHandle(
            pid=pid,
            pgid=pgid,
            create_time=created,
            supervisor_pid=sup_pid,
            supervisor_create_time=handle_json.get("supervisor_create_time"),
            record_path=record_path,
            memory_mb=memory_mb,
        )
        if record_path:
            # Ended while we were away (the record says how), or still supervised.
            if run_ended(read_record(record_path)) or self._supervised(handle):
                return handle
            _kill_orphan(handle)
            return None
        return handle if procs.alive(pid, created) else None

    def _supervised(self, handle: ExecHandle) -> bool:
        return handle.supervisor_pid is not None and procs.alive(
            handle.supervisor_pid, handle.supervisor_create_time
        )

    def _wait_group_gone(self, handle: ExecHandle, timeout: float) -> bool:
        """Until no member of the group is left (zombies aside).

        The run's record saying the task ended is not enough: the supervisor
        SIGKILLs the group and then records, and a killed process takes a
        moment to go. While any member is left the group id cannot be reused,
        so a group seen here is still the task's.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not procs.group_alive(handle.pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(self._poll)

    def _wait_procs_gone(self, processes: list[psutil.Process], timeout: float) -> None:
        """Until none is left but as a zombie: an orphan's reaper may be late."""
        deadline = time.monotonic() + timeout
        while any(procs.proc_alive(p) for p in processes) and time.monotonic() < deadline:
            time.sleep(self._poll)

    def _wait_foreign(self, handle: ExecHandle, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        record_path = handle.record_path
        if record_path is not None:

            def running():
                return not run_ended(read_record(record_path)) and self._supervised(handle)
        else:

            def running():
                return procs.alive(handle.pid, handle.create_time)

        while running():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(FOREIGN_POLL)
        return True


def run_path(ctx: TaskContext) -> str:
    """The record of this start (run) of the task."""
    return os.path.join(ctx.task_dir, f"{RUN_PREFIX}{ctx.attempt}.json")


def recorded_run_path(ctx: TaskContext) -> str:
    """Where this run's record is: run_path, or where an older agent put it."""
    path = run_path(ctx)
    legacy = os.path.join(ctx.task_dir, LEGACY_RUN_DIR, f"run-{ctx.attempt}.json")
    return legacy if not os.path.exists(path) and os.path.exists(legacy) else path


def exit_result(record: dict | None, memory_mb: int) -> ExitResult:
    """How a task ended, from its run's record."""
    if record is None or not run_ended(record):
        return ExitResult(exit_code=None, error=STATUS_LOST)
    code, sig = record.get("exit_code"), record.get("signal")
    if record.get("oom_killed"):
        return ExitResult(exit_code=code, signal=sig, oom_killed=True, error=oom_error(memory_mb))
    # The supervisor keeps a run's cgroups only when they are empty at its end.
    contained = isinstance(record.get("cgroups_kept"), list) and bool(record["cgroups_kept"])
    if code is None:
        error = record.get("exit_error") or STATUS_LOST
        return ExitResult(exit_code=None, error=error, contained=contained)
    if sig:
        return ExitResult(
            exit_code=code, signal=sig, error=f"killed by signal {sig}", contained=contained
        )
    return ExitResult(exit_code=code, contained=contained)


def _chown(path: str, user: dict) -> None:
    try:
        os.chown(path, user["uid"], user["gid"])
    except OSError as exc:
        raise DriverError(
            f"cannot give the task dir to user {user['name']}: {exc.strerror}"
        ) from exc


def _kill_orphan(handle: ExecHandle) -> None:
    """Its supervisor died without a record: nothing would ever report the task."""
    if handle.create_time is not None and procs.alive(handle.pid, handle.create_time):
        log.warning("task pid=%d lost its supervisor: killing its group", handle.pid)
        procs.signal_group(handle.pgid, signal.SIGKILL)
