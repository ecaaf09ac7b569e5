"""A node's datacenter, as Nomad's: `orch agent --datacenter` (dc1 by default),
what job files' `datacenters` name. Before, a file naming dc1 was matched
against the node's region (`global` in `orch dev`) and never placed."""

from __future__ import annotations

import pytest

from orch.__main__ import agent_config, build_parser
from orch.agent.fingerprint import Fingerprint
from orch.agent.loop import NodeLoop
from orch.config import AgentConfig
from orch.structs import Node, Resources


def agent_args(*extra: str):
    return build_parser().parse_args(["agent", "--server", "http://127.0.0.1:1", *extra])


def test_an_agent_is_in_dc1_unless_told(monkeypatch):
    monkeypatch.delenv("ORCH_DATACENTER", raising=False)
    assert agent_config(agent_args()).datacenter == "dc1"
    assert agent_config(agent_args("--datacenter", "eu-west")).datacenter == "eu-west"
    monkeypatch.setenv("ORCH_DATACENTER", "us-east")
    assert agent_config(agent_args()).datacenter == "us-east"


@pytest.mark.parametrize("bad", ["", "eu *", "dc?", "dc[1]", "x" * 129, "a\tb"])
def test_a_datacenter_no_file_could_name_is_refused(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        agent_args("--datacenter", bad)
    assert exit_.value.code == 2
    assert "--datacenter: must be 1-128 printable characters" in capsys.readouterr().err


def test_the_agent_registers_its_datacenter_among_its_attributes():
    fp = Fingerprint(Resources(cpu=1000, memory=512), {"os": "linux"})
    config = AgentConfig(server="http://127.0.0.1:1", datacenter="eu-west")
    loop = NodeLoop(config, "n1", "http://127.0.0.1:9", fp, lambda *_: {}, lambda: (0, 0))
    attributes = loop.register_body()["attributes"]
    assert attributes == {"os": "linux", "datacenter": "eu-west"}


def test_a_node_that_names_none_is_in_dc1():
    assert Node(node_id="n").attribute("datacenter") == "dc1"
    assert Node(node_id="n", attributes={"datacenter": "dc2"}).attribute("datacenter") == "dc2"
    assert Node(node_id="n", region="dc2").attribute("datacenter") == "dc1"
