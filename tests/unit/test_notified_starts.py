"""Exec tasks without a thread of their own: the supervisor's lines start and end them."""

import json
import os
import signal
import threading

import pytest

from orch.agent.allocrunner import AllocRunner
from orch.agent.drivers import exec as exec_driver
from orch.agent.drivers.exec import STATUS_LOST, ExecDriver
from orch.agent.spec import parse_alloc
from orch.agent.state import AgentStore
from orch.agent.tasksup.client import SupervisorClient, supervisor_name
from orch.config import AgentConfig
from orch.structs import AllocStatus

from waiting import group_pids, live, wait_for


def spec(command: str, alloc_id: str = "n1", job_type: str = "batch"):
    return parse_alloc(
        {
            "allocation_id": alloc_id,
            "job_id": "j1",
            "job_type": job_type,
            "task_group": {
                "name": "g",
                "tasks": [{"name": "t", "config": {"command": command}}],
            },
        }
    )


def task_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("task-")]


@pytest.fixture
def make(tmp_path):
    """AllocRunners on one exec driver; killed, driver closed, at teardown."""
    store = AgentStore(str(tmp_path))
    config = AgentConfig(data_dir=str(tmp_path), kill_timeout=1.0, restart_delay=0.05)
    driver = ExecDriver(state_dir=str(tmp_path))
    runners: list[AllocRunner] = []

    def build(alloc_spec, drivers=None):
        runner = AllocRunner(alloc_spec, config, drivers or {"exec": driver}, store)
        runners.append(runner)
        runner.start()
        return runner

    build.driver = driver
    yield build
    for runner in runners:
        runner.kill("test teardown", fails=False)
    driver.close()


def test_a_batch_task_runs_and_ends_without_a_thread_of_its_own(make):
    runner = make(spec("sleep 0.5; exit 3"))
    assert wait_for(lambda: runner.tasks["t"].state.status == "running", 10)
    assert task_threads() == []
    assert runner.wait(10)
    state = runner.tasks["t"].state
    assert (state.status, state.exit_code, state.error) == ("failed", 3, "exit code 3")
    assert [e["type"] for e in state.events] == ["Received", "Started", "Terminated"]
    assert runner.status() == AllocStatus.FAILED and runner.tasks["t"]._thread is None


def test_the_end_is_taken_from_the_supervisors_line(make, monkeypatch):
    reads: list[str] = []
    real = exec_driver.read_record
    monkeypatch.setattr(exec_driver, "read_record", lambda p: reads.append(p) or real(p))
    runner = make(spec("exit 0"))
    assert runner.wait(10)
    assert runner.tasks["t"].state.status == "complete"
    assert reads == []  # the line carried the exit: the record was not opened


def test_a_restart_takes_a_thread_and_the_policy_still_holds(make):
    runner = make(spec("exit 1", job_type="service"))
    assert runner.wait(10)
    state = runner.tasks["t"].state
    assert state.status == "failed" and state.restarts == 2
    assert "restart attempts exhausted" in state.error


class HeldAnswers(ExecDriver):
    """The supervisor's answer reaches the runner once `release` is set; the end after it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.release = threading.Event()

    def start_notified(self, ctx, on_started, on_exit):
        told = threading.Event()

        def started(handle, error):
            def later():
                self.release.wait()
                on_started(handle, error)
                told.set()

            threading.Thread(target=later, daemon=True).start()

        def ended(result):
            threading.Thread(target=lambda: (told.wait(), on_exit(result)), daemon=True).start()

        super().start_notified(ctx, started, ended)


def test_a_kill_asked_before_the_answer_stops_the_task(tmp_path):
    store = AgentStore(str(tmp_path))
    config = AgentConfig(data_dir=str(tmp_path), kill_timeout=1.0)
    driver = HeldAnswers(state_dir=str(tmp_path))
    try:
        runner = AllocRunner(spec("sleep 300"), config, {"exec": driver}, store)
        runner.start()
        # The supervisor started it; the runner has not heard yet.
        record = os.path.join(store.task_dir("n1", "t"), ".orch-run-0.json")
        assert wait_for(lambda: '"pid"' in (open(record).read() if os.path.exists(record) else ""))
        killer = threading.Thread(target=runner.kill, args=("test",), kwargs={"fails": False})
        killer.start()
        assert wait_for(lambda: runner.tasks["t"]._killed.is_set())
        assert killer.is_alive()  # waits for the end to be recorded
        driver.release.set()
        killer.join(15)
        assert not killer.is_alive()
        state = runner.tasks["t"].state
        assert state.status == "complete" and state.events[-1]["type"] == "Killed"
        assert "Started" in [e["type"] for e in state.events] and runner.wait(1)
        pid = json.loads(open(record).read().splitlines()[1])["pid"]
        assert group_pids(pid) == []
    finally:
        driver.close()


def test_a_lost_supervisor_fails_the_running_task(make):
    runner = make(spec("sleep 300"))
    assert wait_for(lambda: runner.tasks["t"].handle_json is not None, 10)
    handle = runner.tasks["t"].handle_json
    os.kill(handle["supervisor_pid"], signal.SIGKILL)
    assert runner.wait(15)
    state = runner.tasks["t"].state
    assert state.status == "failed" and state.error == STATUS_LOST
    assert wait_for(lambda: group_pids(handle["pgid"]) == [], 10)


def test_the_client_calls_back_with_the_answer_and_the_end(tmp_path):
    client = SupervisorClient(supervisor_name(None))
    answers: list[dict] = []
    ends: list = []
    done = threading.Event()

    def answered(answer, sup_pid, created):
        answers.append(answer)
        client.on_exit(answer["pid"], lambda line: (ends.append(line), done.set()))

    def spec_for(name, argv):
        (tmp_path / name).mkdir()
        return {
            "argv": argv,
            "env": {"PATH": os.environ["PATH"]},
            "cwd": str(tmp_path),
            "stdout": str(tmp_path / name / "out"),
            "stderr": str(tmp_path / name / "err"),
            "record_path": str(tmp_path / name / "run.json"),
            "memory_mb": 0,
            "user": None,
        }

    try:
        client.start_async(spec_for("a", ["sh", "-c", "exit 4"]), answered)
        assert done.wait(10)
        assert ends[0]["exited"] == answers[0]["pid"] and ends[0]["exit_code"] == 4
        # The connection lost: a pending end is told as None, not forgotten.
        done.clear()
        client.start_async(spec_for("b", ["sleep", "300"]), answered)
        assert wait_for(lambda: len(answers) == 2, 10)
        os.kill(client._pid, signal.SIGKILL)
        assert done.wait(10) and ends[1] is None
        pid = answers[1]["pid"]
        os.killpg(pid, signal.SIGKILL)
        assert wait_for(lambda: not live(pid), 10)
    finally:
        client.close()


def test_a_start_that_crashes_fails_the_task_not_the_caller(make, monkeypatch):
    def broken(ctx):
        raise PermissionError("no room for the task dir")

    monkeypatch.setattr(exec_driver.ExecDriver, "_spec", lambda self, ctx: broken(ctx))
    runner = make(spec("true"))  # start() returns: the push is still answered
    assert runner.wait(10)
    state = runner.tasks["t"].state
    assert state.status == "failed" and state.error == "internal error in the task runner"
