"""The per-task supervisor: starts an exec task, outlives the agent, records its exit.

As Nomad's executor: the agent starts one supervisor per exec task, in a
session of its own, so that `kill -9` of the agent leaves the task running.
The agent forks it (`fork_supervisor`): no new interpreter per task. The
supervisor starts the task in a process group of its own (the unit the
agent signals), answers one JSON line on its answer pipe (`{"pid": ..}` or
`{"error": ..}`), then waits for the task and writes how it ended to
`exit_path` (whole, by rename) before it exits. A restarted agent finds the
task by its pid and its end in that file.

Each start of a task is one run with its own record, `claim_path`, created
exclusively before the task starts and rewritten with its pid after: an agent
killed between starting a task and saving its handle finds the run there, and
two supervisors asked to start the same run never both start it.

Memory limit: a task in its cgroups (`cgroup_procs`, joined before exec) is
held by the kernel; the supervisor only reads the OOM count afterwards.
Without cgroups (`watchdog_mb`), the supervisor polls the RSS of the task's
whole process tree and SIGKILLs the group past the limit.

Fork safety: the agent is multi-threaded, and only the forking thread lives
on in the child, so any lock another thread held stays held there for ever.
The child therefore runs only os-level calls: no logging, no buffered files,
no imports (everything it uses is imported here, at module import), no
threads; files are written with os.open/os.write, and it leaves by os._exit.

    python -m orch.agent.supervisor     (the spec, one JSON object, on stdin)

still runs one supervisor in the foreground, answering on stdout.
"""
from __future__ import annotations

import errno
import fcntl
import gc
import json
import os
import signal
import sys
import time

try:
    import psutil           # the watchdog's fallback where /proc is missing
except ImportError:         # pragma: no cover
    psutil = None

WATCHDOG_INTERVAL = 0.2     # seconds between RSS samples without cgroups
RMDIR_TRIES = 50            # a cgroup may stay busy for a moment after its last kill
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_RESET_SIGNALS = tuple(getattr(signal, name) for name in
                       ("SIGTERM", "SIGINT", "SIGQUIT", "SIGPIPE", "SIGXFSZ", "SIGCHLD",
                        "SIGUSR1", "SIGUSR2", "SIGALRM")
                       if hasattr(signal, name))


def fork_supervisor(spec: dict, log_path: str) -> tuple[int, int]:
    """Fork a supervisor for `spec`: its pid and the read end of its answer pipe.

    The caller reads one JSON line from the pipe, closes it, and reaps the pid.
    """
    spec_json = json.dumps(spec)        # fails here, in the agent, if it cannot
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        rfd, wfd = os.pipe()
    except OSError:
        os.close(log_fd)
        raise
    try:
        pid = os.fork()
    except OSError:
        for fd in (rfd, wfd, log_fd):
            os.close(fd)
        raise
    if pid == 0:                                        # the supervisor
        code = 1
        try:
            os.close(rfd)
            code = _child(json.loads(spec_json), wfd, log_fd)
        except BaseException as exc:                    # noqa: BLE001 nothing may escape
            _note(f"task supervisor failed: {exc!r}")
        finally:
            os._exit(code)
    os.close(wfd)
    os.close(log_fd)
    return pid, rfd


def _child(spec: dict, wfd: int, log_fd: int) -> int:
    """The supervisor, in the forked child: fds 0, 1 and 2 are its own first."""
    gc.disable()                    # it would touch (copy) all of the agent's pages
    os.setsid()
    for sig in _RESET_SIGNALS:      # the agent's Python handlers must not run here
        signal.signal(sig, signal.SIG_DFL)
    # A write to the pipe of an agent that died is an EPIPE, not our death.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    devnull = os.open(os.devnull, os.O_RDWR)
    # stdin: nothing; stdout: the answer pipe; stderr: the supervisor log.
    wfd = _move_above(wfd, 2)
    log_fd = _move_above(log_fd, 2)
    os.dup2(devnull, 0)
    os.dup2(wfd, 1)
    os.dup2(log_fd, 2)
    # Nothing of the agent's stays open (its listening socket, connections, files).
    os.closerange(3, _max_fd())
    return run(spec)


def _move_above(fd: int, low: int) -> int:
    """fd itself, or a copy numbered above `low` (so dup2 onto 0..low spares it)."""
    return fd if fd > low else fcntl.fcntl(fd, fcntl.F_DUPFD, low + 1)


def _max_fd() -> int:
    try:
        return min(os.sysconf("SC_OPEN_MAX"), 1 << 20)
    except (OSError, ValueError):
        return 4096


def main() -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    spec = json.loads(sys.stdin.read())
    return run(spec)


def run(spec: dict) -> int:
    """Claim the run, start the task, answer on fd 1, wait, record the exit."""
    claim = spec.get("claim_path")
    if claim and not _claim(claim):
        # Another supervisor holds this run: an agent killed mid-start, then
        # restarted, asked twice. The first one runs the task; we do not.
        _answer({"claimed": True})
        _remove_cgroups(spec.get("cgroup_dirs") or [])
        return 0
    try:
        pid = _spawn(spec)
    except OSError as exc:
        error = _start_error(spec["argv"][0], exc)
        if claim:
            _write_json(claim, {"supervisor_pid": os.getpid(), "error": error})
        _answer({"error": error})
        _remove_cgroups(spec.get("cgroup_dirs") or [])
        return 0
    try:
        if claim:
            _write_json(claim, {"supervisor_pid": os.getpid(), "pid": pid,
                                "exit_path": spec["exit_path"],
                                "memory_mb": spec.get("memory_mb") or 0})
        _answer({"pid": pid})
        status, oom = _wait(pid, spec)
        oom = oom or _cgroup_oom(spec.get("cgroup_oom_files") or [])
        _write_exit(spec["exit_path"], status, oom)
    except OSError as exc:
        # The allocation's directory was removed (a DELETE): nobody will read it.
        _note(f"cannot record the task's run: {exc}")
        _killpg(pid, signal.SIGKILL)
    finally:
        _remove_cgroups(spec.get("cgroup_dirs") or [])
    return 0


