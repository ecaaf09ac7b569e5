"""Memory limits of supervised tasks: their cgroups, or an RSS watchdog without them.

A task in its cgroups (joined by the supervisor just before the start) is
held by the kernel; afterwards the supervisor only reads the OOM count and
removes the cgroups. Without cgroups, the supervisor samples the RSS of the
task's process tree from /proc. Stdlib only: the supervisor imports it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def join_targets(procs_file: str) -> list[tuple[str, bytes]]:
    """What to write where to move this process into a cgroup: (path, bytes), best first.

    Under cgroup v1, "0" written to the `tasks` file beside `cgroup.procs`
    moves the calling thread alone, and the kernel then skips the global
    threadgroup lock a write to `cgroup.procs` takes; that lock waits for an
    RCU grace period unless another write took it just before: 7 ms median,
    up to 20 ms, on this host when starts are a moment apart, during which
    the supervisor starts nothing (bench/README.md). A child is born in the
    cgroups of the thread that forks it, so the task lands where it did.
    v2 has no `tasks` file: `cgroup.procs` there.
    """
    targets = [(procs_file, str(os.getpid()).encode())]
    if procs_file.endswith("/cgroup.procs"):
        targets.insert(0, (procs_file[: -len("cgroup.procs")] + "tasks", b"0"))
    return targets


def _first_present(procs_file: str, use: Callable[[str, bytes], T]) -> T:
    """`use(path, data)` on the first of `join_targets` whose file exists."""
    *preferred, (last_path, last_data) = join_targets(procs_file)
    for path, data in preferred:
        try:
            return use(path, data)
        except FileNotFoundError:  # v2: no tasks file
            pass
    return use(last_path, last_data)


def open_join(procs_file: str) -> tuple[int, bytes]:
    """An fd that moves this process into a cgroup, and what to write to it (`join_targets`)."""
    return _first_present(
        procs_file, lambda path, data: (os.open(path, os.O_WRONLY | os.O_CLOEXEC), data)
    )


class CgroupFiles:
    """Task cgroup files kept open from one task to the next (LRU, bounded).

    The agent's pool hands the same cgroups to task after task, and each
    start and end opened four of their files (two `tasks` to join, the OOM
    count, `cgroup.procs`). A path through cgroupfs cannot take the kernel's
    lock-free lookup (kernfs revalidates every dentry), so each open walked
    its seven components the slow way. A kept fd of a cgroup removed since
    fails (ENODEV); it is dropped and the path opened again, which then
    fails as it always did.
    """

    def __init__(self, max_open: int = 512):
        self.max_open = max_open
        # Keyed by (path, mode): on v2 the same `cgroup.procs` is written to
        # join and read to see the cgroup empty; one fd for both would fail
        # the other way each time and be closed and opened again.
        self._fds: OrderedDict[tuple[str, int], int] = OrderedDict()

    def join(self, procs_files: list[str]) -> None:
        """Move this (single-threaded) process into these cgroups (see `join_targets`)."""
        for path in procs_files:
            if (path, os.O_WRONLY) in self._fds:  # v2, kept: no tasks file to try again
                self.write(path, str(os.getpid()).encode())
            else:
                _first_present(path, self.write)

    def write(self, path: str, data: bytes) -> None:
        """`data` in one write to `path`; raises OSError."""
        for retry in (False, True):
            fd = self._fd(path, os.O_WRONLY)
            try:
                os.write(fd, data)
                return
            except OSError:
                self.forget([path])
                if retry:
                    raise

    def read(self, path: str) -> bytes | None:
        """A cgroup file's bytes, None if it cannot be read."""
        for _ in range(2):
            try:
                fd = self._fd(path, os.O_RDONLY)
            except OSError:
                return None
            try:
                return _pread_all(fd)
            except OSError:
                self.forget([path])
        return None

    def forget(self, paths: list[str]) -> None:
        for path in paths:
            for mode in (os.O_RDONLY, os.O_WRONLY):
                fd = self._fds.pop((path, mode), None)
                if fd is not None:
                    os.close(fd)

    def forget_dirs(self, dirs: list[str]) -> None:
        """Close what is kept open in these cgroups (they are being removed)."""
        if dirs:
            gone = set(dirs)
            self.forget(list({p for p, _ in self._fds if os.path.dirname(p) in gone}))

    def _fd(self, path: str, flags: int) -> int:
        key = (path, flags)
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd
        fd = os.open(path, flags | os.O_CLOEXEC)
        self._fds[key] = fd
        if len(self._fds) > self.max_open:
            _, oldest = self._fds.popitem(last=False)
            os.close(oldest)
        return fd


def _pread_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, 65536, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def remove_cgroups(dirs: list[str]) -> None:
    """Cgroups no process ever joined: empty, so removable at once."""
    for path in dirs:
        try:
            os.rmdir(path)
        except OSError:
            pass


def cgroup_oom(paths: list[str], read=None) -> bool:
    """Did the kernel OOM-kill in the task's memory cgroup? (v2 memory.events, v1 oom_control)"""
    for path in paths:
        data = (read or read_file)(path)
        if data is None:
            continue
        for line in data.splitlines():
            key, _, value = line.partition(b" ")
            try:
                if key == b"oom_kill" and int(value) > 0:
                    return True
            except ValueError:
                continue
    return False


def process_tree() -> dict[int, list[int]]:
    """parent pid -> child pids, from one pass over /proc."""
    parents: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return parents
    for name in names:
        if not name.isdigit():
            continue
        stat = read_file(f"/proc/{name}/stat")
        if stat is None:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            parents.setdefault(int(fields[1]), []).append(int(name))
    return parents


def tree_rss(pid: int, parents: dict[int, list[int]]) -> int:
    """Bytes resident in the task and every descendant."""
    total, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        statm = read_file(f"/proc/{current}/statm")
        if statm is not None:
            fields = statm.split()
            if len(fields) > 1:
                total += int(fields[1]) * PAGE_SIZE
        todo.extend(parents.get(current, ()))
    return total


def read_file(path: str) -> bytes | None:
    """A small file's bytes (/proc, cgroup files); None if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)
