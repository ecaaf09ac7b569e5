"""Graceful stops: kill_signal, kill_timeout, shutdown_delay from job file to process."""

import os
import signal
import threading
import time

import pytest

from orch import codec
from orch.agent.agent import Agent
from orch.agent.allocrunner import AllocRunner
from orch.agent.drivers.exec import ExecDriver
from orch.agent.spec import parse_alloc
from orch.agent.state import AgentStore
from orch.config import AgentConfig
from orch.errors import NotFound, ValidationError
from orch.jobspec import parse_job
from orch.server.push import alloc_payload
from orch.structs import Allocation, AllocStatus, Resources

from helpers import TaskStarter, read_or_empty, store_task_context
from waiting import group_pids, wait_for


def job_body(task_extra=None, group_extra=None):
    task = {"name": "t", "config": {"command": "sleep 300"}, **(task_extra or {})}
    group = {"name": "g", "tasks": [task], **(group_extra or {})}
    return {"job_id": "j1", "type": "service", "task_groups": [group]}


# -- validation and the wire ----------------------------------------------------


def test_fields_are_parsed_and_normalised():
    job = parse_job(
        job_body({"kill_signal": "int", "kill_timeout": "1m30s"}, {"shutdown_delay": "2s"})
    )
    group = job.task_groups[0]
    assert group.tasks[0].kill_signal == "SIGINT"
    assert group.tasks[0].kill_timeout == 90.0
    assert group.shutdown_delay == 2.0


@pytest.mark.parametrize(
    "task_extra, group_extra, message",
    [
        ({"kill_signal": "SIGKILL"}, None, "task_groups[0].tasks[0].kill_signal: must be one of"),
        ({"kill_signal": 15}, None, "task_groups[0].tasks[0].kill_signal: must be one of"),
        ({"kill_signal": "SIGNOPE"}, None, "kill_signal: must be one of SIGTERM, SIGINT"),
        ({"kill_timeout": "11m"}, None, "tasks[0].kill_timeout: must be from 0 to 10m"),
        ({"kill_timeout": -1}, None, "tasks[0].kill_timeout: must be from 0 to 10m"),
        ({"kill_timeout": "soon"}, None, "tasks[0].kill_timeout: must be a number of seconds"),
        (None, {"shutdown_delay": "1h"}, "task_groups[0].shutdown_delay: must be from 0 to 10m"),
        (None, {"shutdown_delay": True}, "task_groups[0].shutdown_delay: must be a number"),
    ],
)
def test_bad_values_name_the_field(task_extra, group_extra, message):
    with pytest.raises(ValidationError) as exc:
        parse_job(job_body(task_extra, group_extra))
    assert message in str(exc.value)


def test_defaults_leave_the_spec_and_its_hash_as_they_were():
    plain = parse_job(job_body())
    group = plain.task_groups[0]
    assert group.tasks[0].kill_signal is None and group.tasks[0].kill_timeout is None
    assert group.shutdown_delay == 0.0
    assert "kill_signal" not in group.tasks[0].to_dict()
    assert "shutdown_delay" not in group.to_dict()
    delayed = parse_job(job_body(group_extra={"shutdown_delay": "3s"}))
    # How old copies stop is not a reason to replace them.
    assert delayed.task_groups[0].spec_hash() == group.spec_hash()


def test_codec_round_trip_and_the_agent_payload():
    job = parse_job(
        job_body({"kill_signal": "SIGUSR1", "kill_timeout": "2s"}, {"shutdown_delay": 1.5})
    )
    back = codec.job_from(job.to_dict())
    assert back.task_groups == job.task_groups
    alloc = Allocation("a1", "j1", "g", "n1", 0, Resources(100, 64))
    payload = alloc_payload(alloc, job)
    assert payload["task_group"]["shutdown_delay"] == 1.5
    assert payload["task_group"]["tasks"][0]["kill_signal"] == "SIGUSR1"
    spec = parse_alloc(payload)
    assert spec.shutdown_delay == 1.5
    assert spec.tasks[0].kill_signal == "SIGUSR1" and spec.tasks[0].kill_timeout == 2.0
    assert parse_alloc(spec.to_dict()) == spec


