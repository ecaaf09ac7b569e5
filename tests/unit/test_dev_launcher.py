"""The dev launcher's pure parts, and its supervisor on plain sleeper processes."""

import os
import signal
import sys
import time
import zipfile
from dataclasses import replace

import pytest

from orch import __main__ as entry
from orch.config import DevConfig
from orch.dev import launcher
from orch.dev.launcher import (
    Supervisor,
    agent_argv,
    child_env,
    connect_host,
    dev_port_range,
    fresh_healthy_nodes,
    peek_exit,
    program,
    server_argv,
)

from waiting import wait_for


def test_program_reinvokes_a_zipapp(tmp_path, monkeypatch):
    pyz = tmp_path / "orch.pyz"
    with zipfile.ZipFile(pyz, "w") as zf:
        zf.writestr("__main__.py", "")
    monkeypatch.chdir(tmp_path)
    assert program("orch.pyz", "/usr/bin/python3") == ["/usr/bin/python3", "-S", str(pyz)]


def test_program_uses_dash_m_outside_a_zipapp(tmp_path):
    script = tmp_path / "__main__.py"
    script.write_text("print()")
    assert program(str(script), "/py") == ["/py", "-m", "orch"]
    assert program(str(tmp_path / "missing.pyz"), "/py") == ["/py", "-m", "orch"]
    assert program("", "/py") == ["/py", "-m", "orch"]
    assert program(None, None)[0] == sys.executable


def test_child_argv_parse_under_the_cli():
    config = DevConfig(agents=2, port=4747, node_ttl=3.0, heartbeat_interval=0.5, log_level="DEBUG")
    server = entry.server_config(
        entry.build_parser().parse_args(server_argv(config, 4747, "/d/server"))
    )
    assert (server.port, server.data_dir, server.node_ttl) == (4747, "/d/server", 3.0)
    prefixed = replace(config, ui_prefix="/orch")
    args = entry.build_parser().parse_args(server_argv(prefixed, 4747, "/d/server"))
    assert (entry.server_config(args).ui_prefix, server.ui_prefix) == ("/orch", "")
    args = entry.build_parser().parse_args(
        agent_argv(config, "http://127.0.0.1:4747", 1, "/d/agent-2")
    )
    agent = entry.agent_config(args)
    assert (agent.server, agent.port, agent.data_dir, agent.heartbeat_interval) == (
        "http://127.0.0.1:4747",
        0,
        "/d/agent-2",
        0.5,
    )
    assert agent.meta == {"dev_index": "1"}
    assert args.log_level == "DEBUG"
    # Agents on one host get disjoint dynamic port ranges (issue #11).
    assert agent.port_range == "26000-32000"
    assert dev_port_range(0, 2) == "20000-25999"
    slices = [dev_port_range(i, 3) for i in range(3)]
    bounds = [tuple(map(int, r.split("-"))) for r in slices]
    assert bounds[0][0] == 20000 and bounds[-1][1] == 32000
    assert all(a[1] + 1 == b[0] for a, b in zip(bounds, bounds[1:], strict=False))


def test_token_goes_through_the_environment_not_argv():
    config = DevConfig(token="s3cret")
    assert "s3cret" not in server_argv(config, 1, "/d") + agent_argv(config, "http://h:1", 0, "/d")
    env = child_env(
        {
            "PATH": "/bin",
            "ORCH_NODE_ID": "same",
            "ORCH_ADVERTISE": "http://x",
            "ORCH_TOKEN": "old",
            "ORCH_INSECURE": "1",
        },
        "s3cret",
    )
    assert env == {"PATH": "/bin", "ORCH_TOKEN": "s3cret", "ORCH_INSECURE": "1"}
    assert "ORCH_TOKEN" not in child_env({"ORCH_TOKEN": "old"}, None)


@pytest.mark.parametrize(
    "bind, host",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "127.0.0.1"),
        ("::", "[::1]"),
        ("::1", "[::1]"),
        ("10.0.0.5", "10.0.0.5"),
    ],
)
def test_connect_host(bind, host):
    assert connect_host(bind) == host


def test_fresh_healthy_nodes_skip_last_runs_nodes():
    nodes = [
        {"node_id": "a", "healthy": True, "last_heartbeat": 100.0},
        {"node_id": "b", "healthy": True, "last_heartbeat": 50.0},
        {"node_id": "c", "healthy": False, "last_heartbeat": 100.0},
        {"node_id": "d", "healthy": True},
    ]
    assert [n["node_id"] for n in fresh_healthy_nodes(nodes, since=90.0)] == ["a", "d"]


def test_free_port_is_bindable():
    import socket

    port = launcher.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# ---- supervisor on sleepers ------------------------------------------------

SLEEPER = ["-c", "import time; time.sleep(60)"]


def stubborn(ready):
    """A child that ignores SIGTERM, and says so by creating ``ready``."""
    return [
        "-c",
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(ready)!r}, 'w').close(); time.sleep(60)",
    ]


