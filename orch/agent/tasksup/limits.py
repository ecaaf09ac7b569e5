"""Memory limits of supervised tasks: their cgroups, or an RSS watchdog without them.

A task in its cgroups (joined by the supervisor just before the start) is
held by the kernel; afterwards the supervisor only reads the OOM count and
removes the cgroups. Without cgroups, the supervisor samples the RSS of the
task's process tree from /proc. Stdlib only: the supervisor imports it.
"""

from __future__ import annotations

import os

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def join_cgroups(procs_files: list[str]) -> None:
    """Move this process into the cgroups whose cgroup.procs files are given."""
    for path in procs_files:
        fd, data = open_join(path)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def open_join(procs_file: str) -> tuple[int, bytes]:
    """An fd that moves this (single-threaded) process into a cgroup, and what to write to it.

    Under cgroup v1, "0" written to the `tasks` file beside `cgroup.procs`
    moves the calling thread alone, and the kernel then skips the global
    threadgroup lock a write to `cgroup.procs` takes; that lock waits for an
    RCU grace period unless another write took it just before: 7 ms median,
    up to 20 ms, on this host when starts are a moment apart, during which
    the supervisor starts nothing (bench/README.md). A child is born in the
    cgroups of the thread that forks it, so the task lands where it did.
    v2 has no `tasks` file: `cgroup.procs` there.
    """
    if procs_file.endswith("/cgroup.procs"):
        tasks = procs_file[: -len("cgroup.procs")] + "tasks"
        try:
            return os.open(tasks, os.O_WRONLY | os.O_CLOEXEC), b"0"
        except FileNotFoundError:
            pass
    return os.open(procs_file, os.O_WRONLY | os.O_CLOEXEC), str(os.getpid()).encode()


def remove_cgroups(dirs: list[str]) -> None:
    """Cgroups no process ever joined: empty, so removable at once."""
    for path in dirs:
        try:
            os.rmdir(path)
        except OSError:
            pass


def cgroup_oom(paths: list[str]) -> bool:
    """Did the kernel OOM-kill in the task's memory cgroup? (v2 memory.events, v1 oom_control)"""
    for path in paths:
        data = read_file(path)
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
