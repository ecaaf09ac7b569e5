"""AllocRunner/TaskRunner with the real exec driver: states, restarts, kills.

Over 400 lines on purpose: one runner's state machine, its tests sharing real-process fixtures.
"""

import json
import os
import subprocess
import threading
import time

import pytest

from orch.agent.allocrunner import AllocRunner
from orch.agent.drivers import DOCKER_FALLBACK, DOCKER_NO_COMMAND, select_driver
from orch.agent.drivers.exec import ExecDriver
from orch.agent.spec import parse_alloc
from orch.agent.state import AgentStore
from orch.agent.taskrunner import LOST_ON_RESTART, RestartTracker
from orch.agent.tasksup.records import read_record
from orch.config import AgentConfig
from orch.errors import DriverError
from orch.structs import AllocStatus, Resources, Task

from waiting import group_pids, live, wait_for


def spec(tasks, alloc_id="a1", job_type="batch"):
    return parse_alloc(
        {
            "allocation_id": alloc_id,
            "job_id": "j1",
            "job_type": job_type,
            "task_group": {"name": "g", "tasks": tasks},
        }
    )


def task(name, command, **extra):
    return {
        "name": name,
        "config": {"command": command, **extra},
        "resources": {"cpu": 50, "memory": 32},
    }


class Changes:
    def __init__(self):
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.count += 1


def saved(runner) -> dict:
    """The allocation's document as an agent restarting finds it: persisted
    (as the heartbeat loop does), then read back from the data dir."""
    runner.persist()
    return next(
        doc
        for doc in runner.store.load_allocs()
        if doc["spec"]["allocation_id"] == runner.spec.allocation_id
    )


@pytest.fixture
def env(tmp_path):
    """Builds AllocRunners on a tmp data dir; kills them all at teardown."""
    store = AgentStore(str(tmp_path))
    runners = []
    config = AgentConfig(
        data_dir=str(tmp_path),
        restart_attempts=2,
        restart_interval=60,
        restart_delay=0.05,
        kill_timeout=1.0,
    )

    def make(alloc_spec, *, drivers=None, config=config, start=True):
        changes = Changes()
        runner = AllocRunner(alloc_spec, config, drivers or {"exec": ExecDriver()}, store, changes)
        runner.changes = changes
        runners.append(runner)
        if start:
            runner.start()
        return runner

    make.store = store
    make.config = config
    yield make
    for runner in runners:
        runner.kill("test teardown", fails=False)


def events(runner, name):
    return [e["type"] for e in runner.tasks[name].state.events]


def test_batch_task_completes(env):
    runner = env(spec([task("t", "echo hi")]))
    assert runner.wait(5)
    state = runner.tasks["t"].state
    assert state.status == "complete" and state.exit_code == 0 and state.error is None
    assert runner.status() == AllocStatus.COMPLETE
    assert events(runner, "t") == ["Received", "Started", "Terminated"]
    assert state.events[-1]["message"] == "Exit Code: 0"
    assert runner.start_time and runner.end_time >= runner.start_time
    assert runner.changes.count == 3  # one each: arrival, start, end (each wakes the beat)
    assert runner.reserved() == Resources()


def test_batch_task_fails_with_exit_code(env):
    runner = env(spec([task("t", "exit 3")]))
    assert runner.wait(5)
    state = runner.tasks["t"].state
    assert (state.status, state.exit_code, state.error) == ("failed", 3, "exit code 3")
    assert state.restarts == 0
    assert runner.status() == AllocStatus.FAILED


def test_signal_is_a_failure(env):
    runner = env(spec([task("t", ["/bin/sh", "-c", "kill -KILL $$"])]))
    assert runner.wait(5)
    state = runner.tasks["t"].state
    assert (state.status, state.exit_code, state.error) == ("failed", 137, "killed by signal 9")


def test_running_status_and_reserved_resources(env):
    runner = env(spec([task("t", "sleep 300"), task("u", "sleep 300")]))
    assert wait_for(
        lambda: (
            runner.status() == AllocStatus.RUNNING
            and all(r.state.status == "running" for r in runner.tasks.values())
        )
    )
    assert runner.reserved() == Resources(100, 64)
    entry = runner.heartbeat_entry()
    assert set(entry) == {"status", "start_time", "end_time", "tasks"}
    assert entry["status"] == "running" and entry["end_time"] is None


