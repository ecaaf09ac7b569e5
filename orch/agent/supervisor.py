"""The per-task supervisor: starts an exec task, outlives the agent, records its exit.

    python -m orch.agent.supervisor     (the spec, one JSON object, on stdin)

As Nomad's executor: the agent starts one supervisor per exec task, in a
session of its own, so that `kill -9` of the agent leaves the task running.
The supervisor starts the task in a process group of its own (the unit the
agent signals), answers one JSON line on stdout (`{"pid": ..}` or
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

Imports stay few and cheap: this runs once per task start.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

WATCHDOG_INTERVAL = 0.2     # seconds between RSS samples without cgroups
RMDIR_TRIES = 50            # a cgroup may stay busy for a moment after its last kill


def main() -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    spec = json.loads(sys.stdin.read())
    claim = spec.get("claim_path")
    if claim and not _claim(claim):
        # Another supervisor holds this run: an agent killed mid-start, then
        # restarted, asked twice. The first one runs the task; we do not.
        _answer({"claimed": True})
        _remove_cgroups(spec.get("cgroup_dirs") or [])
        return 0
    try:
        child = _spawn(spec)
    except (OSError, subprocess.SubprocessError) as exc:
        error = _start_error(spec["argv"][0], exc)
        if claim:
            _write_json(claim, {"supervisor_pid": os.getpid(), "error": error})
        _answer({"error": error})
        _remove_cgroups(spec.get("cgroup_dirs") or [])
        return 0
    try:
        if claim:
            _write_json(claim, {"supervisor_pid": os.getpid(), "pid": child.pid,
                                "exit_path": spec["exit_path"],
                                "memory_mb": spec.get("memory_mb") or 0})
        _answer({"pid": child.pid})
        status, oom = _wait(child.pid, spec)
        oom = oom or _cgroup_oom(spec.get("cgroup_oom_files") or [])
        _write_exit(spec["exit_path"], status, oom)
    except OSError as exc:
        # The allocation's directory was removed (a DELETE): nobody will read it.
        print(f"cannot record the task's run: {exc}", file=sys.stderr)
        _killpg(child.pid, signal.SIGKILL)
    finally:
        _remove_cgroups(spec.get("cgroup_dirs") or [])
    return 0


def _spawn(spec: dict) -> subprocess.Popen:
    procs = spec.get("cgroup_procs") or []
    user = spec.get("user")

    def before_exec():
        os.setpgid(0, 0)
        for path in procs:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        if user:
            os.setgroups(user["groups"])
            os.setgid(user["gid"])
            os.setuid(user["uid"])

    with open(spec["stdout"], "ab") as out, open(spec["stderr"], "ab") as err:
        # The supervisor is single-threaded, so a preexec function is safe here.
        return subprocess.Popen(spec["argv"], cwd=spec["cwd"], env=spec["env"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                close_fds=True, preexec_fn=before_exec)


def _claim(path: str) -> bool:
    """Create the run's record exclusively: True if this supervisor is the one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"supervisor_pid": os.getpid()}, f)
    return True


def _answer(doc: dict) -> None:
    """The one line the agent waits for; then stdout is let go (the agent may die)."""
    try:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()
    except OSError:                 # the agent died meanwhile: the task runs on
        pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


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
    import psutil
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


def _cgroup_oom(paths: list[str]) -> bool:
    """Did the kernel OOM-kill in the task's memory cgroup? (v2 memory.events, v1 oom_control)"""
    for path in paths:
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill" and int(value) > 0:
                        return True
        except (OSError, ValueError):
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
    with open(tmp, "w") as f:
        json.dump(doc, f)
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
