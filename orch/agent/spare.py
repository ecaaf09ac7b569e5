"""Emptied allocation dirs kept for the next allocations, instead of rmdir and mkdir.

On this host's ext4 the two `mkdir` of an allocation (its dir and its task
dir) and their `rmdir` at garbage collection cost ~0.3-0.45 ms of kernel
CPU a batch job (inode allocation, the Orlov search under the TOPDIR
`allocs/`, the dirs' first blocks); renaming an emptied dir back into
`allocs/` costs ~0.05 ms (bench/README.md). An allocation dir is kept only
when nothing of its tasks can still use it: every run of every task ended
with its cgroups empty (`ExitResult.contained`), so no process left behind
(a daemon with its cwd there, an open log) would share the next job's dir.

    <data_dir>/spare/<n>/            an emptied allocation dir
    <data_dir>/spare/<n>/<task>/     its emptied task dirs (kept: the next
                                     allocation of the same task names reuses them)

A task's logs that stayed empty (a batch job that printed nothing) are left
in its task dir, not unlinked: the next task's supervisor opens its logs
with O_CREAT|O_APPEND, finds them there, and writes to them as to new ones.
An empty file holds no blocks, so this costs no truncate (keeping files that
held data did: bench/README.md, tenth round); it saves the agent two unlinks
and the supervisor two inode creates a job. Only a file exactly as a create
would make it is kept (a regular file, empty, one link, ours, the create's
mode); anything else goes as before.
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import threading

# Dirs kept: a burst's worth; beyond, collected ones are removed. A node's
# allocation dirs peak during a burst (in flight, not yet acknowledged, and
# the gc_keep newest): bench/e2e.py's 1,000 batch jobs on 3 agents peaked at
# ~190 a node, and a pool of 64 then overflowed at every burst's end (an
# rmtree per dir beyond it) and came up short in the next (a mkdir per dir
# missing). An empty pair of dirs holds two inodes and ~8 KB: 256 = ~2 MB.
SPARE_MAX = 256


class SpareDirs:
    """A pool of emptied allocation dirs, by their task dirs' names; thread-safe."""

    def __init__(self, path: str, limit: int = SPARE_MAX, keep_empty: tuple[str, ...] = ()):
        self.path = path
        self.limit = limit
        # Names of the files in task dirs kept when empty (the logs), and the
        # owner and mode a create gives them (0o644 under the umask), read
        # once; none kept if the mode is unknown.
        mode = _created_mode(0o644)
        self._keep = frozenset(keep_empty) if mode is not None else frozenset()
        self._created = (os.geteuid(), mode)
        # An earlier agent's spares are not trusted (it may have died emptying one).
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)
        self._lock = threading.Lock()
        self._by_tasks: dict[tuple[str, ...], list[str]] = {}
        self._count = 0
        self._names = itertools.count()

    def __len__(self) -> int:
        return self._count

    def take(self, path: str, tasks: tuple[str, ...]) -> bool:
        """Put a spare dir with exactly these task dirs at `path` (absent); False if none."""
        key = tuple(sorted(tasks))
        with self._lock:
            spares = self._by_tasks.get(key)
            if not spares:
                return False
            spare = spares.pop()
            self._count -= 1
        try:
            os.rename(spare, path)
            return True
        except OSError:  # `path` exists (an earlier agent's), or the spare is gone
            shutil.rmtree(spare, ignore_errors=True)
            return False

    def give(self, path: str) -> bool:
        """Empty the allocation dir at `path` and keep it; False if it was not
        kept (the pool is full, or it holds more than files in task dirs),
        and then it is left for the caller to remove."""
        with self._lock:
            if self._count >= self.limit:
                return False
            self._count += 1  # a place held while emptying, outside the lock
        try:
            tasks = _empty(path, self._keep, self._created)
            if tasks is not None:
                spare = os.path.join(self.path, str(next(self._names)))
                os.rename(path, spare)
                with self._lock:
                    self._by_tasks.setdefault(tasks, []).append(spare)
                return True
        except OSError:
            pass
        with self._lock:
            self._count -= 1
        return False


def _empty(
    path: str, keep: frozenset[str], created: tuple[int, int | None]
) -> tuple[str, ...] | None:
    """Remove the files of an allocation dir and of its task dirs, but those
    of a task dir named in `keep` that are as a create leaves them (above);
    the task dirs' names, or None if a task dir holds a dir (a task's own
    tree: the caller removes the whole)."""
    tasks = []
    with os.scandir(path) as entries:
        listed = list(entries)
    for entry in listed:
        if not entry.is_dir(follow_symlinks=False):  # a symlink goes, not its target
            os.unlink(entry.path)
            continue
        with os.scandir(entry.path) as entries:
            inner = list(entries)
        if any(e.is_dir(follow_symlinks=False) for e in inner):
            return None
        for e in inner:
            if not (e.name in keep and _as_created(e, created)):
                os.unlink(e.path)
        tasks.append(entry.name)
    return tuple(sorted(tasks))


def _as_created(entry: os.DirEntry, created: tuple[int, int | None]) -> bool:
    """An empty regular file of ours with one link and the create's mode: what
    the next task's O_CREAT would have made (no one else may see it: no
    other link; no mode or ACL mask a task changed)."""
    st = entry.stat(follow_symlinks=False)
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_size == 0
        and st.st_nlink == 1
        and (st.st_uid, stat.S_IMODE(st.st_mode)) == created
    )


def _created_mode(requested: int) -> int | None:
    """The mode a file created with `requested` gets under this process's
    umask (inherited by the task supervisors); None where /proc does not say.

    Read from /proc, not by setting the umask to learn it: that would
    change it for a moment under every other thread's creates."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return requested & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None