def test_service_restarts_then_fails(env):
    runner = env(spec([task("t", "exit 1")], job_type="service"))
    assert runner.wait(5)
    state = runner.tasks["t"].state
    assert state.status == "failed" and state.restarts == 2 and state.exit_code == 1
    assert "restart attempts exhausted" in state.error
    kinds = events(runner, "t")
    assert kinds.count("Started") == 3 and kinds.count("Restarting") == 2
    assert kinds[-1] == "Not Restarting"
    assert runner.status() == AllocStatus.FAILED


def test_service_restarts_even_after_success(env, tmp_path):
    counter = tmp_path / "count"
    runner = env(spec([task("t", f"echo x >> {counter}")], job_type="service"))
    assert runner.wait(5)
    assert counter.read_text().count("x") == 3
    assert runner.tasks["t"].state.status == "failed"


def test_restart_window_resets():
    clock = [0.0]
    tracker = RestartTracker(attempts=2, interval=10, delay=0.5, now=lambda: clock[0])
    assert tracker.next_delay() == 0.5
    assert tracker.next_delay() == 0.5
    assert tracker.next_delay() is None
    clock[0] = 11.0
    assert tracker.next_delay() == 0.5
    assert RestartTracker(0, 10, 1).next_delay() is None


def test_failed_task_kills_its_siblings(env):
    runner = env(spec([task("bad", "sleep 0.2; exit 2"), task("long", "sleep 300")]))
    assert wait_for(lambda: runner.tasks["long"].handle_json is not None)
    pid = runner.tasks["long"].handle_json["pid"]
    assert runner.wait(5)
    long_state = runner.tasks["long"].state
    assert long_state.status == "failed"
    assert long_state.error == "sibling task bad failed"
    assert "Killing" in events(runner, "long") and "Killed" in events(runner, "long")
    assert runner.tasks["bad"].state.exit_code == 2
    assert runner.status() == AllocStatus.FAILED
    assert not live(pid)


def test_stop_kills_tasks_and_reports_stopped(env):
    runner = env(spec([task("t", "sleep 300 & sleep 300; wait")], job_type="service"))
    assert wait_for(lambda: runner.tasks["t"].handle_json is not None)
    pgid = runner.tasks["t"].handle_json["pgid"]
    started = time.monotonic()
    runner.stop()
    # A hang catcher: even a SIGTERM ignored is killed 1 s on (kill_timeout).
    assert time.monotonic() - started < 10.0
    assert runner.status() == AllocStatus.STOPPED
    state = runner.tasks["t"].state
    assert state.status == "complete" and state.restarts == 0
    assert events(runner, "t")[-2:] == ["Terminated", "Killed"]
    assert runner.end_time is not None
    assert group_pids(pgid) == []


def test_kill_during_restart_delay(env):
    config = AgentConfig(
        data_dir=env.config.data_dir, restart_attempts=5, restart_delay=30.0, kill_timeout=1.0
    )
    runner = env(spec([task("t", "exit 1")], job_type="service"), config=config)
    assert wait_for(lambda: "Restarting" in events(runner, "t"))
    started = time.monotonic()
    runner.stop()
    assert time.monotonic() - started < 10.0  # not after the 30 s restart delay
    assert runner.wait(1)
    assert runner.tasks["t"].state.status == "complete"
    assert runner.status() == AllocStatus.STOPPED


def test_docker_task_falls_back_to_exec(env):
    alloc = spec(
        [
            {
                "name": "t",
                "driver": "docker",
                "config": {"image": "alpine", "command": "echo fell back"},
            }
        ]
    )
    runner = env(alloc)
    assert runner.wait(5)
    state = runner.tasks["t"].state
    assert state.status == "complete"
    assert {"type": "Driver", "message": DOCKER_FALLBACK}.items() <= next(
        e for e in state.events if e["type"] == "Driver"
    ).items()
    with open(env.store.log_path("a1", "t", "stdout")) as f:
        assert f.read() == "fell back\n"


