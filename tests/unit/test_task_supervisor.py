"""The per-agent task supervisor over its socket: requests, answers, exits."""

import json
import os
import socket
import time

import pytest

from orch.agent.tasksup.client import SupervisorClient, supervisor_name
from orch.agent.tasksup.protocol import socket_address
from orch.agent.tasksup.records import read_record

from waiting import live, wait_for


@pytest.fixture
def client():
    made = SupervisorClient(supervisor_name(None))
    yield made
    made.close()


def raw_connection(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_address(name))
    sock.settimeout(5)
    return sock


def lines(sock: socket.socket, count: int, skip_exits: bool = False) -> list[dict]:
    """The next ``count`` lines; with skip_exits, not counting exit notices
    (every connection hears of every exit, an earlier task's too)."""
    out: list[dict] = []
    buf = b""
    while len(out) < count:
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, "supervisor closed the connection"
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        doc = json.loads(line)
        if not (skip_exits and "exited" in doc):
            out.append(doc)
    return out


def start_spec(tmp_path, name: str, argv: list[str]) -> dict:
    run_dir = tmp_path / name / ".orch"
    run_dir.mkdir(parents=True)
    return {
        "argv": argv,
        "env": {"PATH": os.environ["PATH"]},
        "cwd": str(tmp_path),
        "stdout": str(tmp_path / name / "stdout.log"),
        "stderr": str(tmp_path / name / "stderr.log"),
        "record_path": str(run_dir / "run-0.json"),
        "memory_mb": 0,
        "user": None,
    }


def test_bad_requests_are_answered_and_do_not_stop_it(client, tmp_path):
    spec = start_spec(tmp_path, "ok", ["true"])
    answer, pid, _ = client.start(spec)
    assert "pid" in answer and live(pid)
    # Its {"exited"} goes to every connection: sent (same loop turn as the
    # record's last line) before the supervisor accepts ours.
    assert wait_for(lambda: "exit_code" in (read_record(spec["record_path"]) or {}), 5.0)
    sock = raw_connection(client.name)
    try:
        sock.sendall(
            b"not json\n"
            + json.dumps({"id": 7, "start": {}}).encode()
            + b"\n"
            + json.dumps({"id": 8}).encode()
            + b"\n"
        )
        replies = lines(sock, 3, skip_exits=True)
    finally:
        sock.close()
    assert all("bad request to the task supervisor" in r["error"] for r in replies)
    assert [r["id"] for r in replies] == [None, 7, 8]
    assert client.start(start_spec(tmp_path, "still", ["true"]))[0].get("pid")


def test_every_agent_connected_hears_of_an_exit(client, tmp_path):
    warm = start_spec(tmp_path, "warm", ["true"])  # the supervisor is up
    client.start(warm)
    assert wait_for(lambda: "exit_code" in (read_record(warm["record_path"]) or {}), 5.0)
    watcher = raw_connection(client.name)  # a second agent: it asked for nothing
    try:
        spec = start_spec(tmp_path, "t", ["sh", "-c", "sleep 0.2; exit 3"])
        answer, _, _ = client.start(spec)
        [line] = lines(watcher, 1)
        record = read_record(spec["record_path"])
        assert record["exit_code"] == 3 and record["pid"] == answer["pid"]
        # The line carries what was appended to the record: no need to read it.
        assert line == {"exited": answer["pid"], **{k: record[k] for k in line if k != "exited"}}
        assert line["exit_code"] == 3 and line["signal"] is None and not line["oom_killed"]
    finally:
        watcher.close()


def test_a_run_claimed_once_is_not_started_again(client, tmp_path):
    spec = start_spec(tmp_path, "t", ["sleep", "30"])
    first, _, _ = client.start(spec)
    again, _, _ = client.start(spec)
    assert "pid" in first and again == {"claimed": True, "id": again["id"]}
    os.killpg(first["pid"], 9)


def test_a_failed_exec_is_an_error_answer(client, tmp_path):
    spec = start_spec(tmp_path, "t", ["/nonexistent/program"])
    answer, _, _ = client.start(spec)
    assert answer["error"] == "failed to start task: executable not found: /nonexistent/program"
    assert read_record(spec["record_path"])["error"] == answer["error"]


def test_the_record_is_one_file_of_whole_lines(client, tmp_path):
    spec = start_spec(tmp_path, "t", ["sh", "-c", "exit 4"])
    answer, sup_pid, _ = client.start(spec)
    assert wait_for(lambda: "exit_code" in (read_record(spec["record_path"]) or {}), 5.0)
    with open(spec["record_path"]) as f:
        lines = [json.loads(line) for line in f.read().splitlines()]
    assert lines[0] == {"supervisor_pid": sup_pid}
    assert lines[1] == {"pid": answer["pid"], "memory_mb": 0}
    assert lines[2]["exit_code"] == 4 and lines[2]["oom_killed"] is False
    assert os.listdir(tmp_path / "t" / ".orch") == ["run-0.json"]


