"""`orch agent` against an https:// server with a self-signed certificate:
--insecure (an open bind) does not switch certificate checks off,
--tls-skip-verify does, and says so at start."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from tiny_http import Recorder, self_signed  # noqa: E402

from harness import wait_until  # noqa: E402


@pytest.fixture
def https_server(tmp_path):
    server = Recorder(tls=self_signed(tmp_path))
    yield server
    server.close()


def agent_args(tmp_path, server, name, *extra):
    return [
        "agent",
        "--server",
        server.url,
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / name),
        "--heartbeat-interval",
        "0.5",
        *extra,
    ]


def test_insecure_alone_still_verifies_the_server_certificate(https_server, proc_factory, tmp_path):
    agent = proc_factory("agent-insecure", agent_args(tmp_path, https_server, "a", "--insecure"))
    agent.wait_for_output(r"WARNING .*cannot reach server .*CERTIFICATE_VERIFY_FAILED", timeout=20)
    assert https_server.calls == []
    assert "does not verify the TLS certificate" not in agent.stderr()


def test_tls_skip_verify_connects_and_warns_at_start(https_server, proc_factory, tmp_path):
    agent = proc_factory("agent-skip", agent_args(tmp_path, https_server, "b", "--tls-skip-verify"))
    agent.wait_for_output(r"WARNING .*does not verify the TLS certificate", timeout=20)
    wait_until(
        lambda: "/register" in https_server.paths("POST"), timeout=20, what="register over https"
    )
    wait_until(
        lambda: "/heartbeat" in https_server.paths("POST"), timeout=10, what="heartbeat over https"
    )
