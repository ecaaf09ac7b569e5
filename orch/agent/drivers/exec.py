"""The exec driver: a task is a local process group in its own session.

`command` as a string runs through `/bin/sh -c` (with `args` appended,
shell-quoted); as a list it is exec'd directly. The process group is the unit
of control, as in supervisor/circus: SIGTERM to the group, poll, then SIGKILL.
"""
from __future__ import annotations

import errno
import logging
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass

import psutil

from orch.agent.drivers.base import Driver, ExitResult, TaskContext
from orch.errors import DriverError

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POLL_INTERVAL = 0.02
REAP_TIMEOUT = 5.0          # after SIGKILL, how long we wait for the group to vanish
FOREIGN_POLL = 0.2          # polling a reattached process we are not the parent of


@dataclass
class ExecHandle:
    """A started task: its session leader, and the Popen when we are the parent."""
    pid: int
    pgid: int
    create_time: float | None = None
    popen: subprocess.Popen | None = None


def build_argv(config: dict) -> list[str]:
    """The argv for a task's `command` and `args`; raises DriverError."""
    command = config.get("command")
    args = config.get("args") or []
    if not isinstance(args, list) or not all(_scalar(a) for a in args):
        raise DriverError("config.args: must be a list of strings")
    args = [_text(a) for a in args]
    if isinstance(command, str) and command.strip():
        line = " ".join([command] + [shlex.quote(a) for a in args])
        return ["/bin/sh", "-c", line]
    if (isinstance(command, list) and command
            and all(isinstance(c, str) for c in command) and command[0]):
        return list(command) + args
    raise DriverError("config.command: must be a non-empty string or list of strings")


def build_env(ctx: TaskContext) -> dict[str, str]:
    """Base env (PATH, HOME, ORCH_*) with the task's `env` merged over it."""
    env = {"PATH": os.environ.get("PATH") or DEFAULT_PATH,
           "HOME": os.environ.get("HOME") or ctx.task_dir}
    env.update({k: str(v) for k, v in ctx.env.items()})
    extra = ctx.config.get("env") or {}
    if not isinstance(extra, dict):
        raise DriverError("config.env: must be an object of strings")
    for key, value in extra.items():
        if not key or "=" in key or "\0" in key or not _scalar(value):
            raise DriverError(f"config.env.{key}: must be a string")
        env[key] = _text(value)
    return env


def resolve_cwd(ctx: TaskContext) -> str:
    """`cwd` from the config (relative to the task dir), default the task dir."""
    cwd = ctx.config.get("cwd")
    if cwd is None or cwd == "":
        return ctx.task_dir
    if not isinstance(cwd, str):
        raise DriverError("config.cwd: must be a string")
    path = os.path.join(ctx.task_dir, cwd)
    if not os.path.isdir(path):
        raise DriverError(f"config.cwd: {cwd} is not a directory")
    return path


class ExecDriver(Driver):
    """Runs tasks as local process groups."""
    name = "exec"

    def __init__(self, *, poll_interval: float = POLL_INTERVAL):
        self._poll = poll_interval

    def start(self, ctx: TaskContext) -> ExecHandle:
        argv = build_argv(ctx.config)
        env = build_env(ctx)
        os.makedirs(ctx.task_dir, exist_ok=True)
        cwd = resolve_cwd(ctx)
        with open(ctx.stdout_path, "ab") as out, open(ctx.stderr_path, "ab") as err:
            try:
                popen = subprocess.Popen(
                    argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=err, start_new_session=True,
                    close_fds=True)
            except FileNotFoundError:
                raise DriverError(f"failed to start task: executable not found: {argv[0]}")
            except PermissionError:
                raise DriverError(f"failed to start task: permission denied: {argv[0]}")
            except OSError as exc:
                raise DriverError(f"failed to start task: {argv[0]}: {exc.strerror or exc}")
        log.debug("exec started alloc=%s task=%s pid=%d", ctx.alloc_id,
                  ctx.task_name, popen.pid)
        return ExecHandle(pid=popen.pid, pgid=popen.pid,
                          create_time=_create_time(popen.pid), popen=popen)

    def wait(self, handle: ExecHandle, timeout: float | None) -> ExitResult | None:
        if handle.popen is not None:
            try:
                code = handle.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
            result = _exit_result(code)
        else:
            if not self._wait_foreign(handle, timeout):
                return None
            result = ExitResult(exit_code=None, error=(
                "task exited while the agent was not its parent: exit status unknown"))
        # The group is the task: stragglers (background children) die with
        # the leader, as Nomad's executor does, so nothing leaks.
        _signal_group(handle.pgid, signal.SIGKILL)
        return result

    def stop(self, handle: ExecHandle, timeout: float) -> None:
        escaped = _descendants(handle.pid)
        _signal_group(handle.pgid, signal.SIGTERM)
        if not self._wait_group_gone(handle, timeout):
            log.info("task pgid=%d ignored SIGTERM for %.1fs: SIGKILL", handle.pgid, timeout)
            _signal_group(handle.pgid, signal.SIGKILL)
            self._wait_group_gone(handle, REAP_TIMEOUT)
        # Children that left the group (setsid) were snapshotted before the kill.
        for proc in escaped:
            try:
                proc.kill()
            except psutil.Error:
                pass

    def handle_to_json(self, handle: ExecHandle) -> dict:
        return {"driver": self.name, "pid": handle.pid, "pgid": handle.pgid,
                "create_time": handle.create_time}

    def recover(self, handle_json: dict) -> ExecHandle | None:
        try:
            pid = int(handle_json["pid"])
            pgid = int(handle_json.get("pgid") or pid)
        except (KeyError, TypeError, ValueError):
            return None
        created = handle_json.get("create_time")
        if not _alive(pid, created):
            return None
        return ExecHandle(pid=pid, pgid=pgid, create_time=created)

    def pid(self, handle: ExecHandle) -> int | None:
        return handle.pid

    def _wait_group_gone(self, handle: ExecHandle, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if handle.popen is not None:
                handle.popen.poll()     # reap the leader if no waiter holds it
            if not _group_alive(handle.pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(self._poll)

    def _wait_foreign(self, handle: ExecHandle, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while _alive(handle.pid, handle.create_time):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(FOREIGN_POLL)
        return True


def _exit_result(code: int) -> ExitResult:
    if code < 0:
        sig = -code
        return ExitResult(exit_code=128 + sig, signal=sig,
                          error=f"killed by signal {sig}")
    return ExitResult(exit_code=code)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("no permission to signal pgid=%d", pgid)


def _group_alive(pgid: int) -> bool:
    """Does the group have a member that is not a zombie?

    Orphaned members are reparented to init, which may reap them late (in a
    container, PID 1 is often not a real init); a zombie has no process left.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError as exc:
        if exc.errno != errno.EPERM:
            return False
    return any(state != "Z" for state in _group_states(pgid))


def _group_states(pgid: int) -> list[str]:
    """Process states ("R", "S", "Z", ...) of the members of a process group."""
    states = []
    if os.path.isdir("/proc/self"):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2:].split()
            if len(fields) > 2 and int(fields[2]) == pgid:
                states.append(fields[0].decode())
        return states
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                zombie = proc.info["status"] == psutil.STATUS_ZOMBIE
                states.append("Z" if zombie else "R")
        except (OSError, psutil.Error):
            continue
    return states


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _alive(pid: int, create_time: float | None) -> bool:
    """Is pid running and the same process (not a reused pid)?"""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 0.5
    except psutil.Error:
        return False


def _scalar(value) -> bool:
    return isinstance(value, (str, int, float, bool)) and not (
        isinstance(value, str) and "\0" in value)


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
