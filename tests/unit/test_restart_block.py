"""A group's restart block: validated with Nomad's defaults, stored, pushed, obeyed by the agent."""

from __future__ import annotations

import pytest

from orch.agent.allocrunner import AllocRunner
from orch.agent.drivers.exec import ExecDriver
from orch.agent.spec import parse_alloc
from orch.agent.state import AgentStore
from orch.agent.taskrunner import RestartTracker
from orch.codec import job_from
from orch.config import AgentConfig
from orch.errors import ValidationError
from orch.jobspec import parse_job
from orch.server.push import alloc_payload
from orch.structs import Allocation, AllocStatus
from orch.validation.restart import restart
from tests.jobspec import exec_job

from waiting import wait_for


def test_left_out_fields_take_nomads_defaults_for_the_job_type():
    assert restart({"attempts": 1}, "r", parse_job(exec_job("j", "x")).type) == {
        "attempts": 1,
        "interval": 86400.0,
        "delay": 15.0,
        "mode": "fail",
    }
    job = parse_job(exec_job("j", "x", type_="service", restart={"delay": "2s", "mode": "delay"}))
    assert job.task_groups[0].restart == {
        "attempts": 2,
        "interval": 1800.0,
        "delay": 2.0,
        "mode": "delay",
    }
    assert parse_job(exec_job("j", "x")).task_groups[0].restart is None


@pytest.mark.parametrize(
    "block, message",
    [
        ("x", "restart: must be a JSON object"),
        ({"attempts": -1}, "restart.attempts: must be an integer"),
        ({"attempts": True}, "restart.attempts: must be an integer"),
        ({"attempts": 1001}, "restart.attempts"),
        ({"interval": "0.5s"}, "restart.interval: must be at least 1s"),
        ({"delay": "8d"}, "restart.delay"),
        ({"mode": "retry"}, "restart.mode: must be one of fail, delay"),
        ({"render": True}, "restart.render: unknown field"),
    ],
)
def test_bad_restart_blocks_are_refused(block, message):
    with pytest.raises(ValidationError, match=message):
        parse_job(exec_job("j", "x", restart=block))


def test_stored_pushed_and_read_back_by_the_agent():
    job = parse_job(exec_job("j", "x", restart={"attempts": 4, "interval": "1m", "delay": "1s"}))
    group = job.task_groups[0]
    assert job_from(job.to_dict()).task_groups[0].restart == group.restart  # the store's codec
    other = parse_job(exec_job("j", "x", restart={"attempts": 5}))
    assert other.task_groups[0].spec_hash() != group.spec_hash()  # agents learn it: replaced
    alloc = Allocation("a1", "j", "g", "n1", 0)
    body = alloc_payload(alloc, job)
    assert body["task_group"]["restart"] == group.restart
    spec = parse_alloc(body)
    assert spec.restart == group.restart and parse_alloc(spec.to_dict()) == spec


def test_delay_mode_waits_for_the_window_instead_of_failing():
    clock = [0.0]
    tracker = RestartTracker(2, 30, 1, now=lambda: clock[0], mode="delay")
    assert tracker.next_delay() == 1 and tracker.next_delay() == 1
    clock[0] = 10.0
    assert tracker.next_delay() == 20.0  # what is left of the 30 s window
    clock[0] = 31.0
    assert tracker.next_delay() == 1  # the new window opened by that restart


@pytest.fixture
def run(tmp_path):
    """Runs one allocation of a batch group with the real exec driver."""
    store = AgentStore(str(tmp_path))
    config = AgentConfig(data_dir=str(tmp_path), restart_attempts=5, restart_delay=0.05)
    runners = []

    def start(command: str, restart_block: dict | None) -> AllocRunner:
        body = {
            "allocation_id": f"a{len(runners)}",
            "job_id": "j",
            "job_type": "batch",
            "task_group": {
                "name": "g",
                "tasks": [{"name": "t", "driver": "exec", "config": {"command": command}}],
            },
        }
        if restart_block is not None:
            body["task_group"]["restart"] = restart_block
        runner = AllocRunner(parse_alloc(body), config, {"exec": ExecDriver()}, store, lambda: None)
        runners.append(runner)
        runner.start()
        return runner

    yield start
    for runner in runners:
        runner.kill("test teardown", fails=False)


def test_a_batch_task_with_a_restart_block_restarts_after_failures_only(run, tmp_path):
    counter = tmp_path / "count"
    policy = {"attempts": 3, "interval": 60.0, "delay": 0.05, "mode": "fail"}
    # Fails twice, then succeeds: two restarts, then complete (no restart after success).
    runner = run(f'echo x >> {counter}; [ "$(wc -l < {counter})" -ge 3 ]', policy)
    assert wait_for(lambda: runner.status() == AllocStatus.COMPLETE, timeout=20)
    state = runner.tasks["t"].state
    assert state.restarts == 2 and counter.read_text().count("x") == 3
    # Out of attempts: failed, as Nomad's mode "fail".
    runner = run("exit 4", {**policy, "attempts": 1})
    assert wait_for(lambda: runner.status() == AllocStatus.FAILED, timeout=20)
    assert runner.tasks["t"].state.restarts == 1


def test_a_batch_task_without_the_block_never_restarts(run):
    runner = run("exit 4", None)
    assert wait_for(lambda: runner.status() == AllocStatus.FAILED, timeout=20)
    assert runner.tasks["t"].state.restarts == 0
