"""How the task supervisor starts a task (posix_spawn) and records its end (the claimed fd)."""

import os
import signal
import socket
import stat
import subprocess
import time
from contextlib import contextmanager

import pytest

from orch.agent.tasksup import server
from orch.agent.tasksup.client import SupervisorClient, supervisor_name
from orch.agent.tasksup.records import read_record

from waiting import wait_for


@pytest.fixture
def client():
    made = SupervisorClient(supervisor_name(None))
    yield made
    made.close()


@contextmanager
def supervisor_here():
    """A supervisor in this process (no socket served): its starts are our
    children, killed and reaped at the end with its fds closed."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    made = server.Supervisor(listener)
    try:
        yield made
    finally:
        for pid in list(made.runs):
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        listener.close()
        for fd in (made.devnull, made.wake_r, made.wake_w, made.home_dir):
            os.close(fd)


@pytest.fixture
def sup():
    with supervisor_here() as made:
        yield made


def spec_in(tmp_path, name: str, argv: list[str], path: str | None = None) -> dict:
    task_dir = tmp_path / name
    task_dir.mkdir()
    return {
        "argv": argv,
        "env": {"PATH": path or os.environ["PATH"], "ORCH_TASK_NAME": name},
        "cwd": str(task_dir),
        "stdout": str(task_dir / "stdout.log"),
        "stderr": str(task_dir / "stderr.log"),
        "record_path": str(task_dir / ".orch-run-0.json"),
        "memory_mb": 0,
        "user": None,
    }


def ended(spec: dict) -> dict:
    assert wait_for(lambda: "exit_code" in (read_record(spec["record_path"]) or {}), 10.0)
    return read_record(spec["record_path"])


def test_a_task_runs_in_its_dir_with_its_env_path_and_default_sigpipe(client, tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    script = tools / "probe"
    script.write_text(
        '#!/bin/sh\npwd\necho "$ORCH_TASK_NAME"\ngrep SigIgn /proc/$$/status\necho oops >&2\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    # Found on the task's PATH, not the supervisor's.
    spec = spec_in(tmp_path, "t", ["probe"], path=f"{tools}:/usr/bin:/bin")
    answer, _, _ = client.start(spec)
    assert "pid" in answer, answer
    assert ended(spec)["exit_code"] == 0
    out = open(spec["stdout"]).read().splitlines()
    assert out[0] == spec["cwd"] and out[1] == "t"
    ignored = int(out[2].split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))  # the supervisor ignores it, the task not
    assert open(spec["stderr"]).read() == "oops\n"


def test_a_task_gets_stdio_only_and_a_process_group_of_its_own(client, tmp_path):
    spec = spec_in(tmp_path, "t", ["sleep", "30"])
    answer, _, _ = client.start(spec)
    pid = answer["pid"]
    try:
        # The start is answered once the child is exec'ing, and the kernel lets
        # the spawner go before it closes the close-on-exec fds: on a loaded
        # host they were still listed. A leaked fd would stay: wait for three.
        assert wait_for(
            lambda: sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2]
        )
        assert os.getpgid(pid) == pid
        assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
    finally:
        os.killpg(pid, signal.SIGKILL)
    assert ended(spec)["signal"] == signal.SIGKILL


def test_the_supervisor_goes_back_to_its_own_dir_after_a_start(sup, tmp_path):
    cwd = os.getcwd()
    pid = sup._start(spec_in(tmp_path, "t", ["sleep", "30"]))["pid"]
    assert os.getcwd() == cwd
    assert os.readlink(f"/proc/{pid}/cwd") == str(tmp_path / "t")


def test_a_start_without_a_user_does_not_go_through_subprocess(sup, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("subprocess.Popen used")

    monkeypatch.setattr(server.subprocess, "Popen", refuse)
    answer = sup._start(spec_in(tmp_path, "t", ["sleep", "30"]))
    assert "pid" in answer and sup.runs[answer["pid"]].popen is None


def test_programs_not_found_or_not_executable_are_error_answers(sup, tmp_path):
    missing = spec_in(tmp_path, "a", ["no-such-program-here"], path=str(tmp_path))
    assert sup._start(missing)["error"] == (
        "failed to start task: executable not found: no-such-program-here"
    )
    (tmp_path / "plain").write_text("#!/bin/sh\n")
    denied = spec_in(tmp_path, "b", ["plain"], path=str(tmp_path))
    assert sup._start(denied)["error"] == "failed to start task: permission denied: plain"
    no_dir = spec_in(tmp_path, "c", ["true"])
    no_dir["cwd"] = str(tmp_path / "gone")
    assert sup._start(no_dir)["error"] == "failed to start task: executable not found: true"
    assert os.getcwd() != no_dir["cwd"]


@pytest.mark.parametrize("fds_max", [server.RECORD_FDS_MAX, 0])
def test_the_exit_line_goes_through_the_claimed_record(sup, tmp_path, monkeypatch, fds_max):
    monkeypatch.setattr(server, "RECORD_FDS_MAX", fds_max)
    spec = spec_in(tmp_path, "t", ["sh", "-c", "exit 5"])
    pid = sup._start(spec)["pid"]
    run = sup.runs[pid]
    assert (run.record_fd is not None) == (fds_max > 0) and sup.record_fds == (fds_max > 0)
    kept = run.record_fd
    _, status = os.waitpid(pid, 0)
    sup.runs.pop(pid)
    sup._finish(run, status)
    assert read_record(spec["record_path"])["exit_code"] == 5
    assert run.record_fd is None and sup.record_fds == 0
    if kept is not None:
        with pytest.raises(OSError):
            os.fstat(kept)  # closed


def test_the_create_time_in_an_answer_is_psutils_to_the_tick_without_reading_proc(
    sup, tmp_path, monkeypatch
):
    import psutil

    opened: list[str] = []
    real_open = os.open

    def open_noted(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(server.os, "open", open_noted)
    tick = 1 / os.sysconf("SC_CLK_TCK")
    for i in range(5):
        began = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        answer = sup._start(spec_in(tmp_path, f"t{i}", ["sleep", "30"]))
        took = (time.clock_gettime_ns(time.CLOCK_BOOTTIME) - began) / 1e9
        # Taken from the clock just before the fork: never late (psutil's
        # figure is that fork's tick), and a tick early at worst when nothing
        # comes between the read and the fork. A loaded host may preempt the
        # start in between (20 ms early was seen): the read and the fork both
        # fall within the call, so never earlier than the call took, plus a tick.
        lag = psutil.Process(answer["pid"]).create_time() - answer["create_time"]
        assert -1e-6 <= lag <= took + tick + 1e-6
    assert not [path for path in opened if path.startswith("/proc/")]


def test_a_task_started_as_a_user_still_goes_through_subprocess(sup, tmp_path):
    spec = spec_in(tmp_path, "t", ["sleep", "30"])
    spec["user"] = {"uid": os.getuid(), "gid": os.getgid(), "groups": []}
    pid = sup._start(spec)["pid"]
    assert isinstance(sup.runs[pid].popen, subprocess.Popen)


def test_answers_to_a_batch_of_starts_go_in_one_write(sup, tmp_path):
    import json

    mine, theirs = socket.socketpair()
    try:
        sup.clients[theirs.fileno()] = (theirs, bytearray())
        specs = [spec_in(tmp_path, f"t{i}", ["sleep", "30"]) for i in range(3)]
        mine.sendall(
            b"".join(
                json.dumps({"id": i, "start": s}).encode() + b"\n" for i, s in enumerate(specs)
            )
        )
        sup._read(theirs)
        mine.setblocking(False)
        with pytest.raises(BlockingIOError):
            mine.recv(65536)  # queued, not sent line by line
        sup._flush()
        answers = [json.loads(line) for line in mine.recv(65536).splitlines()]
        assert [a["id"] for a in answers] == [0, 1, 2] and all("pid" in a for a in answers)
        assert sup.outbox == {}
    finally:
        mine.close()
        sup.clients.pop(theirs.fileno(), None)
        theirs.close()


def test_task_cgroup_files_stay_open_from_one_task_to_the_next(tmp_path, monkeypatch):
    from orch.agent.tasksup.limits import CgroupFiles

    group = tmp_path / "orch" / "a1-t"
    group.mkdir(parents=True)
    for name in ("tasks", "cgroup.procs", "memory.oom_control"):
        (group / name).write_text("")
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (opened.append(p), real_open(p, *a, **k))[1])
    files = CgroupFiles()
    for _ in range(3):  # three tasks in the same pooled cgroup
        files.join([str(group / "cgroup.procs")])
        assert files.read(str(group / "cgroup.procs")) == b""
        (group / "memory.oom_control").write_text("oom_kill 0\n")
        assert files.read(str(group / "memory.oom_control")) == b"oom_kill 0\n"
    assert sorted(opened) == sorted(
        str(group / n) for n in ("tasks", "cgroup.procs", "memory.oom_control")
    )
    assert (group / "tasks").read_text() == "000"
    # Removed: its fds go, and a later read opens the path again (gone: None).
    files.forget_dirs([str(group)])
    assert files._fds == {}
    for name in ("tasks", "cgroup.procs", "memory.oom_control"):
        (group / name).unlink()
    group.rmdir()
    assert files.read(str(group / "cgroup.procs")) is None
    with pytest.raises(FileNotFoundError):
        files.join([str(group / "cgroup.procs")])


def test_a_kept_cgroup_fd_that_fails_is_opened_again_once(tmp_path, monkeypatch):
    import errno

    from orch.agent.tasksup.limits import CgroupFiles

    (tmp_path / "tasks").write_text("")
    path = str(tmp_path / "tasks")
    files = CgroupFiles(max_open=2)
    files.write(path, b"0")
    stale = files._fds[(path, os.O_WRONLY)]
    real_write = os.write
    failed: list[int] = []

    def write(fd, data):
        if fd == stale and not failed:  # once: the fd number may come back
            failed.append(fd)
            raise OSError(errno.ENODEV, "removed cgroup")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    (tmp_path / "tasks").write_text("")
    files.write(path, b"1")  # the stale fd dropped, the path opened anew
    assert failed and (tmp_path / "tasks").read_text() == "1"
    # Bounded: the least recently used goes first.
    for name in ("a", "b"):
        (tmp_path / name).write_text(name)
        assert files.read(str(tmp_path / name)) == name.encode()
    assert [p for p, _ in files._fds] == [str(tmp_path / "a"), str(tmp_path / "b")]


def test_a_supervisor_started_in_a_removed_dir_still_starts_tasks(tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with supervisor_here() as made:
        pid = made._start(spec_in(tmp_path, "t", ["sleep", "30"]))["pid"]
        assert os.readlink(f"/proc/{pid}/cwd") == str(tmp_path / "t")
        assert os.readlink("/proc/self/cwd").startswith(str(gone))  # back where it was
