"""The agent's health checks against real tiny servers and real tasks."""

import json
import socket
import time

import pytest
from tiny_http import Mute, Recorder

from orch.agent import checks as checks_module
from orch.agent.allocrunner import AllocRunner
from orch.agent.checks import CheckRunner, check_host, http_probe, run_script, tcp_probe
from orch.agent.drivers.exec import ExecDriver
from orch.agent.spec import parse_alloc
from orch.agent.state import AgentStore
from orch.config import AgentConfig

from waiting import wait_for


def http_check(host, port, path, timeout):
    return http_probe(host, port, path, timeout)[:2]


def tcp_check(host, port, timeout):
    return tcp_probe(host, port, timeout)[:2]


@pytest.fixture
def server():
    """A loopback HTTP server: /ok answers 200, /redirect 302, anything else 500."""
    codes = {"/ok": 200, "/redirect": 302}
    recorder = Recorder(lambda method, path, body: (codes.get(path, 500), {"path": path}))
    yield recorder
    recorder.close()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_http_check_passes_on_2xx_and_3xx_and_fails_otherwise(server):
    port = port_of(server.url)
    assert http_check("127.0.0.1", port, "/ok", 2)[0] is True
    assert http_check("127.0.0.1", port, "/redirect", 2)[0] is True
    ok, output = http_check("127.0.0.1", port, "/broken", 2)
    assert ok is False and output.startswith("HTTP 500") and "/broken" in output


def test_http_check_times_out():
    mute = Mute()
    try:
        started = time.monotonic()
        ok, output = http_check("127.0.0.1", port_of(mute.url), "/", 0.3)
        assert ok is False and "timed out" in output
        assert time.monotonic() - started < 2
    finally:
        mute.close()


def test_tcp_check_open_and_closed():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    assert tcp_check("127.0.0.1", port, 1)[0] is True
    listener.close()
    ok, output = tcp_check("127.0.0.1", port, 1)
    assert ok is False and "refused" in output.lower()


def test_script_check_exit_codes_output_and_timeout():
    assert run_script("echo fine", 2, None) == (True, "fine\n")
    ok, output = run_script("echo broken >&2; exit 3", 2, None)
    assert ok is False and output == "broken\n"
    assert run_script(["/bin/sh", "-c", "exit 0"], 2, None) == (True, "exit code 0")
    ok, output = run_script("head -c 5000 /dev/zero | tr '\\0' x", 2, None)
    assert ok is True and len(output) == 1024
    started = time.monotonic()
    ok, output = run_script("sleep 30", 0.3, None)
    assert ok is False and "timed out" in output and time.monotonic() - started < 5
    assert run_script("echo $CHECK_VAR", 2, {"CHECK_VAR": "from-env", "PATH": "/bin"}) == (
        True,
        "from-env\n",
    )


def test_a_script_that_leaves_a_child_holding_its_output_answers_in_time():
    """The child kept the pipe open: the wait for its end held a pool worker
    for the child's whole life (4 such checks froze every check of a node)."""
    started = time.monotonic()
    assert run_script("setsid sleep 30 & echo started", 1, None) == (True, "started\n")
    assert time.monotonic() - started < 0.9
    started = time.monotonic()
    ok, output = run_script("exec >&-; sleep 30", 0.5, None)  # closes the pipe, runs on
    assert ok is False and "timed out" in output and time.monotonic() - started < 3


def test_a_chatty_script_is_read_to_its_end_and_only_its_start_kept():
    """200 MB of output: all of it was held in the agent before the cut."""
    ok, output = run_script("head -c 200000000 /dev/zero | tr '\\0' y; exit 4", 20, None)
    assert ok is False and output == "y" * 1024


