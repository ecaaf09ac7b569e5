"""The agent's link to its server: TLS checks (--insecure vs --tls-skip-verify)
and how an unreachable server is reported."""

import itertools
import logging
import time

import pytest
from tiny_http import Recorder, closed_port_url, self_signed, wait_for

import orch.agent.loop as loop
from orch.__main__ import agent_config, build_parser
from orch.agent.agent import Agent
from orch.config import AgentConfig


@pytest.fixture
def agents(tmp_path):
    made = []

    def make(server_url, **kw):
        config = AgentConfig(
            server=server_url,
            data_dir=str(tmp_path / f"a{len(made)}"),
            kill_timeout=1.0,
            heartbeat_interval=30.0,
            **kw,
        )
        agent = Agent(config)
        made.append(agent)
        agent.start_loop("http://127.0.0.1:5555")
        return agent

    yield make
    for agent in made:
        agent.shutdown(stop_tasks=True)


@pytest.fixture
def https_server(tmp_path):
    server = Recorder(tls=self_signed(tmp_path))
    yield server
    server.close()


def test_insecure_alone_still_checks_the_server_certificate(https_server, agents, caplog):
    caplog.set_level(logging.DEBUG, logger="orch.agent.loop")
    agent = agents(https_server.url, insecure=True)
    assert not agent.loop.wait_registered(1.5)
    assert https_server.calls == []
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


def test_tls_skip_verify_connects_to_a_self_signed_server(https_server, agents):
    agent = agents(https_server.url, tls_skip_verify=True)
    assert agent.loop.wait_registered(5.0)
    assert "/register" in https_server.paths("POST")


def test_the_flags_are_apart():
    parse = build_parser().parse_args
    base = ["agent", "--server", "https://10.0.0.1:4646"]
    config = agent_config(parse([*base, "--insecure"]))
    assert config.insecure and not config.tls_skip_verify
    config = agent_config(parse([*base, "--tls-skip-verify"]))
    assert config.tls_skip_verify and not config.insecure


def test_tls_skip_verify_from_the_environment(monkeypatch):
    monkeypatch.setenv("ORCH_TLS_SKIP_VERIFY", "1")
    config = agent_config(build_parser().parse_args(["agent"]))
    assert config.tls_skip_verify and not config.insecure


def test_an_unreachable_server_is_a_warning_within_seconds_and_again(agents, caplog, monkeypatch):
    monkeypatch.setattr(loop, "WARN_EVERY", 0.5, raising=False)
    caplog.set_level(logging.WARNING, logger="orch.agent.loop")
    started = time.monotonic()
    agents(closed_port_url())

    def warnings():
        return [
            r
            for r in caplog.records
            if r.levelno == logging.WARNING and "cannot reach server" in r.getMessage()
        ]

    assert wait_for(lambda: warnings(), timeout=4.0)
    first = time.monotonic() - started
    assert first < 4.0
    assert wait_for(lambda: len(warnings()) >= 3, timeout=4.0), "repeated while it lasts"
    times = [r.created for r in warnings()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Retries run every second or faster; WARNINGs are spaced (bounded rate).
    assert all(gap >= 0.45 for gap in gaps), gaps
