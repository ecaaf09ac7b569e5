"""The task supervisor process: one per agent, it starts, reaps and records exec tasks.

As runit or containerd's shim, but one per node: the agent's exec driver
starts it (a fresh interpreter importing only this package, so it is small
and single-threaded) in a session of its own, and talks to it over a Unix
socket in the abstract namespace named after the agent's data dir
(`protocol.py`: one JSON object per line). It outlives the agent: `kill -9`
of the agent leaves it and the tasks running, and the restarted agent
connects to it again by the same name. A supervisor that finds another
already bound to its name leaves at once; one with no agent connected and no
task left leaves too.

Each start of a task is one run with its own record (`records.py`), claimed
before the task starts. When the task ends, the supervisor kills what is
left of its process group (the unit the agent signals), reaps it, kills
what is left in its cgroups (daemons that left the group), and appends how
it ended before saying so.

Memory limit (`limits.py`): a task in its cgroups (`cgroup_procs`, joined
before exec) is held by the kernel; the supervisor only reads the OOM count
afterwards and removes the cgroups, or, where the agent asked
(`cgroup_keep`) and is still connected, keeps them for its next task when
they are empty and saw no OOM kill (`cgroups_kept` in the record: the
agent's pool, `drivers/cgroups.py`). Without cgroups (`watchdog_mb`), the
supervisor samples the RSS of each such task's process tree and SIGKILLs
the group past the limit.

    python -S -c "<path setup>; from orch.agent.tasksup.server import main; main()" NAME

Over 400 lines, kept whole: the supervisor is one event loop over its
runs, and splitting the loop from what it does at a start and an end would
only pass its state around.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time

from orch import fastjson
from orch.agent.tasksup.limits import (
    CgroupFiles,
    cgroup_oom,
    open_join,
    process_tree,
    read_file,
    remove_cgroups,
    tree_rss,
)
from orch.agent.tasksup.protocol import (
    IN_USE,
    READY,
    encode,
    receive,
    socket_address,
    take_lines,
)
from orch.agent.tasksup.records import (
    append,
    append_fd,
    claim,
    exit_doc,
    line_of,
    start_line,
    write_all,
)
from orch.agent.tasksup.spawn import no_inherited_fds, open_cwd, posix_spawn_task

WATCHDOG_INTERVAL = 0.2  # seconds between RSS samples without cgroups
RMDIR_RETRY = 0.05  # a cgroup may stay busy for a moment after its last kill
RMDIR_GIVE_UP = 5.0
LONELY_EXIT = 10.0  # started, but no agent ever connected: leave
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TICK_NS = 1_000_000_000 // CLOCK_TICKS  # as the kernel's nsec_to_clock_t rounds
# Run records kept open from the claim to the exit line (one open and one
# path walk fewer a run); beyond this many running tasks the rest are
# reopened by path at their end, so a node of long services keeps its fds.
RECORD_FDS_MAX = 256


class Run:
    """One started task: what the supervisor must do when it ends."""

    __slots__ = (
        "popen",
        "pid",
        "record_path",
        "record_fd",
        "watchdog_bytes",
        "oom",
        "oom_files",
        "cgroup_dirs",
        "cgroup_procs",
        "keeper",
    )

    def __init__(
        self,
        pid: int,
        popen: subprocess.Popen | None,
        spec: dict,
        keeper: socket.socket | None,
        record_fd: int | None = None,
    ):
        # A Popen (a task started as another user) is kept until reaped (by
        # us, not by subprocess: see _reap), so that subprocess never waits
        # for it behind our back.
        self.popen = popen
        self.pid = pid
        self.record_path = spec["record_path"]
        self.record_fd = record_fd  # the claimed record, for the exit line
        self.watchdog_bytes = (spec.get("watchdog_mb") or 0) * 1024 * 1024
        self.oom = False
        self.oom_files = spec.get("cgroup_oom_files") or []
        self.cgroup_dirs = spec.get("cgroup_dirs") or []
        self.cgroup_procs = spec.get("cgroup_procs") or []
        # The agent connection that will take the cgroups back, if it asked to.
        self.keeper = keeper if spec.get("cgroup_keep") else None


class Supervisor:
    """The event loop: agent connections, SIGCHLD, the watchdog timer."""

    def __init__(self, listener: socket.socket):
        self.listener = listener
        self.clients: dict[int, tuple[socket.socket, bytearray]] = {}
        # Lines for each agent, sent once a loop turn: the answers to a
        # batch of starts and the ends reaped meanwhile wake the agent's
        # reader once, not once a line.
        self.outbox: dict[socket.socket, bytearray] = {}
        self.runs: dict[int, Run] = {}
        self.rmdirs: list[tuple[float, str]] = []  # (give up at, cgroup dir)
        self.ever_connected = False
        self.started = time.monotonic()
        self.pid = os.getpid()  # each record's first line: a syscall a start saved
        # Opened once, not per start: each open is a syscall on the start path.
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        # Where the supervisor goes back to after starting a task in its cwd
        # (O_PATH: a cwd it may not list is still one to come back to).
        self.home_dir = open_cwd()
        self.record_fds = 0  # runs holding their record open (record_fds_max)
        self.record_fds_max = _fd_budget(RECORD_FDS_MAX)
        self.homes = HomeCgroups()
        self.files = CgroupFiles(_fd_budget(512))
        self.boot_time = _boot_time()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def serve(self) -> None:
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select via the fd
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        next_watch = time.monotonic() + WATCHDOG_INTERVAL
        while True:
            self._reap()  # also what arrived before the handler was set
            self._flush()
            if self._should_leave():
                return
            timeout = None
            now = time.monotonic()
            if any(r.watchdog_bytes for r in self.runs.values()):
                if now >= next_watch:
                    self._watchdog()
                    next_watch = now + WATCHDOG_INTERVAL
                timeout = max(0.0, next_watch - now)
            if self.rmdirs:
                self._retry_rmdirs(now)
                timeout = RMDIR_RETRY if timeout is None else min(timeout, RMDIR_RETRY)
            if not self.ever_connected:
                timeout = 1.0 if timeout is None else min(timeout, 1.0)
            fds: list[socket.socket | int] = [
                self.listener,
                self.wake_r,
                *(c for c, _ in self.clients.values()),
            ]
            try:
                readable, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                continue
            for fd in readable:
                if fd is self.listener:
                    self._accept()
                elif isinstance(fd, int):  # the wake pipe, the only plain fd
                    _drain(self.wake_r)
                else:
                    self._read(fd)

    def _should_leave(self) -> bool:
        if self.runs or self.rmdirs:
            return False
        if self.clients:
            return False
        return self.ever_connected or time.monotonic() - self.started > LONELY_EXIT

    # -- agents ---------------------------------------------------------------

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        # Only our own user (or root) may ask us to start processes.
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        uid = int.from_bytes(creds[4:8], sys.byteorder)
        if uid not in (0, os.getuid()):
            conn.close()
            return
        self.ever_connected = True
        self.clients[conn.fileno()] = (conn, bytearray())

    def _read(self, conn: socket.socket) -> None:
        _, buf = self.clients[conn.fileno()]
        data = receive(conn)
        if not data:
            self._drop(conn)
            return
        buf += data
        for line in take_lines(buf):
            request: dict = {}
            try:
                request = fastjson.loads(line)
                reply = self._start(request["start"], conn)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                reply = {"error": f"bad request to the task supervisor: {exc!r}"}
            except OSError as exc:  # e.g. the task dir was removed meanwhile
                reply = {"error": f"task supervisor could not start the task: {exc}"}
            reply["id"] = request.get("id") if isinstance(request, dict) else None
            self._send(conn, reply)

    def _send(self, conn: socket.socket, doc: dict | bytes) -> None:
        """Queue a line (a dict, or its encoded line) for `conn`: `_flush`
        sends it before the loop waits again."""
        out = self.outbox.get(conn)
        if out is None:
            out = self.outbox[conn] = bytearray()
        out += doc if isinstance(doc, bytes) else encode(doc)

    def _flush(self) -> None:
        outbox, self.outbox = self.outbox, {}
        for conn, data in outbox.items():
            if conn.fileno() < 0:  # dropped meanwhile
                continue
            try:
                conn.sendall(data)
            except OSError:
                self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self.clients.pop(conn.fileno(), None)
        self.outbox.pop(conn, None)
        conn.close()

    def _broadcast(self, doc: dict | bytes) -> None:
        for conn, _ in list(self.clients.values()):
            self._send(conn, doc)

    # -- starting -------------------------------------------------------------

    def _start(self, spec: dict, conn: socket.socket | None = None) -> dict:
        record = spec["record_path"]
        fd = claim(record, self.pid)
        if fd is None:
            # The run was started already (by this supervisor, for an agent
            # that died before saving its handle): never twice.
            remove_cgroups(spec.get("cgroup_dirs") or [])
            return {"claimed": True}
        kept = False
        try:
            reply, kept = self._spawn_claimed(spec, fd, conn)
            return reply
        finally:
            if not kept:
                os.close(fd)

    def _spawn_claimed(self, spec: dict, fd: int, conn: socket.socket | None) -> tuple[dict, bool]:
        """Start a claimed run; its record's lines go through `fd`. Also
        says whether the run kept `fd` open for its exit line."""
        try:
            pid, popen, spawn_ns = _spawn(
                spec, self.devnull, (self.homes, self.files), self.home_dir
            )
        except OSError as exc:
            error = _start_error(spec["argv"][0], exc)
            append_fd(fd, {"error": error})
            self.files.forget_dirs(spec.get("cgroup_dirs") or [])
            remove_cgroups(spec.get("cgroup_dirs") or [])
            return {"error": error}, False
        keep_fd = self.record_fds < min(RECORD_FDS_MAX, self.record_fds_max)
        self.record_fds += keep_fd
        run = Run(pid, popen, spec, conn, fd if keep_fd else None)
        self.runs[pid] = run
        try:
            recorded = append_fd(fd, start_line(pid, spec.get("memory_mb") or 0))
        except OSError as exc:
            _note(f"cannot record the task's run: {exc}")
            recorded = False
        if not recorded:
            # Its directory is gone already (a DELETE): the task is not wanted.
            _note(f"the task's run record {spec['record_path']} is gone: killing it")
            _killpg(pid, signal.SIGKILL)
        return {"pid": pid, "create_time": _create_time(spawn_ns, self.boot_time)}, keep_fd

    # -- ending ---------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if info is None or not info.si_pid:
                return
            pid = info.si_pid
            # Kill the group before reaping the leader, so the pgid cannot be
            # reused meanwhile: background children die with the task.
            _killpg(pid, signal.SIGKILL)
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                continue
            run = self.runs.pop(pid, None)
            if run is not None:
                if run.popen is not None:
                    run.popen.returncode = os.waitstatus_to_exitcode(status)
                self._finish(run, status)

    def _finish(self, run: Run, status: int) -> None:
        oom = run.oom or cgroup_oom(run.oom_files, self.files.read)
        doc = exit_doc(status, oom)
        left = self._kill_left(run)
        kept = not oom and not left and self._keeps(run)
        if kept:
            doc["cgroups_kept"] = run.cgroup_dirs
        line = b'{"exited": %d}\n' % run.pid
        try:
            recorded = line_of(doc)  # encoded once: the record's line and the agents'
            if run.record_fd is not None:
                # No link count asked: the task is over, whoever reads the record.
                write_all(run.record_fd, recorded)
            else:
                append(run.record_path, recorded)
            # Recorded: the agent may take the end from this line, without
            # opening the record.
            line = b'{"exited": %d, ' % run.pid + recorded[1:]
        except OSError as exc:
            _note(f"cannot record the task's exit: {exc}")
        finally:
            if run.record_fd is not None:
                os.close(run.record_fd)
                run.record_fd = None
                self.record_fds -= 1
        if not kept:
            self._remove_later(run.cgroup_dirs)
        self._broadcast(line)

    def _kill_left(self, run: Run) -> bool:
        """SIGKILL what the task left in its cgroups, as Nomad's executor
        does: a daemon (setsid, a double fork) leaves the task's process
        group, never its cgroups. True if there was any (or no list to read):
        its cgroups are then removed, not kept, once it has died."""
        if not run.cgroup_procs:
            return False
        # The memory cgroup's list alone: the task's processes are in all of
        # its cgroups. One read at the end of a task, none at its start.
        listed = self.files.read(run.cgroup_procs[0])
        if listed == b"":
            return False
        _kill_listed(listed or b"")
        return True

    def _keeps(self, run: Run) -> bool:
        """Hand the cgroups back to the agent that asked? Only to one still
        connected (it pools them), and only empty ones (`_kill_left` found
        nothing in them: reusable at once)."""
        if run.keeper is None or not run.cgroup_dirs:
            return False
        client = self.clients.get(run.keeper.fileno())
        return client is not None and client[0] is run.keeper

    def _remove_later(self, dirs: list[str]) -> None:
        """Remove the cgroups now, or retry from the loop while they are busy."""
        # Usually empty at once (the group is dead and reaped); a busy one is
        # retried from the loop rather than holding up every other task.
        deadline = time.monotonic() + RMDIR_GIVE_UP
        self.files.forget_dirs(dirs)
        self.rmdirs.extend((deadline, path) for path in dirs)
        self._retry_rmdirs(time.monotonic())

    def _retry_rmdirs(self, now: float) -> None:
        keep = []
        for deadline, path in self.rmdirs:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                # Still busy: kill what is in it again (a child forked
                # while the last kill was on its way).
                _kill_listed(read_file(path + "/cgroup.procs") or b"")
                if now < deadline:
                    keep.append((deadline, path))
        self.rmdirs = keep

    def _watchdog(self) -> None:
        watched = [r for r in self.runs.values() if r.watchdog_bytes and not r.oom]
        if not watched:
            return
        tree = process_tree()
        for run in watched:
            if tree_rss(run.pid, tree) > run.watchdog_bytes:
                run.oom = True
                _killpg(run.pid, signal.SIGKILL)


class HomeCgroups:
    """The supervisor's own cgroup.procs files, kept open: it goes back to
    them after every start with cgroups, two opens a start saved."""

    MAX_OPEN = 8  # one per controller hierarchy; more would be a bug elsewhere

    def __init__(self) -> None:
        self.fds: dict[str, tuple[int, bytes]] = {}

    def join(self, procs_files: list[str]) -> None:
        """Move this process back into these cgroups."""
        for path in procs_files:
            kept = self.fds.get(path)
            fd, data = kept if kept is not None else open_join(path)
            if kept is None and len(self.fds) < self.MAX_OPEN:
                self.fds[path] = (fd, data)
            try:
                os.write(fd, data)
            finally:
                if path not in self.fds:
                    os.close(fd)


def _spawn(
    spec: dict, stdin: int, cgroups: tuple[HomeCgroups, CgroupFiles], home_dir: int
) -> tuple[int, subprocess.Popen | None, int]:
    """Start the task in a process group of its own: its pid, its Popen if
    subprocess started it, and CLOCK_BOOTTIME read just before the start
    (after the cgroup joins, whose waits can last ticks); raises OSError if
    it cannot start.

    Neither way runs Python in the child (vfork and exec), which costs a
    fraction of a fork of this process. A task with cgroups is started from
    inside them: the supervisor joins the task's cgroups, starts it (a child
    is born in its parent's cgroups), and goes back to its own.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    out = os.open(spec["stdout"], flags, 0o644)
    try:
        err = os.open(spec["stderr"], flags, 0o644)
    except OSError:
        os.close(out)
        raise
    user = spec.get("user") or {}
    home_procs = spec.get("cgroup_home_procs") or []
    homes, files = cgroups
    try:
        files.join(spec.get("cgroup_procs") or [])
        before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        if not user:
            return posix_spawn_task(spec, (stdin, out, err), home_dir), None, before
        popen = subprocess.Popen(
            spec["argv"],
            env=spec["env"],
            cwd=spec["cwd"],
            stdin=stdin,
            stdout=out,
            stderr=err,
            close_fds=True,
            restore_signals=True,
            process_group=0,
            user=user.get("uid"),
            group=user.get("gid"),
            extra_groups=user.get("groups"),
        )
        return popen.pid, popen, before
    finally:
        try:
            homes.join(home_procs)
        finally:
            os.close(out)
            os.close(err)