def test_the_agent_validates_what_it_is_sent():
    payload = alloc_payload(Allocation("a1", "j1", "g", "n1", 0), parse_job(job_body()))
    payload["task_group"]["shutdown_delay"] = "forever"
    with pytest.raises(ValidationError, match="task_group.shutdown_delay"):
        parse_alloc(payload)
    payload["task_group"]["shutdown_delay"] = 0
    payload["task_group"]["tasks"][0]["kill_signal"] = "SIGSTOP"
    with pytest.raises(ValidationError, match=r"task_group.tasks\[0\].kill_signal"):
        parse_alloc(payload)


# -- the exec driver ----------------------------------------------------------


@pytest.fixture
def start(tmp_path):
    task_dir = tmp_path / "allocs" / "a1" / "t"
    run = TaskStarter(ExecDriver(), "a1", task_dir, env={"ORCH_TASK_DIR": str(task_dir)})
    yield run
    run.stop_all(0.5)


def test_exec_stop_sends_the_kill_signal(start, tmp_path):
    marker = tmp_path / "got"
    ctx, handle = start(f"trap 'echo INT > {marker}; exit 0' INT; echo ready; sleep 300 & wait")
    assert wait_for(lambda: read_or_empty(ctx.stdout_path) == "ready\n")
    start.driver.stop(handle, 5.0, signal.SIGINT)
    assert read_or_empty(marker) == "INT\n"
    assert group_pids(handle.pgid) == []


def test_exec_kill_timeout_then_sigkill(start):
    ctx, handle = start("trap '' INT TERM; echo ready; while :; do sleep 0.1; done")
    assert wait_for(lambda: read_or_empty(ctx.stdout_path) == "ready\n")
    started = time.monotonic()
    start.driver.stop(handle, 0.8, signal.SIGINT)
    elapsed = time.monotonic() - started
    assert 0.8 <= elapsed < 4.0
    assert group_pids(handle.pgid) == []
    assert start.driver.wait(handle, 1).signal == signal.SIGKILL


# -- the allocation's stop sequence --------------------------------------------


@pytest.fixture
def make_runner(tmp_path):
    store = AgentStore(str(tmp_path))
    config = AgentConfig(data_dir=str(tmp_path), kill_timeout=3.0)
    runners = []

    def make(command, *, task_extra=None, shutdown_delay=None, ready=None):
        task = {"name": "t", "config": {"command": command}, **(task_extra or {})}
        group = {"name": "g", "tasks": [task]}
        if shutdown_delay is not None:
            group["shutdown_delay"] = shutdown_delay
        body = {"allocation_id": "a1", "job_id": "j1", "job_type": "service", "task_group": group}
        runner = AllocRunner(parse_alloc(body), config, {"exec": ExecDriver()}, store)
        runners.append(runner)
        runner.start()
        assert wait_for(lambda: runner.tasks["t"].handle_json is not None)
        # A live process has not necessarily run its `trap` yet (on a loaded
        # host, long after start): a signal sent before it would kill the
        # shell outright. Commands that trap create `ready` once they have.
        if ready is not None:
            assert wait_for(ready.exists), "the task never set its trap"
        return runner

    yield make
    for runner in runners:
        runner.hurry()
        runner.kill("test teardown", fails=False)


def _trap(marker, sig="TERM") -> str:
    # The time the signal arrived, in the file: compared with when stop began.
    return (
        f"trap 'python3 -c \"import time; print(time.time())\" > {marker}; exit 0' {sig}; "
        f"touch {marker}.ready; sleep 300 & wait"
    )


def _ready(marker):
    return marker.with_name(marker.name + ".ready")