def test_a_line_being_written_is_not_read(tmp_path):
    path = tmp_path / "run-0.json"
    path.write_text('{"supervisor_pid": 1}\n{"pid": 2, "memory_mb": 0}\n{"exit_co')
    assert read_record(str(path)) == {"supervisor_pid": 1, "pid": 2, "memory_mb": 0}
    assert read_record(str(tmp_path / "none.json")) is None


def test_it_leaves_when_no_agent_and_no_task_is_left(tmp_path):
    client = SupervisorClient(supervisor_name(str(tmp_path)))
    _, pid, _ = client.start(start_spec(tmp_path, "t", ["true"]))
    client.close()
    assert wait_for(lambda: not live(pid), 5.0)


def test_its_home_cgroups_are_opened_once_for_every_start(tmp_path, monkeypatch):
    from orch.agent.tasksup.server import HomeCgroups

    paths = [str(tmp_path / "cpu.procs"), str(tmp_path / "memory.procs")]
    for path in paths:
        open(path, "w").close()
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a: (opened.append(p), real_open(p, *a))[1])
    homes = HomeCgroups()
    for _ in range(3):
        homes.join(paths)
    assert opened == paths  # the first start opens them; the next two reuse them
    me = str(os.getpid())
    for path in paths:
        with open(path) as f:
            assert f.read() == me * 3  # every start wrote itself back


def test_a_cgroup_file_that_cannot_be_opened_is_an_error(tmp_path):
    from orch.agent.tasksup.server import HomeCgroups

    with pytest.raises(OSError):
        HomeCgroups().join([str(tmp_path / "gone" / "cgroup.procs")])


def test_a_start_answer_says_when_the_task_started_even_if_it_ended_at_once(client, tmp_path):
    import psutil

    answer, _, _ = client.start(start_spec(tmp_path, "quick", ["/bin/true"]))
    # Read before the supervisor could reap it: a task as short as `true`
    # is gone by the time the agent reads the answer.
    started = answer["create_time"]
    assert started is not None
    assert abs(started - psutil.Process(os.getpid()).create_time()) < 3600
    long_answer, _, _ = client.start(start_spec(tmp_path, "slow", ["sleep", "5"]))
    try:
        created = psutil.Process(long_answer["pid"]).create_time()
        assert abs(long_answer["create_time"] - created) < 0.05  # psutil's own figure
    finally:
        os.killpg(long_answer["pid"], 9)