def _fd_budget(wanted: int) -> int:
    """`wanted` fds kept open, or a quarter of what this process may open if less."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return wanted
    return wanted if soft == resource.RLIM_INFINITY else max(0, min(wanted, soft // 4))


def _boot_time() -> float | None:
    """The kernel's boot time (btime in /proc/stat), as psutil reads it."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _create_time(boottime_ns: int, boot_time: float | None) -> float | None:
    """psutil's create time of a child forked at `boottime_ns` (CLOCK_BOOTTIME,
    read just before the spawn); None if unknown.

    /proc/<pid>/stat's start time is the same clock at the fork, in ticks:
    taken from our own clock, the start saves that file's open, read and
    close (~17 us). It is a tick early when a tick falls between the reading
    and the fork, tens of microseconds apart, or more if the supervisor is
    preempted there; agents tell pids apart to 0.5 s. The agent, reading it
    itself after our answer, found a task as short as `true` already reaped
    most of the time."""
    if boot_time is None:
        return None
    return boot_time + boottime_ns // TICK_NS / CLOCK_TICKS


def _note(message: str) -> None:
    """A line in the supervisor's log (fd 2)."""
    try:
        write_all(2, (message + "\n").encode(errors="replace"))
    except OSError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _kill_listed(procs: bytes) -> None:
    """SIGKILL each pid of a cgroup.procs list (never this process)."""
    for field in procs.split():
        try:
            pid = int(field)
        except ValueError:
            continue
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _start_error(program: str, exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"failed to start task: executable not found: {program}"
    if isinstance(exc, PermissionError):
        return f"failed to start task: permission denied: {program}"
    return f"failed to start task: {program}: {getattr(exc, 'strerror', None) or exc}"


def main(argv: list[str] | None = None) -> int:
    """Bind the name, say READY (or IN_USE) on stdout, then serve until done."""
    name = (argv if argv is not None else sys.argv[1:])[0]
    # A signal to the agent's process group or a closed terminal is not ours.
    # Caught, not ignored: an ignored signal would stay ignored in the tasks,
    # a caught one is back to its default at their exec.
    for sig in (signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # restored in tasks (spawn.RESTORED_SIGNALS)
    no_inherited_fds()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(socket_address(name))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        _say(IN_USE)  # another supervisor serves this agent
        return 0
    listener.listen(16)
    _say(READY)
    Supervisor(listener).serve()
    return 0


def _say(line: bytes) -> None:
    """One line to whoever started us, then stdout is let go (it may die)."""
    try:
        write_all(1, line)
    except OSError:
        pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
