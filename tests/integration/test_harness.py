"""The harness itself: polling gives up when it must, Proc kills what it started.

A small Python script stands in for the zipapp (Proc runs ``python SCRIPT
args``), so most of these run without dist/orch.pyz; the last, on what a
killed agent leaves, runs a real cluster.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time

import pytest

from tests.jobspec import exec_job

from harness import Cluster, GiveUp, Proc, agent_cgroups, free_port, pid_alive, wait_until

SCRIPT = textwrap.dedent("""
    import os, subprocess, sys, time
    if sys.argv[1] == "exit":
        print("bye", file=sys.stderr, flush=True)
        sys.exit(3)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    open(sys.argv[2], "w").write(str(child.pid))
    print("ready", file=sys.stderr, flush=True)
    time.sleep(60)
""")


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "fake_orch.py"
    path.write_text(SCRIPT)
    return path


def test_wait_until_returns_the_value_and_names_what_timed_out():
    calls = []
    assert wait_until(lambda: calls.append(1) or len(calls) >= 3 and "done") == "done"

    def broken():
        raise KeyError("missing")

    with pytest.raises(AssertionError, match=r"waiting for the thing; last error: KeyError"):
        wait_until(broken, timeout=0.2, what="the thing")


def test_wait_until_gives_up_at_once_on_giveup():
    started = time.monotonic()

    def dead():
        raise GiveUp("it died")

    with pytest.raises(GiveUp, match="it died"):
        wait_until(dead, timeout=30)
    assert time.monotonic() - started < 5


def test_free_port_is_bindable():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


def test_stop_kills_the_process_group(script, tmp_path):
    pidfile = tmp_path / "child.pid"
    proc = Proc(["run", str(pidfile)], tmp_path / "p.log", pyz=script)
    try:
        proc.wait_for_output("ready", timeout=20)
        child = int(pidfile.read_text())
        assert proc.alive() and pid_alive(child)
        assert os.getpgid(child) == proc.pid != os.getpgid(0)  # its own session
        assert proc.stop(grace=5) == -signal.SIGTERM
        wait_until(lambda: not pid_alive(child), 10, what="the group's other process gone")
        assert "ready" in proc.log()
    finally:
        proc.kill()


def test_wait_for_output_fails_fast_when_the_process_exits(script, tmp_path):
    proc = Proc(["exit"], tmp_path / "out.log", pyz=script, stderr_path=tmp_path / "err.log")
    try:
        started = time.monotonic()
        with pytest.raises(GiveUp, match="bye"):
            proc.wait_for_output("never printed", timeout=60)
        assert time.monotonic() - started < 30
        assert proc.wait(10) == 3
        assert proc.stderr() == "bye\n" and proc.stdout() == ""
    finally:
        proc.kill()


def test_orch_settings_of_the_developer_stay_out(script, tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_TOKEN", "from-my-shell")
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, sys; print(os.environ.get('ORCH_TOKEN'), "
        "os.environ.get('ORCH_DATA'), file=sys.stderr)"
    )
    proc = Proc([], tmp_path / "env.log", {"ORCH_DATA": "given"}, pyz=probe)
    try:
        assert proc.wait(20) == 0
        assert proc.log() == "None given\n"
    finally:
        proc.kill()


def test_stop_all_takes_back_the_idle_cgroups_of_a_killed_agent(tmp_path, pyz):
    # A killed agent cannot drain its pool of idle task cgroups: the harness
    # removes them (empty, and named for that agent's data dir) at the end.
    cluster = Cluster(tmp_path)
    try:
        cluster.start_server()
        cluster.start_agent("a")
        for i in range(3):
            resp = cluster.post("/jobs", exec_job(f"b{i}", "true"))
            assert resp.status_code == 200, resp.text
        for i in range(3):
            cluster.wait_job(f"b{i}", "complete")
        cluster.agents["a"].kill9()
        left = agent_cgroups(tmp_path / "agent-a")
        if left is None:
            pytest.skip("no writable cgroups here")
        assert left and all(left.values()), left
    finally:
        cluster.stop_all()
    assert agent_cgroups(tmp_path / "agent-a") == {}