def _spawn(spec: dict) -> int:
    """Fork and exec the task in a group of its own; raises OSError if it cannot start."""
    procs = spec.get("cgroup_procs") or []
    user = spec.get("user")
    argv = [os.fsencode(a) for a in spec["argv"]]
    env = {os.fsencode(k): os.fsencode(v) for k, v in spec["env"].items()}
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    out = os.open(spec["stdout"], flags, 0o644)
    try:
        err = os.open(spec["stderr"], flags, 0o644)
    except OSError:
        os.close(out)
        raise
    rfd, wfd = os.pipe()            # both close-on-exec: EOF means the exec worked
    try:
        pid = os.fork()
    except OSError:
        for fd in (out, err, rfd, wfd):
            os.close(fd)
        raise
    if pid == 0:                                        # the task
        try:
            os.close(rfd)
            os.setpgid(0, 0)
            for sig in _RESET_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.chdir(spec["cwd"])
            for path in procs:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, str(os.getpid()).encode())
                finally:
                    os.close(fd)
            if user:
                os.setgroups(user["groups"])
                os.setgid(user["gid"])
                os.setuid(user["uid"])
            os.execvpe(argv[0], argv, env)
        except OSError as exc:
            _write_all(wfd, str(exc.errno or errno.EIO).encode())
        except BaseException:                           # noqa: BLE001
            _write_all(wfd, str(errno.EIO).encode())
        finally:
            os._exit(127)
    os.close(wfd)
    os.close(out)
    os.close(err)
    try:
        data = b""
        while True:
            chunk = os.read(rfd, 64)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(rfd)
    if data:
        os.waitpid(pid, 0)          # it failed before its exec: reap it
        code = int(data) if data.isdigit() else errno.EIO
        raise OSError(code, os.strerror(code))
    return pid


def _claim(path: str) -> bool:
    """Create the run's record exclusively: True if this supervisor is the one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        _write_all(fd, json.dumps({"supervisor_pid": os.getpid()}).encode())
    finally:
        os.close(fd)
    return True


def _answer(doc: dict) -> None:
    """The one line the agent waits for; then fd 1 is let go (the agent may die)."""
    try:
        _write_all(1, (json.dumps(doc) + "\n").encode())
    except OSError:                 # the agent died meanwhile: the task runs on
        pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def _note(message: str) -> None:
    """A line in the supervisor log (fd 2), without Python's buffered stderr."""
    try:
        _write_all(2, (message + "\n").encode(errors="replace"))
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _wait(pid: int, spec: dict) -> tuple[int | None, bool]:
    """Wait for the task; kill its group before reaping, so the pgid cannot be reused."""
    limit_mb = spec.get("watchdog_mb") or 0
    oom = False
    while True:
        flags = os.WEXITED | os.WNOWAIT | (os.WNOHANG if limit_mb else 0)
        try:
            info = os.waitid(os.P_PID, pid, flags)
        except ChildProcessError:         # not our child any more: nothing to wait for
            return None, oom
        except InterruptedError:
            continue
        if info is not None and info.si_pid:
            break
        if not oom and _tree_rss(pid) > limit_mb * 1024 * 1024:
            oom = True
            _killpg(pid, signal.SIGKILL)
        time.sleep(WATCHDOG_INTERVAL)
    # Background children die with the task, as with Nomad's executor.
    _killpg(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return status, oom


def _tree_rss(pid: int) -> int:
    """Bytes resident in the task and every descendant."""
    if not os.path.isdir("/proc/self"):
        return _tree_rss_psutil(pid)
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _read(f"/proc/{name}/stat")
        if stat is None:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            parents.setdefault(int(fields[1]), []).append(int(name))
    total, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        statm = _read(f"/proc/{current}/statm")
        if statm is not None:
            fields = statm.split()
            if len(fields) > 1:
                total += int(fields[1]) * PAGE_SIZE
        todo.extend(parents.get(current, ()))
    return total


def _tree_rss_psutil(pid: int) -> int:
    if psutil is None:
        return 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def _read(path: str) -> bytes | None:
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


def _cgroup_oom(paths: list[str]) -> bool:
    """Did the kernel OOM-kill in the task's memory cgroup? (v2 memory.events, v1 oom_control)"""
    for path in paths:
        data = _read(path)
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


def _write_exit(path: str, status: int | None, oom: bool) -> None:
    if status is None:
        doc = {"exit_code": None, "signal": None, "error": "task exit status lost"}
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        doc = {"exit_code": 128 + sig, "signal": sig}
    else:
        doc = {"exit_code": os.WEXITSTATUS(status), "signal": None}
    doc["oom_killed"] = oom
    doc["finished_at"] = time.time()
    _write_json(path, doc)


def _write_json(path: str, doc: dict) -> None:
    """Whole or not at all: a reader never sees half a file."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, json.dumps(doc).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _remove_cgroups(dirs: list[str]) -> None:
    for path in dirs:
        for _ in range(RMDIR_TRIES):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)


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


if __name__ == "__main__":
    sys.exit(main())