def test_the_task_kill_signal_reaches_the_task(make_runner, tmp_path):
    marker = tmp_path / "got"
    runner = make_runner(
        _trap(marker, "INT"), task_extra={"kill_signal": "SIGINT"}, ready=_ready(marker)
    )
    runner.stop()
    assert read_or_empty(marker), "the task never saw SIGINT"
    assert runner.status() == AllocStatus.STOPPED


def test_shutdown_delay_comes_before_the_signal(make_runner, tmp_path):
    marker = tmp_path / "got"
    runner = make_runner(_trap(marker), shutdown_delay=1.0, ready=_ready(marker))
    pgid = runner.tasks["t"].handle_json["pgid"]
    began = time.time()
    runner.stop()
    assert time.time() - began >= 1.0
    assert float(read_or_empty(marker)) >= began + 1.0  # signalled only after the delay
    assert group_pids(pgid) == []
    assert "Waiting for shutdown delay" in [e["type"] for e in runner.tasks["t"].state.events]


def test_agent_shutdown_cuts_the_delay_short(make_runner):
    runner = make_runner("sleep 300", shutdown_delay=60)
    stopper = threading.Thread(target=runner.stop)
    began = time.monotonic()
    stopper.start()
    assert wait_for(lambda: runner.stopped)
    runner.hurry()
    stopper.join(10)
    assert not stopper.is_alive() and time.monotonic() - began < 10
    assert runner.status() == AllocStatus.STOPPED


def test_task_kill_timeout_overrides_the_agent_default(make_runner, tmp_path):
    ready = tmp_path / "trapped"
    runner = make_runner(
        f"trap '' TERM; touch {ready}; while :; do sleep 0.1; done",
        task_extra={"kill_timeout": "300ms"},
        ready=ready,
    )
    began = time.monotonic()
    runner.stop()  # the agent's default here is 3 s
    assert 0.3 <= time.monotonic() - began < 2.5
    assert runner.status() == AllocStatus.STOPPED


def test_a_stopped_allocation_is_reported_done_only_once_its_tasks_ended(make_runner, tmp_path):
    """It read `stopped` (and was taken as finished by the server) at the
    stop, with its task still being killed: the task's end never reached the
    server, which showed it `running` for good."""
    ready = tmp_path / "trapped"
    runner = make_runner(
        f"trap '' TERM; touch {ready}; while :; do sleep 0.1; done",
        task_extra={"kill_timeout": "1s"},
        ready=ready,
    )
    stopper = threading.Thread(target=runner.stop)
    stopper.start()
    assert wait_for(lambda: runner.stopped)
    status, entry = runner.heartbeat_report()
    assert status == "running" and '"status":"stopped"' in entry.replace(" ", "")
    stopper.join(10)
    status, entry = runner.heartbeat_report()
    assert status == "stopped"
    assert runner.tasks["t"].state.status.value in ("complete", "failed") and "exit_code" in entry


# -- the agent: a DELETE does not wait the delay out -----------------------------


@pytest.fixture
def agent(tmp_path):
    config = AgentConfig(server="http://127.0.0.1:9", data_dir=str(tmp_path), kill_timeout=1.0)
    agent = Agent(config)
    yield agent
    agent.shutdown(stop_tasks=True)


def test_a_delete_with_a_shutdown_delay_answers_at_once_and_stops_behind(agent):
    # A delay a loaded host cannot outlast between the DELETE and the look at
    # the group (1 s could be: the group would be gone, the delay served).
    delay = 4.0
    task = {"name": "t", "config": {"command": "sleep 300"}}
    group = {"name": "g", "tasks": [task], "shutdown_delay": f"{delay:g}s"}
    spec = parse_alloc({"allocation_id": "a1", "job_id": "j1", "task_group": group})
    assert agent.submit(spec)
    runner = agent.get("a1")
    assert wait_for(lambda: runner.tasks["t"].handle_json is not None)
    pgid = runner.tasks["t"].handle_json["pgid"]
    began = time.monotonic()
    agent.stop_alloc("a1")
    agent.stop_alloc("a1")  # the server's retry finds the stop under way
    assert time.monotonic() - began < delay - 1.0  # answered, not waited out
    assert group_pids(pgid) != []  # still serving through the delay
    assert wait_for(lambda: group_pids(pgid) == [], timeout=delay + 10)
    assert time.monotonic() - began >= delay
    assert wait_for(lambda: removed(agent, "a1"), timeout=5)