class HeldExec(ExecDriver):
    """The exec driver, its starts held until `release` is set."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def start_notified(self, ctx, started, exited):
        self.release.wait(5)
        super().start_notified(ctx, started, exited)


def test_a_driver_note_is_told_before_the_start_returns(env):
    held = HeldExec()
    runner = env(
        spec([{"name": "t", "driver": "docker", "config": {"image": "alpine", "command": "true"}}]),
        drivers={"exec": held},
        start=False,
    )
    starting = threading.Thread(target=runner.start)
    starting.start()
    try:
        # Arrival, then the fallback's note: told while the start still waits.
        assert wait_for(lambda: runner.changes.count >= 2, timeout=5)
        assert events(runner, "t")[-1] == "Driver" and starting.is_alive()
    finally:
        held.release.set()
        starting.join(5)
    assert runner.wait(5) and runner.tasks["t"].state.status == "complete"


def test_docker_task_without_command_fails(env):
    runner = env(spec([{"name": "t", "config": {"image": "alpine"}}]))
    assert runner.wait(5)
    state = runner.tasks["t"].state
    assert state.status == "failed" and state.error == DOCKER_NO_COMMAND
    assert state.exit_code is None
    assert "Driver Failure" in events(runner, "t")


def test_select_driver():
    drivers = {"exec": ExecDriver()}
    assert select_driver(Task("t", "exec", {"command": "x"}), drivers) == (drivers["exec"], None)
    with pytest.raises(DriverError, match="driver exec unavailable"):
        select_driver(Task("t", "exec", {"command": "x"}), {})


def test_start_failure_fails_the_task(env):
    runner = env(spec([task("t", ["no-such-binary-xyz"])]))
    assert runner.wait(5)
    state = runner.tasks["t"].state
    assert state.status == "failed"
    assert "executable not found: no-such-binary-xyz" in state.error
    assert state.start_time is None


def test_task_env_and_dirs(env):
    runner = env(spec([task("t", "echo $ORCH_ALLOC_ID $ORCH_JOB_ID $ORCH_TASK_NAME; pwd")]))
    assert runner.wait(5)
    with open(env.store.log_path("a1", "t", "stdout")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "a1 j1 t"
    assert lines[1] == os.path.realpath(env.store.task_dir("a1", "t"))


def test_state_is_persisted(env):
    runner = env(spec([task("t", "exit 4")]))
    assert runner.wait(5)
    path = os.path.join(env.store.alloc_dir("a1"), "alloc.json")
    assert wait_for(lambda: json.load(open(path))["tasks"]["t"]["status"] == "failed")
    doc = json.load(open(path))
    assert doc["spec"]["task_group"]["tasks"][0]["config"] == {"command": "exit 4"}
    assert doc["tasks"]["t"]["exit_code"] == 4


def test_restore_marks_dead_tasks_lost(env, tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()
    alloc = spec([task("t", "sleep 300"), task("done", "true")])
    doc = {
        "spec": alloc.to_dict(),
        "stopped": False,
        "start_time": 1.0,
        "end_time": None,
        "tasks": {
            "t": {"status": "running", "start_time": 1.0},
            "done": {"status": "complete", "exit_code": 0},
        },
        "handles": {"t": {"pid": proc.pid, "pgid": proc.pid, "create_time": 1.0}},
    }
    runner = AllocRunner.restore(doc, alloc, env.config, {"exec": ExecDriver()}, env.store)
    runner.start()
    assert runner.wait(2)
    state = runner.tasks["t"].state
    assert state.status == "failed" and state.error == LOST_ON_RESTART
    assert runner.tasks["done"].state.status == "complete"
    assert runner.status() == AllocStatus.FAILED


def test_restore_marks_lost_a_start_its_record_knows_but_the_file_does_not(env, tmp_path):
    """A reboot: the start was reported unwritten (exec keeps it in the run
    record), then the supervisor and the task died without recording an end."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    alloc = spec([task("t", "echo ran >> " + str(tmp_path / "runs"))])
    task_dir = tmp_path / "allocs" / "a1" / "t"
    task_dir.mkdir(parents=True)
    lines = [{"supervisor_pid": proc.pid}, {"pid": proc.pid, "memory_mb": 0}]
    (task_dir / ".orch-run-0.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    doc = {"spec": alloc.to_dict(), "tasks": {"t": {"status": "pending"}}, "handles": {}}
    runner = AllocRunner.restore(doc, alloc, env.config, {"exec": ExecDriver()}, env.store)
    runner.start()
    assert runner.wait(2)
    state = runner.tasks["t"].state
    assert state.status == "failed" and state.error == LOST_ON_RESTART
    assert not (tmp_path / "runs").exists()  # not started a second time


def test_restore_reattaches_live_tasks(env):
    first = env(spec([task("t", "sleep 300")]))
    assert wait_for(lambda: first.tasks["t"].handle_json is not None)
    doc = saved(first)
    pid = doc["handles"]["t"]["pid"]
    second = AllocRunner.restore(doc, first.spec, env.config, {"exec": ExecDriver()}, env.store)
    second.start()
    assert second.status() == AllocStatus.RUNNING
    assert "Reattached" in events(second, "t")
    second.stop()
    assert not live(pid)
    assert second.status() == AllocStatus.STOPPED


def test_siblings_are_killed_in_parallel(env):
    stubborn = "trap '' TERM; echo up; sleep 300 & wait; wait"
    runner = env(
        spec([task("bad", "sleep 0.3; exit 1"), task("s1", stubborn), task("s2", stubborn)])
    )
    logs = [env.store.log_path("a1", name, "stdout") for name in ("s1", "s2")]
    assert wait_for(lambda: all(os.path.exists(p) and open(p).read() == "up\n" for p in logs))
    assert runner.wait(10)
    ends = []
    for name in ("s1", "s2"):
        state = runner.tasks[name].state
        assert state.status == "failed" and state.exit_code == 137
        ends.append(state.end_time)
    # Both ignore SIGTERM, so each waits out kill_timeout (1 s): killed one
    # after the other they would end a second apart, side by side together.
    assert abs(ends[0] - ends[1]) < 0.8


def test_restore_reports_the_true_exit_of_a_task_that_ended_meanwhile(env, tmp_path):
    gate = tmp_path / "gate"
    first = env(spec([task("t", f"while [ ! -e {gate} ]; do sleep 0.02; done; exit 7")]))
    assert wait_for(lambda: first.tasks["t"].handle_json is not None)
    doc = saved(first)
    gate.touch()  # it ends while "no agent" watches it
    record = doc["handles"]["t"]["record_path"]
    assert wait_for(lambda: "exit_code" in (read_record(record) or {}))
    second = AllocRunner.restore(doc, first.spec, env.config, {"exec": ExecDriver()}, env.store)
    second.start()
    assert second.wait(5)
    state = second.tasks["t"].state
    assert state.status == "failed" and state.exit_code == 7
    assert state.error == "exit code 7"


class FindingDriver(ExecDriver):
    """Finds a task by name, as the docker driver does by container name."""

    name = "exec"

    def __init__(self, handle):
        super().__init__()
        self.found = handle

    def find(self, ctx):
        return self.found


def test_restore_without_a_saved_handle_asks_the_driver_to_find_it(env):
    first = env(spec([task("t", "sleep 300")]))
    assert wait_for(lambda: first.tasks["t"].handle_json is not None)
    doc = saved(first)
    handle = first.tasks["t"]._handle
    doc["handles"] = {}  # killed before the handle was saved
    second = AllocRunner.restore(
        doc, first.spec, env.config, {"exec": FindingDriver(handle)}, env.store
    )
    second.start()
    assert second.status() == AllocStatus.RUNNING
    assert "Reattached" in events(second, "t")
    assert second.tasks["t"].handle_json["pid"] == handle.pid
    second.stop()
    assert not live(handle.pid)


def test_task_past_its_memory_limit_fails_with_an_oom_event(env):
    hog = 'python3 -c "b = bytearray(200 * 1024 * 1024); import time; time.sleep(5)"'
    runner = env(
        spec([{"name": "t", "config": {"command": hog}, "resources": {"cpu": 100, "memory": 64}}])
    )
    assert runner.wait(10)
    state = runner.tasks["t"].state
    assert state.status == "failed" and state.exit_code == 137
    assert state.error == "OOM killed: memory limit 64 MB exceeded"
    assert "OOM" in events(runner, "t")


def test_restore_starts_a_task_that_was_never_started(env, tmp_path):
    alloc = spec([task("t", f"echo ran >> {tmp_path}/runs")])
    doc = {
        "spec": alloc.to_dict(),
        "stopped": False,
        "start_time": None,
        "end_time": None,
        "tasks": {"t": {"status": "pending"}},
        "handles": {},
    }
    runner = AllocRunner.restore(doc, alloc, env.config, {"exec": ExecDriver()}, env.store)
    runner.start()
    assert runner.wait(5)
    assert runner.tasks["t"].state.status == "complete"
    assert (tmp_path / "runs").read_text() == "ran\n"


def test_restore_takes_over_a_run_started_but_not_saved(env, tmp_path):
    """Killed after the supervisor started the task, before the handle was saved."""
    gate = tmp_path / "gate"
    first = env(
        spec(
            [
                task(
                    "t",
                    f"echo ran >> {tmp_path}/runs; "
                    f"while [ ! -e {gate} ]; do sleep 0.02; done; exit 5",
                )
            ]
        )
    )
    assert wait_for(lambda: first.tasks["t"].handle_json is not None)
    doc = saved(first)
    doc["tasks"]["t"] = {"status": "pending"}
    doc["handles"] = {}
    second = AllocRunner.restore(doc, first.spec, env.config, {"exec": ExecDriver()}, env.store)
    second.start()
    assert second.status() == AllocStatus.RUNNING
    gate.touch()
    assert second.wait(10)
    assert second.tasks["t"].state.exit_code == 5
    assert (tmp_path / "runs").read_text() == "ran\n"


def test_the_written_state_is_the_document_and_lands_at_the_end(env, tmp_path):
    runner = env(spec([task("t", "sleep 0.2")]))
    path = tmp_path / "allocs" / "a1" / "alloc.json"
    first = json.loads(path.read_text())  # written before the task started
    assert first["spec"]["allocation_id"] == "a1"
    assert runner.wait(5)
    # Completed under exec, whose run record keeps the exit: the end waits
    # for the next persist() (the heartbeat loop's, before it reports it).
    assert json.loads(path.read_text())["tasks"]["t"]["status"] != "complete"
    runner.persist()
    on_disk = json.loads(path.read_text())
    assert on_disk["tasks"]["t"]["status"] == "complete"
    runner.persist()  # nothing was left to write
    assert json.loads(path.read_text()) == on_disk


def test_a_completed_run_not_yet_written_is_complete_after_a_restart(env, tmp_path):
    first = env(spec([task("t", "exit 0")]))
    assert first.wait(5)
    doc = json.loads((tmp_path / "allocs" / "a1" / "alloc.json").read_text())
    assert doc["tasks"]["t"]["status"] != "complete"  # what an agent killed now leaves
    second = AllocRunner.restore(doc, first.spec, env.config, {"exec": ExecDriver()}, env.store)
    second.start()
    assert second.wait(5)
    state = second.tasks["t"].state
    assert state.status == "complete" and state.exit_code == 0 and state.restarts == 0
    assert not (tmp_path / "allocs" / "a1" / "t" / ".orch-run-1.json").exists()  # no rerun


def test_an_end_no_driver_keeps_is_written_at_once(env, tmp_path):
    path = tmp_path / "allocs" / "a1" / "alloc.json"
    failed = env(spec([task("t", "exit 4")]))
    assert failed.wait(5)  # a failure: the restart policy's count is only here
    assert json.loads(path.read_text())["tasks"]["t"]["status"] == "failed"
    killed = env(spec([task("t", "sleep 30")], alloc_id="a2"))
    assert wait_for(lambda: killed.status() == AllocStatus.RUNNING)
    killed.kill("test", fails=False)  # complete, but by our kill: not in the record
    doc = json.loads((tmp_path / "allocs" / "a2" / "alloc.json").read_text())
    assert doc["tasks"]["t"]["status"] == "complete"


def test_heartbeat_report_is_encoded_once_per_change(env):
    runner = env(spec([task("t", "sleep 30")]))
    assert wait_for(lambda: runner.status() == AllocStatus.RUNNING, 5)
    status, encoded = runner.heartbeat_report()
    assert status == "running" and json.loads(encoded) == runner.heartbeat_entry()
    assert runner.heartbeat_report()[1] is encoded  # unchanged: the same string
    runner.kill("test", fails=False)
    status, again = runner.heartbeat_report()
    assert status == "complete" and again is not encoded