def test_a_check_output_with_nul_reaches_the_report_without_it(make):
    """A NUL got the node's every heartbeat refused (400), then the node
    declared down and its allocations lost."""
    check = {"type": "script", "command": "printf 'a\\000b'", "interval": 0.1, "timeout": 2}
    runner = make([{"name": "s", "checks": [check]}])
    assert wait_for(lambda: runner.health() == "healthy", 10)
    entry = json.loads(runner.heartbeat_report()[1])
    assert entry["checks"]["s/script-0"]["output"] == "a\ufffdb"


def test_check_host_follows_the_advertised_address():
    assert check_host(AgentConfig()) == "127.0.0.1"
    assert check_host(AgentConfig(bind="0.0.0.0")) == "127.0.0.1"
    assert check_host(AgentConfig(bind="0.0.0.0", advertise="http://10.0.0.5:4647")) == "10.0.0.5"


@pytest.fixture
def make(tmp_path):
    """Real allocations (exec driver) watched by a real CheckRunner."""
    store = AgentStore(str(tmp_path))
    config = AgentConfig(data_dir=str(tmp_path), restart_delay=0.05, kill_timeout=1.0)
    checks = CheckRunner("127.0.0.1")
    runners = []

    def build(services, command="sleep 60", kick=False):
        """kick: wired as the agent does it, and watched before its tasks start."""
        spec = parse_alloc(
            {
                "allocation_id": f"a{len(runners)}",
                "job_id": "j1",
                "job_type": "service",
                "task_group": {
                    "name": "g",
                    "tasks": [{"name": "t", "config": {"command": command}}],
                    "services": services,
                },
            }
        )
        cell: list[AllocRunner] = []
        on_change = (lambda: checks.kick(cell[0]) if cell else None) if kick else (lambda: None)
        runner = AllocRunner(spec, config, {"exec": ExecDriver()}, store, on_change)
        cell.append(runner)
        runners.append(runner)
        if kick:
            checks.watch(runner)
        runner.start()
        if not kick:
            checks.watch(runner)
        return runner

    build.checks = checks
    yield build
    checks.close()
    for runner in runners:
        runner.kill("test teardown", fails=False)


def test_health_follows_the_checks_and_reaches_the_report(make, server):
    port = port_of(server.url)
    good = {"type": "http", "path": "/ok", "interval": 0.1, "timeout": 1}
    runner = make([{"name": "web", "port": port, "checks": [good, {"type": "tcp"}]}])
    assert wait_for(lambda: runner.health() == "healthy", 10)
    entry = json.loads(runner.heartbeat_report()[1])
    assert entry["health"] == "healthy"
    assert set(entry["checks"]) == {"web/http-0", "web/tcp-1"}
    assert entry["checks"]["web/http-0"]["output"].startswith("HTTP 200")
    # The same result again is not a change: the encoded report is kept.
    report = runner.heartbeat_report()
    time.sleep(0.4)
    assert runner.heartbeat_report() is report

    bad = make([{"name": "api", "port": port, "checks": [{**good, "path": "/down"}]}])
    assert wait_for(lambda: bad.health() == "unhealthy", 10)
    result = bad.to_dict()["checks"]["api/http-0"]
    assert result["status"] == "failing" and result["output"].startswith("HTTP 500")


def test_checks_run_only_while_the_tasks_run(make, server):
    service = {"name": "web", "port": port_of(server.url), "checks": [{"type": "tcp"}]}
    service["checks"][0]["interval"] = 0.1
    runner = make([service])
    assert wait_for(lambda: runner.health() == "healthy", 10)
    runner.kill("test", fails=False)
    assert wait_for(lambda: runner.health() is None and "checks" not in runner.to_dict(), 10)


def test_a_check_waiting_for_its_tasks_runs_as_soon_as_they_start(make, server, monkeypatch):
    # Interval and idle poll a minute long: only the kick on the tasks'
    # start can run the check within the wait.
    monkeypatch.setattr(checks_module, "IDLE_POLL", 60.0)
    service = {"name": "web", "port": port_of(server.url), "checks": [{"type": "tcp"}]}
    service["checks"][0]["interval"] = 60
    started = time.monotonic()
    runner = make([service], kick=True)
    assert wait_for(lambda: runner.health() == "healthy", 10)
    assert time.monotonic() - started < 10


