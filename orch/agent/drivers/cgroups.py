"""Per-task cgroups for exec tasks: a memory limit and a CPU weight.

Task cgroups are made under the agent's own cgroup (`<own>/orch/<alloc>-<task>`),
so whatever limits the agent itself lives under still hold for its tasks.
v2 is used when `/sys/fs/cgroup/cgroup.controllers` offers `memory` and the
controllers can be delegated to our subtree; else v1 when its `memory`
hierarchy is mounted and writable. Neither (no permission, a v2 cgroup that
holds processes and so cannot delegate): `detect()` says why, and the exec
driver falls back to the supervisor's RSS watchdog.

A task's cgroups outlive it in a small pool: the supervisor keeps them when
the task ends with them empty and not OOM-killed (`cgroups_kept` in its run
record), the driver hands them back (`release`), and the next task with the
same limits joins them as they are. Making and removing a cgroup (a mkdir,
its limit writes, an rmdir, per controller) is the dearest file-system work
of a short task. The dir's name keeps its first task's: nothing reads it.

An agent that is killed leaves its idle pool behind (up to POOL_MAX per
controller). Where the agent has a data dir, its cgroups' names start with a
tag of that dir (`owner`), and the next agent of the same dir, the only one
that can hold it, removes every empty cgroup with its tag when it starts;
others' empty cgroups go only once older than STALE_AFTER, since agents of
one host may share a parent and one may be starting a task in one right now.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from orch.agent.tasksup.limits import CgroupFiles

log = logging.getLogger(__name__)

SUBDIR = "orch"
STALE_AFTER = 600.0  # seconds: an empty task cgroup this old is a leftover
# Idle task cgroups kept for each (memory, shares): as many as the agent
# ever had out at once for those limits (a batch arrives in bursts, and a
# burst larger than the pool made and removed the excess every time), at
# least POOL_PER_LIMITS, at most POOL_PER_LIMITS_MAX. The pool so never holds
# more cgroups than the node held while those tasks ran.
POOL_PER_LIMITS = 16
POOL_PER_LIMITS_MAX = 128
POOL_MAX = 256  # idle task cgroups kept in all
# Reused only while younger than this: another agent's sweep (STALE_AFTER,
# by mtime, which joining does not change) must never find one idle.
POOL_MAX_AGE = STALE_AFTER / 2
# Memory still charged to an ended task's cgroup (page cache, tmpfs files)
# would count against the next task's limit: a cgroup holding more than this
# share of its limit (or than POOL_MAX_CHARGE) is removed, not reused.
POOL_CHARGE_SHARE = 4
POOL_MAX_CHARGE = 16 * 1024 * 1024


@dataclass(frozen=True)
class TaskCgroup:
    """What the supervisor needs: files to join, OOM counters, dirs to remove,
    and the agent's own cgroups (its home: it joins the task's to start it)."""

    procs: tuple[str, ...]
    oom_files: tuple[str, ...]
    dirs: tuple[str, ...]
    home_procs: tuple[str, ...] = ()


def cpu_shares(mhz: int) -> int:
    """CPU weight for a task's MHz: 1000 MHz is docker's default 1024 shares."""
    return max(2, mhz * 1024 // 1000)


def cpu_weight(shares: int) -> int:
    """cgroup v1 shares to a v2 weight (the mapping runc and systemd use)."""
    return max(1, min(10000, 1 + (shares - 2) * 9999 // 262142))


class Cgroups:
    """Creates task cgroups where the agent may; `version` is None otherwise."""

    def __init__(
        self,
        root: str = "/sys/fs/cgroup",
        proc: str = "/proc/self",
        now=time.time,
        clock=time.monotonic,
        owner: str = "",
    ):
        self._root, self._proc, self._now, self._clock = root, proc, now, clock
        # Our cgroups' names start with this (an earlier agent of our data
        # dir made those that do and we did not); "" for none.
        self._owned = f"{owner}-" if owner else ""
        self._rmdir = os.rmdir  # tests replace it: a fake cgroup dir holds plain files
        self._lock = threading.Lock()
        self._detected = False
        self.version: str | None = None
        self.reason = ""
        self._parents: dict[str, str] = {}  # controller -> our "orch" cgroup dir
        self._files: dict[str, bool] = {}  # optional files of task cgroups: present?
        # (memory MB, shares) -> idle task cgroups and when each was made
        self._pool: dict[tuple[int, int], list[tuple[TaskCgroup, float]]] = {}
        # first dir -> (limits, made at, group) of each cgroup handed out for a task
        self._out: dict[str, tuple[tuple[int, int], float, TaskCgroup]] = {}
        self._idle_dirs: set[str] = set()  # first dir of each pooled cgroup
        self._out_count: dict[tuple[int, int], int] = {}  # handed out now, per limits
        self._peak: dict[tuple[int, int], int] = {}  # most handed out at once
        # The two files read per task of a pooled cgroup (empty? charged?),
        # kept open: a cgroupfs path walk is the slow kind (CgroupFiles).
        self._kept_files = CgroupFiles(max_open=2 * POOL_MAX)
        self._files_lock = threading.Lock()

    def detect(self) -> str | None:
        """ "v2", "v1" or None (then `reason` says why); probed once."""
        with self._lock:
            if not self._detected:
                self._detected = True
                try:
                    self.version = self._detect_v2() or self._detect_v1()
                except OSError as exc:
                    self.version, self.reason = None, f"cgroups unusable: {exc}"
                if self.version:
                    log.info("exec tasks limited through cgroup %s", self.version)
                    self._sweep()
                else:
                    log.info(
                        "no writable cgroup memory controller (%s): exec memory "
                        "limits enforced by an RSS watchdog",
                        self.reason,
                    )
            return self.version

    def create(
        self, name: str | Callable[[], str], memory_mb: int, shares: int
    ) -> TaskCgroup | None:
        """A task's cgroup with its limits written; None where cgroups are unusable.

        `name` may be a function, called only when a new cgroup is made."""
        version = self.detect()
        if version is None:
            return None
        key = (memory_mb, shares)
        group = self._reuse(key)
        if group is not None:
            return group
        if callable(name):
            name = name()
        name = self._owned + name
        try:
            if version == "v2":
                group = self._create_v2(name, memory_mb, shares)
            else:
                group = self._create_v1(name, memory_mb, shares)
        except OSError as exc:
            log.warning("cannot create cgroup for %s: %s; using the RSS watchdog", name, exc)
            return None
        with self._lock:
            self._hand_out(key, self._clock(), group)
        return group

    def _hand_out(self, key: tuple[int, int], made: float, group: TaskCgroup) -> None:
        """Note `group` as out for a task (the lock held)."""
        self._out[group.dirs[0]] = (key, made, group)
        count = self._out_count.get(key, 0) + 1
        self._out_count[key] = count
        if count > self._peak.get(key, 0):
            self._peak[key] = count

    def _take_back(self, first_dir: str) -> tuple[tuple[int, int], float, TaskCgroup] | None:
        """What was handed out under `first_dir`, no longer out (the lock held)."""
        out = self._out.pop(first_dir, None)
        if out is not None:
            self._out_count[out[0]] -= 1
        return out

    def release(self, dirs: list[str], kept: bool = True) -> None:
        """An ended task's cgroups. Kept (empty) by the supervisor: pooled for
        the next task with the same limits, or removed; not kept: it removes
        them. Idempotent: a run's end may be seen twice; kept cgroups this
        agent did not hand out (an earlier agent's) are removed."""
        if not dirs:
            return
        if not self._detected:  # a reattached run, before our first create: learn our parents
            self.detect()
        with self._lock:
            if dirs[0] in self._idle_dirs:
                return  # pooled already
            out = self._take_back(dirs[0])
            if not kept:  # the supervisor removes them
                with self._files_lock:
                    self._kept_files.forget_dirs(dirs)
                return
            if out is not None:
                key, made, group = out
                idle = self._pool.setdefault(key, [])
                if (
                    len(idle) < self._pool_limit(key)
                    and len(self._idle_dirs) < POOL_MAX
                    and self._clock() - made < POOL_MAX_AGE
                    and self._reusable(group, key[0])
                ):
                    idle.append((group, made))
                    self._idle_dirs.add(group.dirs[0])
                    return
            # Only ever a task cgroup: the paths came from a run record, a
            # file in a dir the task may write to.
            ours = set(self._parents.values())
            dirs = [d for d in dirs if os.path.dirname(d) in ours]
        self._remove(dirs)

    def forget(self, dirs: list[str]) -> None:
        """Cgroups handed out for a start that did not happen: removed."""
        with self._lock:
            if dirs:
                self._take_back(dirs[0])
        self._remove(dirs)

    def drain(self) -> None:
        """The agent stops: remove every pooled cgroup, and those handed out
        whose task is over (kept for us, never handed back: the kernel
        refuses to remove the others, which hold running tasks)."""
        with self._lock:
            groups = [g for idle in self._pool.values() for g, _ in idle]
            groups += [g for _, _, g in self._out.values()]
            self._pool.clear()
            self._idle_dirs.clear()
            self._out.clear()
            self._out_count.clear()
        for group in groups:
            self._remove(list(group.dirs))

    def _reuse(self, key: tuple[int, int]) -> TaskCgroup | None:
        """A pooled cgroup with these limits, checked empty and young; else None."""
        while True:
            with self._lock:
                idle = self._pool.get(key)
                if not idle:
                    return None
                group, made = idle.pop()
                self._idle_dirs.discard(group.dirs[0])
            # The memory cgroup's list alone: a task's processes are in all of its cgroups.
            if self._clock() - made < POOL_MAX_AGE and self._read(group.procs[0]) == b"":
                with self._lock:
                    self._hand_out(key, made, group)
                return group
            self._remove(list(group.dirs))

    def _pool_limit(self, key: tuple[int, int]) -> int:
        """Idle cgroups kept for these limits: the most ever out at once, bounded."""
        return min(POOL_PER_LIMITS_MAX, max(POOL_PER_LIMITS, self._peak.get(key, 0)))

    def _reusable(self, group: TaskCgroup, memory_mb: int) -> bool:
        """Not holding memory the next task would be charged for (the
        supervisor kept it empty; `_reuse` checks that again)."""
        usage = "memory.current" if self.version == "v2" else "memory.usage_in_bytes"
        text = self._read(os.path.join(group.dirs[0], usage))
        try:
            charged = int(text or "")
        except ValueError:
            return False
        limit = memory_mb * 1024 * 1024 // POOL_CHARGE_SHARE if memory_mb > 0 else POOL_MAX_CHARGE
        return charged <= min(limit, POOL_MAX_CHARGE)

    def _read(self, path: str) -> bytes | None:
        with self._files_lock:
            return self._kept_files.read(path)

    def _remove(self, dirs: list[str]) -> None:
        with self._files_lock:
            self._kept_files.forget_dirs(dirs)
        for path in dirs:
            try:
                self._rmdir(path)
            except OSError:
                pass

    def _sweep(self) -> int:
        """Remove empty task cgroups left by killed agents and supervisors.

        Those named with our tag at any age: an earlier agent of our data dir
        made them (we have made none yet), and no other agent holds that dir.
        Others' only once old: a young empty cgroup may belong to a task
        another agent is starting right now (agents of one host may share a
        parent).
        """
        removed = 0
        cutoff = self._now() - STALE_AFTER
        owned = self._owned
        for parent in set(self._parents.values()):
            try:
                names = os.listdir(parent)
            except OSError:
                continue
            for name in names:
                path = os.path.join(parent, name)
                try:
                    if not os.path.isdir(path):
                        continue
                    if not (owned and name.startswith(owned)) and os.stat(path).st_mtime > cutoff:
                        continue
                    if (_read(os.path.join(path, "cgroup.procs")) or "").strip():
                        continue
                    os.rmdir(path)
                    removed += 1
                except OSError:
                    continue
        if removed:
            log.info("removed %d stale task cgroups", removed)
        return removed

    # -- v2 ------------------------------------------------------------------

    def _detect_v2(self) -> str | None:
        controllers = _read(os.path.join(self._root, "cgroup.controllers"))
        if controllers is None:
            self.reason = "no cgroup v2 at " + self._root
            return None
        if "memory" not in controllers.split():
            self.reason = "cgroup v2 without the memory controller"
            return None
        own = self._own_path(lambda ctrls: ctrls == "")
        base = os.path.join(self._root, own.lstrip("/"))
        wanted: list[str] = [c for c in ("memory", "cpu") if c in controllers.split()]
        parent = os.path.join(base, SUBDIR)
        try:
            _enable(base, wanted)
            os.makedirs(parent, exist_ok=True)
            _enable(parent, wanted)
        except OSError as exc:
            # A non-root cgroup holding processes cannot hand controllers down.
            self.reason = f"cannot delegate {'+'.join(wanted)} under {base}: {exc.strerror}"
            return None
        self._parents = {c: parent for c in wanted}
        return "v2"

    def _create_v2(self, name: str, memory_mb: int, shares: int) -> TaskCgroup:
        path = os.path.join(self._parents["memory"], name)
        _mkdir(path)
        if memory_mb > 0:
            _write(os.path.join(path, "memory.max"), str(memory_mb * 1024 * 1024))
            swap = os.path.join(path, "memory.swap.max")
            if self._has(swap):  # swap counts against the limit, as in docker
                _write(swap, "0")
        if shares > 0 and "cpu" in self._parents:
            _write(os.path.join(path, "cpu.weight"), str(cpu_weight(shares)))
        return TaskCgroup(
            procs=(os.path.join(path, "cgroup.procs"),),
            oom_files=(os.path.join(path, "memory.events"),),
            dirs=(path,),
            home_procs=(self._home("memory"),),
        )

    # -- v1 ------------------------------------------------------------------

    def _detect_v1(self) -> str | None:
        mounts = self._v1_mounts()
        if "memory" not in mounts:
            self.reason = (
                self.reason + "; " if self.reason else ""
            ) + "no cgroup v1 memory hierarchy mounted"
            return None
        parents = {}
        for controller, mount in mounts.items():
            if controller not in ("memory", "cpu"):
                continue
            own = self._own_path(lambda ctrls, c=controller: c in ctrls.split(","))
            parent = os.path.join(mount, own.lstrip("/"), SUBDIR)
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                if controller == "memory":
                    self.reason = f"cannot write cgroup v1 memory at {parent}: {exc.strerror}"
                    return None
                continue
            if not os.access(parent, os.W_OK):
                if controller == "memory":
                    self.reason = f"no write access to {parent}"
                    return None
                continue
            parents[controller] = parent
        self._parents = parents
        return "v1"

    def _create_v1(self, name: str, memory_mb: int, shares: int) -> TaskCgroup:
        mem = os.path.join(self._parents["memory"], name)
        _mkdir(mem)
        procs, dirs = [os.path.join(mem, "cgroup.procs")], [mem]
        homes = [self._home("memory")]
        if memory_mb > 0:
            limit = str(memory_mb * 1024 * 1024)
            _write(os.path.join(mem, "memory.limit_in_bytes"), limit)
            memsw = os.path.join(mem, "memory.memsw.limit_in_bytes")
            if self._has(memsw):  # after the plain limit: memsw may not be lower
                _write(memsw, limit)
        if shares > 0 and "cpu" in self._parents:
            cpu = os.path.join(self._parents["cpu"], name)
            _mkdir(cpu)
            _write(os.path.join(cpu, "cpu.shares"), str(shares))
            procs.append(os.path.join(cpu, "cgroup.procs"))
            dirs.append(cpu)
            homes.append(self._home("cpu"))
        return TaskCgroup(
            procs=tuple(procs),
            oom_files=(os.path.join(mem, "memory.oom_control"),),
            dirs=tuple(dirs),
            home_procs=tuple(homes),
        )

    def _has(self, path: str) -> bool:
        """Does a task cgroup have this file? Asked of the first, then remembered:
        every task cgroup of a hierarchy has the same files."""
        kind = os.path.basename(path)
        known = self._files.get(kind)
        if known is None:
            known = self._files[kind] = os.path.exists(path)
        return known

    def _home(self, controller: str) -> str:
        """cgroup.procs of the agent's own cgroup (the parent of our "orch" dir)."""
        return os.path.join(os.path.dirname(self._parents[controller]), "cgroup.procs")

    def _v1_mounts(self) -> dict[str, str]:
        """controller -> mount point of its v1 hierarchy."""
        mounts: dict[str, str] = {}
        text = _read(os.path.join(self._proc, "mounts")) or ""
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 4 or fields[2] != "cgroup":
                continue
            for option in fields[3].split(","):
                if option in ("memory", "cpu"):
                    mounts.setdefault(option, fields[1])
        return mounts

    def _own_path(self, matches) -> str:
        """Our cgroup path in the hierarchy whose controller list `matches`."""
        text = _read(os.path.join(self._proc, "cgroup")) or ""
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3 and matches(parts[1]):
                return parts[2]
        return "/"


def _enable(path: str, controllers: list[str]) -> None:
    current = (_read(os.path.join(path, "cgroup.subtree_control")) or "").split()
    missing = [c for c in controllers if c not in current]
    if missing:
        _write(os.path.join(path, "cgroup.subtree_control"), " ".join(f"+{c}" for c in missing))


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _mkdir(path: str) -> None:
    """A task's cgroup dir (its parent exists: made once at detection)."""
    try:
        os.mkdir(path)
    except FileExistsError:
        pass


def _write(path: str, value: str) -> None:
    # One write(2) without the io stack: a cgroup file takes its value whole.
    # (The flags of open(path, "w"): the kernel ignores them on cgroupfs.)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