@pytest.fixture
def sup():
    supervisor = Supervisor([sys.executable], dict(os.environ))
    yield supervisor
    supervisor.stop(grace=0.5)


def test_children_get_their_own_session(sup):
    child = sup.start("server", SLEEPER)
    assert os.getpgid(child.pid) == child.pid != os.getpgid(0)


def test_first_dead_names_the_child_without_reaping_it(sup):
    sup.start("server", SLEEPER)
    agent = sup.start("agent 1", ["-c", "raise SystemExit(3)"])
    assert wait_for(lambda: sup.first_dead() is not None)
    assert sup.first_dead() is agent and agent.exit_code == 3
    assert agent.proc.returncode is None  # still a zombie: its pid cannot be reused
    os.kill(agent.pid, 0)


def test_with_several_servers_one_that_dies_is_told_and_the_others_carry_on(sup, tmp_path):
    """Any death stopped the whole cluster: `orch dev --servers 3` could not
    show the failover it is there to show."""
    import io

    out = io.StringIO()
    cluster = launcher.DevCluster(DevConfig(servers=2), sup, str(tmp_path), 4747, out)
    first = sup.start("server", ["-c", "raise SystemExit(9)"])
    second = sup.start("server 2", SLEEPER)
    sup.start("agent 1", SLEEPER)
    assert wait_for(lambda: first.exit_code is not None)
    assert cluster.fatal_death() is None and cluster.fatal_death() is None
    assert out.getvalue().count("server (pid") == 1 and "1 servers carry on" in out.getvalue()
    os.kill(second.pid, signal.SIGKILL)
    assert wait_for(lambda: cluster.fatal_death() is not None)  # the last one: stop


def test_an_agent_that_dies_stops_the_cluster(sup, tmp_path):
    cluster = launcher.DevCluster(DevConfig(servers=2), sup, str(tmp_path), 4747)
    sup.start("server", SLEEPER)
    sup.start("server 2", SLEEPER)
    agent = sup.start("agent 1", ["-c", "raise SystemExit(3)"])
    assert wait_for(lambda: cluster.fatal_death() is agent)


def test_stop_terms_then_kills_the_stubborn(sup, tmp_path):
    server = sup.start("server", SLEEPER)
    agent = sup.start("agent 1", stubborn(tmp_path / "ready"))
    assert wait_for((tmp_path / "ready").exists)
    started = time.monotonic()
    sup.stop(grace=0.5)
    assert time.monotonic() - started < 5
    assert server.proc.returncode == -signal.SIGTERM
    assert agent.proc.returncode == -signal.SIGKILL


def test_stop_ends_agents_before_the_server(sup, tmp_path):
    log = tmp_path / "order"
    code = (
        "import signal, sys, time\n"
        "def bye(*a):\n"
        f"    open({str(log)!r}, 'a').write(sys.argv[1] + '\\n'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        f"open({str(tmp_path)!r} + '/' + sys.argv[1], 'w').close()\n"
        "time.sleep(60)\n"
    )
    sup.start("server", ["-c", code, "server"])
    sup.start("agent 1", ["-c", code, "agent"])
    assert wait_for(lambda: (tmp_path / "server").exists() and (tmp_path / "agent").exists())
    sup.stop(grace=5)
    assert log.read_text().split() == ["agent", "server"]


def test_peek_exit_reports_signals():
    import subprocess

    proc = subprocess.Popen([sys.executable] + SLEEPER)
    assert peek_exit(proc) is None
    proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: peek_exit(proc) is not None)
    assert peek_exit(proc) == -signal.SIGTERM
    proc.wait()
    assert peek_exit(proc) == -signal.SIGTERM


def test_a_second_signal_cuts_the_grace_short(tmp_path):
    def sleep(seconds):
        sup.signals += 1  # as if Ctrl-C were pressed again while waiting
        time.sleep(seconds)

    sup = Supervisor([sys.executable], dict(os.environ), sleep=sleep)
    agent = sup.start("agent 1", stubborn(tmp_path / "ready"))
    assert wait_for((tmp_path / "ready").exists)
    started = time.monotonic()
    sup.stop(grace=30)
    assert time.monotonic() - started < 5
    assert agent.proc.returncode == -signal.SIGKILL


def test_a_taken_port_fails_at_once_naming_it(capsys, monkeypatch):
    import socket

    started = []
    monkeypatch.setattr(launcher.Supervisor, "start", lambda self, name, args: started.append(name))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert launcher.port_taken("127.0.0.1", port) == "address already in use"
        assert launcher.run(DevConfig(port=port, bind="127.0.0.1")) == 1
    assert started == []  # no server, no agent
    assert capsys.readouterr().err.strip() == (
        f"orch dev: cannot listen on 127.0.0.1:{port}: address already in use; "
        "pick another --port (or 0 for a free one)"
    )
    assert launcher.port_taken("127.0.0.1", port) is None