def test_a_kicked_check_runs_once_per_interval(make, server, monkeypatch):
    # The idle entry a kick replaced falls due soon after: it must not run it again.
    monkeypatch.setattr(checks_module, "IDLE_POLL", 0.3)
    check = {"type": "http", "path": "/ok", "interval": 60, "timeout": 1}
    runner = make([{"name": "web", "port": port_of(server.url), "checks": [check]}], kick=True)
    assert wait_for(lambda: runner.health() == "healthy", 10)
    time.sleep(0.8)
    assert server.paths() == ["/ok"]


def test_check_restart_restarts_the_task_after_the_limit(make, server):
    check = {"type": "http", "path": "/down", "interval": 0.1, "timeout": 1}
    restart = {"limit": 3, "grace": 0}
    runner = make(
        [{"name": "web", "port": port_of(server.url), "checks": [check], "check_restart": restart}]
    )
    task = runner.tasks["t"]
    assert wait_for(lambda: task.state.restarts >= 1, 15)
    messages = [e["message"] for e in task.state.events if e["type"] == "Restarting"]
    assert messages[0] == "restarted by check web/http-0: 3 consecutive failures"
    assert wait_for(lambda: task.state.status == "running", 10)
    # Not counted against the restart policy: the task keeps coming back.
    assert wait_for(lambda: task.state.restarts >= 3, 20)
    assert task.state.status in ("running", "pending")


def test_failures_within_the_grace_period_do_not_restart(make, server):
    check = {"type": "http", "path": "/down", "interval": 0.1, "timeout": 1}
    runner = make(
        [
            {
                "name": "web",
                "port": port_of(server.url),
                "checks": [check],
                "check_restart": {"limit": 1, "grace": 60},
            }
        ]
    )
    assert wait_for(lambda: runner.health() == "unhealthy", 10)
    time.sleep(0.5)
    assert runner.tasks["t"].state.restarts == 0


def test_unwatched_allocations_are_no_longer_checked(make, server):
    check = {"type": "http", "path": "/ok", "interval": 0.1, "timeout": 1}
    runner = make([{"name": "web", "port": port_of(server.url), "checks": [check]}])
    assert wait_for(lambda: len(server.paths()) >= 2, 10)
    make.checks.unwatch(runner.spec.allocation_id)
    seen = len(server.paths())
    time.sleep(0.8)  # eight intervals
    # Only a probe already under way at the unwatch may still land (on a
    # loaded host, any time later): one check, so one probe at most.
    assert len(server.paths()) <= seen + 1


def test_an_unresolved_port_label_is_never_dialed(make):
    # A label the server could not resolve must not become a named port ("http" = 80).
    runner = make([{"name": "web", "port": "http", "checks": [{"type": "tcp", "interval": 0.1}]}])
    assert wait_for(lambda: runner.health() == "unhealthy", 10)
    output = runner.to_dict()["checks"]["web/tcp-0"]["output"]
    assert output == "the service has no port to check"


def _check(kind: str, interval: float) -> checks_module.Check:
    spec = {"name": "c", "type": kind, "interval": interval, "timeout": 1}
    return checks_module.Check(alloc=None, key="web/c", spec=spec, port=1, restart=None)


def test_a_fresh_check_retries_quickly_while_nothing_listens():
    check = _check("http", 1.0)
    delays = [check.next_delay(True, 0.5) for _ in range(5)]
    assert delays == [(0.01, True), (0.02, True), (0.04, True), (0.05, True), (0.05, True)]
    assert check.next_delay(False, 0.6) == (1.0, False)  # it answered (passing or not)
    # Something listened once: a later refusal waits out the interval.
    assert check.next_delay(True, 0.7) == (1.0, False)
    check.rearm()  # the tasks stopped: their next start is fresh again
    assert check.next_delay(True, 0.1) == (0.01, True)


