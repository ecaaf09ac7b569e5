"""The per-agent task supervisor over its socket: requests, answers, exits."""
import json
import os
import socket

import pytest

from orch.agent.drivers.supervision import SupervisorClient, supervisor_name
from orch.agent.supervisor import socket_address
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


def lines(sock: socket.socket, count: int) -> list[dict]:
    buf = b""
    while buf.count(b"\n") < count:
        chunk = sock.recv(65536)
        assert chunk, "supervisor closed the connection"
        buf += chunk
    return [json.loads(line) for line in buf.splitlines()[:count]]


def start_spec(tmp_path, name: str, argv: list[str]) -> dict:
    run_dir = tmp_path / name / ".orch"
    run_dir.mkdir(parents=True)
    return {"argv": argv, "env": {"PATH": os.environ["PATH"]}, "cwd": str(tmp_path),
            "stdout": str(tmp_path / name / "stdout.log"),
            "stderr": str(tmp_path / name / "stderr.log"),
            "claim_path": str(run_dir / "run-0.json"),
            "exit_path": str(run_dir / "run-0.exit.json"), "memory_mb": 0, "user": None}


def test_bad_requests_are_answered_and_do_not_stop_it(client, tmp_path):
    answer, pid, _ = client.start(start_spec(tmp_path, "ok", ["true"]))
    assert "pid" in answer and live(pid)
    sock = raw_connection(client.name)
    try:
        sock.sendall(b"not json\n" + json.dumps({"id": 7, "start": {}}).encode() + b"\n"
                     + json.dumps({"id": 8}).encode() + b"\n")
        replies = lines(sock, 3)
    finally:
        sock.close()
    assert all("bad request to the task supervisor" in r["error"] for r in replies)
    assert [r["id"] for r in replies] == [None, 7, 8]
    assert client.start(start_spec(tmp_path, "still", ["true"]))[0].get("pid")


def test_every_agent_connected_hears_of_an_exit(client, tmp_path):
    warm = start_spec(tmp_path, "warm", ["true"])              # the supervisor is up
    client.start(warm)
    assert wait_for(lambda: os.path.exists(warm["exit_path"]), 5.0)   # and quiet
    watcher = raw_connection(client.name)       # a second agent: it asked for nothing
    try:
        spec = start_spec(tmp_path, "t", ["sh", "-c", "sleep 0.2; exit 3"])
        answer, _, _ = client.start(spec)
        assert lines(watcher, 1) == [{"exited": answer["pid"]}]
        with open(spec["exit_path"]) as f:
            assert json.load(f)["exit_code"] == 3
    finally:
        watcher.close()


def test_a_run_claimed_once_is_not_started_again(client, tmp_path):
    spec = start_spec(tmp_path, "t", ["sleep", "30"])
    first, _, _ = client.start(spec)
    again, _, _ = client.start(spec)
    assert "pid" in first and again == {"claimed": True, "id": again["id"]}
    os.killpg(first["pid"], 9)


def test_a_failed_exec_is_an_error_answer(client, tmp_path):
    answer, _, _ = client.start(start_spec(tmp_path, "t", ["/nonexistent/program"]))
    assert answer["error"] == "failed to start task: executable not found: /nonexistent/program"


def test_it_leaves_when_no_agent_and_no_task_is_left(tmp_path):
    client = SupervisorClient(supervisor_name(str(tmp_path)))
    _, pid, _ = client.start(start_spec(tmp_path, "t", ["true"]))
    client.close()
    assert wait_for(lambda: not live(pid), 5.0)
