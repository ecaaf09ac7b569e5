"""Process groups and pids, as the exec driver sees them: signal, alive, members.

The process group is the unit of control (as in supervisor/circus); a pid
with its create time names one process, not whoever reuses the number.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable

import psutil

log = logging.getLogger(__name__)


def signal_group(pgid: int, sig: int) -> None:
    """Signal the group; one already gone is fine."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("no permission to signal pgid=%d", pgid)


def group_alive(pgid: int) -> bool:
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
    # The leader alive answers without a walk of /proc (3-4 ms of CPU at ~100
    # processes): a stop asks right after its signal, while it is dying.
    if _leader_state(pgid) not in (None, "Z"):
        return True
    return any(state != "Z" for state in group_states(pgid))


def _leader_state(pgid: int) -> str | None:
    """The state of the group's leader (pid ``pgid``); None if it is gone or
    left the group (its pid cannot be reused while the group exists)."""
    fields = _stat_fields(pgid)
    if fields is None or len(fields) < 3 or int(fields[2]) != pgid:
        return None
    return fields[0].decode()


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat's fields after the command name (state first)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def group_states(pgid: int) -> list[str]:
    """Process states ("R", "S", "Z", ...) of the members of a process group."""
    if os.path.isdir("/proc/self"):
        return [state for _, _, group, state in PROC_SCAN.rows() if group == pgid]
    states = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                zombie = proc.info["status"] == psutil.STATUS_ZOMBIE
                states.append("Z" if zombie else "R")
        except (OSError, psutil.Error):
            continue
    return states


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below pid, also those that left its group (setsid)."""
    if not os.path.isdir("/proc/self"):
        try:
            return psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            return []
    # The task's own subtree, not all of /proc: a stop asks this before its
    # signal, and a walk cost 3-4 ms of CPU beside the next task's start.
    children_of = _children if _HAS_CHILDREN_FILES else _walked_children()
    found, todo = [], list(children_of(pid))
    while todo:
        child = todo.pop()
        try:
            found.append(psutil.Process(child))
        except psutil.Error:
            continue  # gone since the walk: nothing to kill
        todo.extend(children_of(child))
    return found


def _walked_children() -> Callable[[int], list[int]]:
    """pid -> its children, from one walk of /proc."""
    children: dict[int, list[int]] = {}
    for child, parent, _, _ in PROC_SCAN.rows():
        children.setdefault(parent, []).append(child)
    return lambda parent: children.get(parent, [])


def _children(pid: int) -> list[int]:
    """pid's children, from each of its threads' ``children`` file."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []  # gone
    kids: list[int] = []
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids.extend(int(kid) for kid in f.read().split())
        except OSError:
            continue  # the thread (or the process) ended meanwhile
    return kids


# Linux with CONFIG_PROC_CHILDREN (most kernels); elsewhere, a walk of /proc.
_HAS_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


class ProcScan:
    """One walk of /proc shared by every thread that asks at about the same time.

    Stopping a large job waits for hundreds of process groups to empty, and
    each wait polled with a walk of all of /proc of its own: n stops of n
    tasks read n^2 stat files, and a purge of 300 allocations outlasted the
    server's push timeout. A caller gets the rows of a walk begun no earlier
    than its question (never an older view than it would see by walking
    itself); callers asking while such a walk runs share it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._walking_since: float | None = None  # monotonic start of the walk under way
        self._last: tuple[float, list[tuple[int, int, int, str]]] = (-1.0, [])

    def rows(self) -> list[tuple[int, int, int, str]]:
        """(pid, ppid, pgid, state) of every process."""
        asked = time.monotonic()
        with self._cond:
            while self._last[0] < asked:
                if self._walking_since is None:
                    break  # nobody walks: this thread does
                self._cond.wait()  # a walk under way: if it began after we asked, it serves
            else:
                return self._last[1]
            started = self._walking_since = time.monotonic()
        rows: list[tuple[int, int, int, str]] = []
        try:
            rows = _walk_proc()
        finally:
            with self._cond:
                self._walking_since = None
                self._last = (started, rows)
                self._cond.notify_all()
        return rows


def _walk_proc() -> list[tuple[int, int, int, str]]:
    rows = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None and len(fields) > 2:
            rows.append((int(name), int(fields[1]), int(fields[2]), fields[0].decode()))
    return rows


PROC_SCAN = ProcScan()


def proc_alive(proc: psutil.Process) -> bool:
    """Running, and not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def create_time(pid: int) -> float | None:
    """When pid started (None: gone), to tell it from a later one with its number.

    psutil's figure (boot time + the start time in /proc/<pid>/stat), read
    with one open and read: asked once per task start, where building a
    psutil.Process cost several times as much.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # After the command name, which may hold spaces and parentheses.
        ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])
        return psutil.boot_time() + ticks / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        pass
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def alive(pid: int, create_time: float | None) -> bool:
    """Is pid running and the same process (not a reused pid)?"""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 0.5
    except psutil.Error:
        return False