def test_quick_retries_stop_at_the_interval_the_window_and_an_answer():
    short = _check("tcp", 0.03)
    assert [short.next_delay(True, 0.1) for _ in range(3)] == [
        (0.01, True),
        (0.02, True),
        (0.03, False),
    ]
    late = _check("http", 1.0)
    assert late.next_delay(True, checks_module.QUICK_WINDOW + 1) == (1.0, False)
    assert late.next_delay(True, 0.1) == (1.0, False)
    assert _check("http", 1.0).next_delay(True, None) == (1.0, False)
    # A 503 while warming up is an answer: the service sees only its interval.
    assert _check("http", 1.0).next_delay(False, 0.1) == (1.0, False)


def test_probes_tell_a_refusal_from_an_answer(server):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: refused
    try:
        closed = sock.getsockname()[1]
        assert checks_module.tcp_probe("127.0.0.1", closed, 1)[2] is True
        assert checks_module.http_probe("127.0.0.1", closed, "/", 1)[2] is True
    finally:
        sock.close()
    ok, output, refused = checks_module.http_probe("127.0.0.1", port_of(server.url), "/down", 1)
    assert (ok, refused) == (False, False) and output.startswith("HTTP 500")


def test_a_task_listening_late_is_seen_long_before_its_interval(make):
    # The port is bound but not listening when the task starts (refused),
    # listening 0.3 s later: only a quick retry can see it within the wait.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        check = {"type": "tcp", "interval": 60, "timeout": 1}
        runner = make([{"name": "web", "port": sock.getsockname()[1], "checks": [check]}])
        assert wait_for(lambda: runner.health() == "unhealthy", 10)
        sock.listen(4)
        listening = time.monotonic()
        assert wait_for(lambda: runner.health() == "healthy", 10)
        assert time.monotonic() - listening < 5
    finally:
        sock.close()


def test_quick_retries_do_not_hasten_check_restart(make):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # never listens: every probe is refused
    probes = []
    real_probe = make.checks.probe

    def counted(check):
        probes.append(time.monotonic())
        return real_probe(check)

    make.checks.probe = counted  # counts the real probes, changes nothing
    try:
        check = {"type": "tcp", "interval": 1.0, "timeout": 1}
        restart = {"limit": 2, "grace": 0}
        service = {"name": "web", "port": sock.getsockname()[1], "checks": [check]}
        runner = make([{**service, "check_restart": restart}])
        task = runner.tasks["t"]
        assert wait_for(lambda: len(probes) >= 4, 10)  # quick retries have run
        # Two failures counted a whole interval apart: no restart before then
        # (unless the host was so slow that the interval has gone by anyway).
        assert task.state.restarts == 0 or time.monotonic() - probes[0] > 0.9
        assert wait_for(lambda: task.state.restarts >= 1, 15)
    finally:
        sock.close()


def test_a_changed_check_result_wakes_the_heartbeat_and_a_repeat_does_not(tmp_path):
    # The agent wires on_change to NodeLoop.notify: a health change is sent at
    # once, not at the next heartbeat tick; an unchanged result sends nothing.
    spec = parse_alloc(
        {
            "allocation_id": "a1",
            "job_id": "j1",
            "job_type": "service",
            "task_group": {"name": "g", "tasks": [{"name": "t", "config": {"command": "true"}}]},
        }
    )
    woken = []
    runner = AllocRunner(
        spec,
        AgentConfig(data_dir=str(tmp_path)),
        {},
        AgentStore(str(tmp_path)),
        lambda: woken.append(1),
    )
    runner.record_check("web/http-0", False, "refused", 1.0)
    runner.record_check("web/http-0", False, "refused", 1.1)
    assert len(woken) == 1
    runner.record_check("web/http-0", True, "HTTP 200: ok", 1.2)
    assert len(woken) == 2 and runner.check_results["web/http-0"]["status"] == "passing"