def test_a_create_time_is_taken_after_the_cgroup_joins(tmp_path, monkeypatch):
    import psutil

    from orch.agent.tasksup import server

    real_join = server.CgroupFiles.join

    def slow_join(self, paths):  # a join waiting for the kernel (RCU): ticks
        time.sleep(0.2)
        return real_join(self, paths)

    monkeypatch.setattr(server.CgroupFiles, "join", slow_join)
    sup = server.Supervisor(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    try:
        answer = sup._start(start_spec(tmp_path, "t", ["sleep", "20"]))
        pid = answer["pid"]
        created = psutil.Process(pid).create_time()
        assert created - 0.011 <= answer["create_time"] <= created  # the fork's tick, or one before
    finally:
        os.killpg(pid, 9)
        os.waitpid(pid, 0)
        sup.runs.pop(pid, None)


def test_task_cgroups_are_kept_only_for_an_agent_still_connected(tmp_path):
    from orch.agent.drivers.cgroups import Cgroups

    cgroups = Cgroups()
    if cgroups.detect() is None:
        pytest.skip(f"no writable cgroups here: {cgroups.reason}")
    name = supervisor_name(str(tmp_path))
    client = SupervisorClient(name)
    try:
        client.start({**start_spec(tmp_path, "warm", ["true"])})  # spawns the supervisor
        records = {}
        for which, argv in (("stays", ["true"]), ("leaves", ["sleep", "0.5"])):
            group = cgroups.create(f"sup-test-{which}", 16, 0)
            spec = start_spec(tmp_path, which, argv)
            spec.update(cgroup_procs=list(group.procs), cgroup_oom_files=list(group.oom_files))
            spec.update(cgroup_dirs=list(group.dirs), cgroup_keep=True)
            spec.update(cgroup_home_procs=list(group.home_procs))
            sock = raw_connection(name)
            sock.sendall(json.dumps({"id": 1, "start": spec}).encode() + b"\n")
            assert "pid" in lines(sock, 1, skip_exits=True)[0]
            records[which] = (spec["record_path"], group, sock)
        records["leaves"][2].close()  # that agent is gone before its task ends
        for path, _group, _sock in records.values():
            assert wait_for(lambda p=path: "exit_code" in (read_record(p) or {}), 10)
        path, group, sock = records["stays"]
        assert read_record(path)["cgroups_kept"] == list(group.dirs)
        assert all(os.path.isdir(d) for d in group.dirs)
        cgroups.release(list(group.dirs))  # pooled by the agent that made it
        assert all(os.path.isdir(d) for d in group.dirs)
        cgroups.drain()
        assert not any(os.path.exists(d) for d in group.dirs)
        sock.close()
        path, group, _ = records["leaves"]
        assert "cgroups_kept" not in read_record(path)
        assert wait_for(lambda: not any(os.path.exists(d) for d in group.dirs), 10)
    finally:
        client.close()


def test_a_v1_cgroup_is_joined_through_its_tasks_file_by_the_thread_alone(tmp_path):
    from orch.agent.tasksup.limits import CgroupFiles
    from orch.agent.tasksup.server import HomeCgroups

    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    for d in (v1, v2):
        d.mkdir()
        (d / "cgroup.procs").write_text("")
    (v1 / "tasks").write_text("")  # only v1 has one
    paths = [str(v1 / "cgroup.procs"), str(v2 / "cgroup.procs")]
    CgroupFiles().join(paths)
    # v1: "0" (this thread) to `tasks`, no global lock; v2: our pid to cgroup.procs.
    assert (v1 / "tasks").read_text() == "0" and (v1 / "cgroup.procs").read_text() == ""
    assert (v2 / "cgroup.procs").read_text() == str(os.getpid())
    homes = HomeCgroups()  # the same choice, its fds kept: each join appends here
    homes.join(paths)
    homes.join(paths)
    assert (v1 / "tasks").read_text() == "00" and (v1 / "cgroup.procs").read_text() == ""
    assert (v2 / "cgroup.procs").read_text() == str(os.getpid()) * 2


def test_a_claim_hands_back_its_fd_once_and_says_when_the_record_is_gone(tmp_path):
    from orch.agent.tasksup.records import append_fd, claim

    path = str(tmp_path / "run-0.json")
    fd = claim(path)
    assert fd is not None
    try:
        assert claim(path) is None  # a start asked twice runs once
        assert append_fd(fd, {"pid": 12}) is True
        assert read_record(path) == {"supervisor_pid": os.getpid(), "pid": 12}
        os.unlink(path)  # the task dir was removed (a DELETE) meanwhile
        assert append_fd(fd, {"exit_code": 0}) is False
    finally:
        os.close(fd)


def test_a_task_whose_record_vanished_during_its_start_is_killed(tmp_path, monkeypatch):
    import signal

    from orch.agent.tasksup import server

    real_spawn = server._spawn

    def spawn_then_delete(spec, stdin, homes, home_dir):
        started = real_spawn(spec, stdin, homes, home_dir)
        os.unlink(spec["record_path"])  # the agent removed the task dir meanwhile
        return started

    monkeypatch.setattr(server, "_spawn", spawn_then_delete)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sup = server.Supervisor(listener)
    try:
        answer = sup._start(start_spec(tmp_path, "t", ["sleep", "20"]))
        pid = answer["pid"]
        # Our own child: waited for directly (not through the supervisor's
        # reaping, which would wait for any child of this test process).
        _, status = os.waitpid(pid, 0)
        sup.runs.pop(pid)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    finally:
        for pid in list(sup.runs):
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        listener.close()
        for fd in (sup.devnull, sup.wake_r, sup.wake_w):
            os.close(fd)


def test_an_async_start_is_answered_through_its_callback_without_an_event(
    client, tmp_path, monkeypatch
):
    import threading

    from orch.agent.tasksup import client as client_module

    client.start(start_spec(tmp_path, "first", ["/bin/true"]))  # connected: the reader runs
    made: list[threading.Event] = []
    real_event = threading.Event
    monkeypatch.setattr(
        client_module.threading, "Event", lambda: made.append(real_event()) or made[-1]
    )
    answers: list[dict] = []
    done = real_event()
    client.start_async(
        start_spec(tmp_path, "async", ["/bin/true"]),
        lambda answer, pid, created: (answers.append(answer), done.set()),
    )
    assert done.wait(10) and "pid" in answers[0]
    assert made == []  # the reader hands the answer to the callback: nothing waits