def removed(agent: Agent, alloc_id: str) -> bool:
    """The agent no longer holds the allocation."""
    try:
        agent.get(alloc_id)
    except NotFound:
        return True
    return False


def agent_after_an_interrupted_delete(config, store, spec, driver, handle) -> Agent:
    """An agent over a data dir whose last one died while stopping task t of a1."""
    doc = {
        "spec": spec.to_dict(),
        "stopped": True,
        "tasks": {"t": {"status": "running"}},
        "handles": {"t": driver.handle_to_json(handle)},
    }
    store.save_alloc("a1", doc)
    return Agent(config)


def test_restore_finishing_an_interrupted_delete_does_not_wait_the_delay_again(tmp_path):
    config = AgentConfig(data_dir=str(tmp_path), kill_timeout=1.0)
    store = AgentStore(str(tmp_path))
    task = {"name": "t", "config": {"command": "sleep 300"}}
    group = {"name": "g", "tasks": [task], "shutdown_delay": "10m"}
    spec = parse_alloc({"allocation_id": "a1", "job_id": "j1", "task_group": group})
    os.makedirs(store.task_dir("a1", "t"))
    driver = ExecDriver()
    ctx = store_task_context(store)
    handle = driver.start(ctx)
    agent = agent_after_an_interrupted_delete(config, store, spec, driver, handle)
    try:
        began = time.monotonic()
        assert agent.restore() == 0
        assert wait_for(lambda: group_pids(handle.pgid) == [], timeout=10)
        assert time.monotonic() - began < 10
    finally:
        agent.shutdown(stop_tasks=True)
        driver.stop(handle, 0.5)


def test_restore_finishes_an_interrupted_delete_behind_not_before_serving(tmp_path):
    # The agent died while killing a task that ignores SIGTERM: the restarted
    # one must not wait out its kill_timeout before it serves and heartbeats.
    config = AgentConfig(data_dir=str(tmp_path), kill_timeout=1.0)
    store = AgentStore(str(tmp_path))
    ready = tmp_path / "trapped"
    command = f"trap '' TERM; touch {ready}; while :; do sleep 0.1; done"
    task = {"name": "t", "config": {"command": command}, "kill_timeout": "5s"}
    spec = parse_alloc(
        {"allocation_id": "a1", "job_id": "j1", "task_group": {"name": "g", "tasks": [task]}}
    )
    os.makedirs(store.task_dir("a1", "t"))
    driver = ExecDriver()
    handle = driver.start(store_task_context(store, command))
    assert wait_for(ready.exists), "the task never set its trap"
    agent = agent_after_an_interrupted_delete(config, store, spec, driver, handle)
    try:
        began = time.monotonic()
        assert agent.restore() == 0
        assert time.monotonic() - began < 2.0
        assert agent.get("a1").stopped  # under way: a repeated DELETE finds it
        assert group_pids(handle.pgid) != []
        assert wait_for(lambda: group_pids(handle.pgid) == [], timeout=15)
        assert time.monotonic() - began >= 4.0  # its kill_timeout was served
        assert wait_for(lambda: removed(agent, "a1"), timeout=5)
        assert "a1" in agent.heartbeat_reports()  # its last word, until taken
    finally:
        agent.shutdown(stop_tasks=True)
        driver.stop(handle, 0.5)
