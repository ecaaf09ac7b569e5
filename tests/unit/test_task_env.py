"""The task environment (issue #11 item 2): ORCH_* variables, port variables,
``${ORCH_...}`` interpolation, for exec (run for real) and docker (its options)."""

from __future__ import annotations

import os

import pytest
from test_agent_runner import env  # noqa: F401  (fixture)

from orch.agent import taskenv
from orch.agent.drivers.base import TaskContext
from orch.agent.drivers.docker_config import create_options
from orch.agent.spec import parse_alloc
from orch.config import AgentConfig
from orch.errors import ValidationError
from orch.jobspec import parse_job
from orch.server.push import alloc_payload
from orch.structs import Allocation, Resources, TaskStatus

from waiting import wait_for

PORTS = [
    {"label": "http", "value": 21034, "to": None},
    {"label": "admin", "value": 21035, "to": 80},
]


def alloc_body(command, ports=PORTS, index=2, env_vars=None, job_type="service"):
    config = {"command": command}
    if env_vars is not None:
        config["env"] = env_vars
    return {
        "allocation_id": "a-env",
        "job_id": "web",
        "job_type": job_type,
        "task_group": {
            "name": "g",
            "meta": {"team": "core"},
            "tasks": [{"name": "t", "config": config, "resources": {"cpu": 50, "memory": 32}}],
        },
        "index": index,
        "ports": ports,
    }


def test_the_pushed_allocation_carries_its_ports_and_index():
    job = parse_job(
        {
            "job_id": "web",
            "type": "service",
            "task_groups": [
                {
                    "name": "g",
                    "network": {"ports": [{"label": "http"}]},
                    "tasks": [{"name": "t", "config": {"command": "x"}}],
                }
            ],
        }
    )
    alloc = Allocation(
        "a1", "web", "g", "n1", 4, ports=[{"label": "http", "value": 20001, "to": None}]
    )
    body = alloc_payload(alloc, job)
    assert body["index"] == 4 and body["ports"] == alloc.ports
    spec = parse_alloc(body)
    assert spec.index == 4 and list(spec.ports) == alloc.ports and spec.name == "web.g[4]"
    # Written to the agent's data dir and read back after a restart.
    assert parse_alloc(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "ports, message",
    [
        ("x", "ports: must be a list"),
        ([{"label": "a-b", "value": 1}], r"ports\[0\].label"),
        ([{"label": "a", "value": 0}], r"ports\[0\].value"),
        ([{"label": "a", "value": 1, "to": "80"}], r"ports\[0\].to"),
        ([{"label": "a"}], r"ports\[0\].value"),
    ],
)
def test_bad_ports_in_a_push_are_refused(ports, message):
    with pytest.raises(ValidationError, match=message):
        parse_alloc(alloc_body("x", ports=ports))


def test_task_env_has_every_variable():
    spec = parse_alloc(alloc_body("x"))
    config = AgentConfig(region="eu", datacenter="eu-west", bind="0.0.0.0")
    got = taskenv.task_env(spec, spec.tasks[0], config, alloc_dir="/d/a", task_dir="/d/a/t")
    orch = {k: v for k, v in got.items() if k.startswith("ORCH_")}
    assert orch == {
        "ORCH_ALLOC_ID": "a-env",
        "ORCH_ALLOC_INDEX": "2",
        "ORCH_ALLOC_NAME": "web.g[2]",
        "ORCH_JOB_ID": "web",
        "ORCH_GROUP_NAME": "g",
        "ORCH_TASK_GROUP": "g",
        "ORCH_TASK_NAME": "t",
        "ORCH_ALLOC_DIR": "/d/a",
        "ORCH_TASK_DIR": "/d/a/t",
        "ORCH_CPU_LIMIT": "50",
        "ORCH_MEMORY_LIMIT": "32",
        "ORCH_REGION": "eu",
        "ORCH_DC": "eu-west",
        "ORCH_PORT_http": "21034",
        "ORCH_HOST_PORT_http": "21034",
        "ORCH_IP_http": "127.0.0.1",
        "ORCH_ADDR_http": "127.0.0.1:21034",
        "ORCH_PORT_admin": "80",
        "ORCH_HOST_PORT_admin": "21035",
        "ORCH_IP_admin": "127.0.0.1",
        "ORCH_ADDR_admin": "127.0.0.1:21035",
        "ORCH_META_team": "core",
        "ORCH_META_TEAM": "core",
    }
    # Job files written for Nomad: every variable under its NOMAD_ name too.
    nomad = {k: v for k, v in got.items() if k.startswith("NOMAD_")}
    assert nomad == {
        **{f"NOMAD_{k[5:]}": v for k, v in orch.items()},
        "NOMAD_SHORT_ALLOC_ID": "a-env",
        "NOMAD_JOB_NAME": "web",
        "NOMAD_REGION": "global",
    }
    assert set(got) == set(orch) | set(nomad)
    assert nomad["NOMAD_ADDR_http"] == "127.0.0.1:21034" and nomad["NOMAD_PORT_admin"] == "80"
    config = {"command": "run ${NOMAD_PORT_http} ${ORCH_TASK_DIR}", "env": {"A": "${NOMAD_DC}"}}
    done = taskenv.interpolate_config(config, got)
    assert done == {"command": "run 21034 /d/a/t", "env": {"A": "eu-west"}}


def test_the_advertised_ip_is_the_advertise_host_else_the_bind():
    assert taskenv.advertise_ip(AgentConfig(advertise="http://10.1.2.3:4000")) == "10.1.2.3"
    assert taskenv.advertise_ip(AgentConfig(bind="192.0.2.9")) == "192.0.2.9"
    assert taskenv.advertise_ip(AgentConfig(bind="::")) == "127.0.0.1"


