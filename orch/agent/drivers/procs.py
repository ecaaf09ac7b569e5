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
    return any(state != "Z" for state in group_states(pgid))


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
    children: dict[int, list[int]] = {}
    for child, parent, _, _ in PROC_SCAN.rows():
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        try:
            found.append(psutil.Process(child))
        except psutil.Error:
            continue  # gone since the walk: nothing to kill
        todo.extend(children.get(child, ()))
    return found


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
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2:
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