def test_interpolation_replaces_known_names_only():
    known = {"ORCH_PORT_http": "8000", "ORCH_JOB_ID": "web"}
    assert taskenv.interpolate("-p ${ORCH_PORT_http}", known) == "-p 8000"
    assert (
        taskenv.interpolate("${NOPE} $ORCH_JOB_ID $${ORCH_JOB_ID}", known)
        == "${NOPE} $ORCH_JOB_ID $web"
    )
    config = {
        "command": ["serve", "${ORCH_PORT_http}"],
        "args": ["--job=${ORCH_JOB_ID}", 3],
        "env": {"URL": "http://x:${ORCH_PORT_http}/", "N": 1},
        "cwd": "${ORCH_JOB_ID}",
    }
    assert taskenv.interpolate_config(config, known) == {
        "command": ["serve", "8000"],
        "args": ["--job=web", 3],
        "env": {"URL": "http://x:8000/", "N": 1},
        "cwd": "${ORCH_JOB_ID}",  # only command, args and env
    }
    assert config["command"] == ["serve", "${ORCH_PORT_http}"]  # the spec is not changed


def context(config):
    return TaskContext(
        alloc_id="a1",
        job_id="web",
        task_name="t",
        config=config,
        resources=Resources(100, 64),
        task_dir="/t",
        stdout_path="o",
        stderr_path="e",
        env={"ORCH_JOB_ID": "web"},
    )


@pytest.mark.parametrize(
    "config",
    [
        {"command": "echo ${ORCH_JOB_ID}"},
        {"command": ["echo", "${ORCH_JOB_ID}"]},
        {"command": "echo", "args": ["${ORCH_JOB_ID}"]},
        {"command": "env", "env": {"JOB": "${ORCH_JOB_ID}"}},
    ],
)
def test_a_config_with_a_reference_anywhere_is_interpolated(config):
    ctx = context(config)
    out = taskenv.interpolated(ctx)
    assert out is not ctx and "${" not in repr(out.config) and "web" in repr(out.config)


def test_a_config_without_references_is_the_context_itself():
    ctx = context({"command": ["echo", "$HOME", "{x}"], "args": ["$", 1], "env": {"A": "b"}})
    assert taskenv.interpolated(ctx) is ctx


def test_docker_publishes_each_port_to_its_to_and_sees_container_paths(tmp_path):
    ctx = TaskContext(
        alloc_id="a1",
        job_id="web",
        task_name="t",
        config={
            "image": "busybox",
            "command": "httpd -p ${ORCH_PORT_admin} -h ${ORCH_TASK_DIR}",
            "env": {"DATA": "${ORCH_ALLOC_DIR}/data", "LOGS": "${NOMAD_ALLOC_DIR}/logs"},
            "port": 9000,
        },
        resources=Resources(100, 64),
        task_dir=str(tmp_path / "t"),
        stdout_path="o",
        stderr_path="e",
        env={
            "ORCH_TASK_DIR": str(tmp_path / "t"),
            "ORCH_ALLOC_DIR": str(tmp_path),
            "NOMAD_ALLOC_DIR": str(tmp_path),
            "ORCH_PORT_admin": "80",
        },
        ports=tuple(PORTS),
    )
    options = create_options(ctx, "10.0.0.5")
    assert options["ports"] == {
        "21034/tcp": ("10.0.0.5", 21034),
        "80/tcp": ("10.0.0.5", 21035),
        "9000/tcp": ("10.0.0.5", 9000),  # the old single port keeps working
    }
    assert options["command"] == ["/bin/sh", "-c", "httpd -p 80 -h /local"]
    assert options["environment"]["DATA"] == "/alloc/data"
    assert options["environment"]["ORCH_ALLOC_DIR"] == "/alloc"
    assert options["environment"]["NOMAD_ALLOC_DIR"] == "/alloc"
    assert options["environment"]["LOGS"] == "/alloc/logs"
    assert options["volumes"][str(tmp_path)] == {"bind": "/alloc", "mode": "rw"}


def test_an_exec_task_sees_its_variables_and_interpolated_config(env):  # noqa: F811
    spec = parse_alloc(
        alloc_body(
            [
                "/bin/sh",
                "-c",
                'echo "${ORCH_ALLOC_NAME} $ORCH_PORT_http $URL $ORCH_CPU_LIMIT"'
                ' > "$ORCH_TASK_DIR/out.txt"',
            ],
            env_vars={"URL": "http://${ORCH_ADDR_admin}/${NOPE}"},
            job_type="batch",
        )
    )
    runner = env(spec)
    assert wait_for(lambda: runner.tasks["t"].state.status == TaskStatus.COMPLETE, timeout=30)
    out = os.path.join(runner.store.task_dir("a-env", "t"), "out.txt")
    with open(out) as f:
        assert f.read().split() == ["web.g[2]", "21034", "http://127.0.0.1:21035/${NOPE}", "50"]


def test_the_advertised_address_is_worked_out_once_per_setting(monkeypatch):
    taskenv._advertise_ip.cache_clear()
    parsed: list[str] = []
    real = taskenv.ipaddress.ip_address
    monkeypatch.setattr(
        taskenv.ipaddress, "ip_address", lambda host: parsed.append(host) or real(host)
    )
    config = AgentConfig(bind="192.0.2.77")
    for _ in range(3):  # every task's environment asks
        assert taskenv.advertise_ip(config) == "192.0.2.77"
    assert taskenv.advertise_ip(AgentConfig(bind="0.0.0.0", advertise=None)) == "127.0.0.1"
    assert parsed == ["192.0.2.77", "0.0.0.0"]
