"""The exec driver against real processes: argv, env, cwd, logs, exits, kills."""

import os
import shutil
import signal
import subprocess
import threading
import time

import psutil
import pytest

from orch.agent.drivers.base import ExitResult, TaskContext
from orch.agent.drivers.exec import ExecDriver, ExecHandle
from orch.agent.drivers.exec_config import build_argv
from orch.errors import DriverError
from orch.structs import Resources

from waiting import group_pids, live, wait_for


@pytest.fixture
def driver():
    return ExecDriver()


@pytest.fixture
def make_ctx(tmp_path):
    def make(config, name="t", env=None, attempt=0):
        task_dir = tmp_path / "allocs" / "a1" / name
        return TaskContext(
            alloc_id="a1",
            job_id="j1",
            task_name=name,
            config=config,
            resources=Resources(100, 64),
            task_dir=str(task_dir),
            stdout_path=str(task_dir / "stdout.log"),
            stderr_path=str(task_dir / "stderr.log"),
            env=env if env is not None else {"ORCH_ALLOC_ID": "a1", "ORCH_TASK_DIR": str(task_dir)},
            attempt=attempt,
        )

    return make


@pytest.fixture
def run(driver, make_ctx):
    """Start a task and wait for it; every handle is stopped at teardown."""
    handles = []

    def start(config, **kw):
        ctx = make_ctx(config, **kw)
        handle = driver.start(ctx)
        handles.append(handle)
        return ctx, handle

    def run_to_end(config, timeout=10, **kw):
        ctx, handle = start(config, **kw)
        result = driver.wait(handle, timeout)
        assert result is not None, "task did not exit in time"
        return ctx, result

    run_to_end.start = start
    yield run_to_end
    for handle in handles:
        driver.stop(handle, 0.5)


def read(path):
    with open(path) as f:
        return f.read()


def test_string_command_runs_through_shell_and_logs(run):
    ctx, result = run({"command": "echo out; echo err >&2"})
    assert result == ExitResult(exit_code=0)
    assert result.successful
    assert read(ctx.stdout_path) == "out\n"
    assert read(ctx.stderr_path) == "err\n"


def test_nonzero_exit_code(run):
    _, result = run({"command": "exit 3"})
    assert result.exit_code == 3 and result.signal is None and not result.successful


def test_signal_exit_is_128_plus_signal(run):
    _, result = run({"command": ["/bin/sh", "-c", "kill -9 $$"]})
    assert result.exit_code == 137
    assert result.signal == 9
    assert result.error == "killed by signal 9"


def test_args_are_shell_quoted(run):
    ctx, result = run({"command": "printf '%s|'", "args": ["a b", "$HOME", "it's", 7]})
    assert result.exit_code == 0
    assert read(ctx.stdout_path) == "a b|$HOME|it's|7|"


def test_list_command_is_execed_directly_with_args(run):
    ctx, result = run({"command": ["printf", "%s-"], "args": ["x", "*"]})
    assert result.exit_code == 0
    assert read(ctx.stdout_path) == "x-*-"


def test_env_base_orch_and_task_env(run):
    ctx, result = run({"command": "env", "env": {"FOO": "bar", "N": 3, "ORCH_ALLOC_ID": "mine"}})
    assert result.exit_code == 0
    env = dict(line.split("=", 1) for line in read(ctx.stdout_path).splitlines())
    assert env["FOO"] == "bar" and env["N"] == "3"
    assert env["ORCH_ALLOC_ID"] == "mine"  # the task's env wins
    assert env["ORCH_TASK_DIR"] == ctx.task_dir
    assert "PATH" in env and "HOME" in env
    assert "PYTEST_CURRENT_TEST" not in env  # the agent's env does not leak


def test_cwd_defaults_to_task_dir_and_may_be_relative(run, tmp_path):
    ctx, result = run({"command": "pwd"})
    assert read(ctx.stdout_path).strip() == os.path.realpath(ctx.task_dir)
    os.makedirs(os.path.join(ctx.task_dir, "sub"))
    ctx, result = run({"command": "pwd", "cwd": "sub"}, attempt=1)
    assert read(ctx.stdout_path).strip().endswith("/sub")
    ctx, result = run({"command": "pwd", "cwd": str(tmp_path)}, name="t2")
    assert read(ctx.stdout_path).strip() == os.path.realpath(tmp_path)


def test_bad_cwd_fails_to_start(driver, make_ctx):
    with pytest.raises(DriverError, match="cwd: /nonexistent/x is not a directory"):
        driver.start(make_ctx({"command": "true", "cwd": "/nonexistent/x"}))


def test_missing_binary_fails_to_start(driver, make_ctx):
    with pytest.raises(DriverError, match="executable not found: no-such-binary-xyz"):
        driver.start(make_ctx({"command": ["no-such-binary-xyz", "a"]}))


def test_missing_binary_in_string_form_is_exit_127(run):
    _, result = run({"command": "no-such-binary-xyz"})
    assert result.exit_code == 127


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"command": ""},
        {"command": []},
        {"command": 5},
        {"command": "x", "args": "a"},
        {"command": [1, 2]},
    ],
)
def test_bad_command_config(config):
    with pytest.raises(DriverError):
        build_argv(config)


def test_stdin_is_dev_null(run):
    _, result = run({"command": "cat"}, timeout=5)
    assert result.exit_code == 0


def test_logs_are_appended(run):
    ctx, _ = run({"command": "echo one"})
    run({"command": "echo two"}, attempt=1)
    assert read(ctx.stdout_path) == "one\ntwo\n"


def test_wait_timeout_returns_none_while_running(run, driver):
    _, handle = run.start({"command": "sleep 30"})
    assert driver.wait(handle, 0.05) is None


def test_stop_kills_the_whole_process_tree(run, driver, make_ctx):
    ctx, handle = run.start({"command": "sleep 300 & sleep 300 & echo started; wait"})
    assert wait_for(lambda: read(ctx.stdout_path) == "started\n")
    pids = group_pids(handle.pgid)
    assert len(pids) == 3
    started = time.monotonic()
    driver.stop(handle, 5.0)
    assert time.monotonic() - started < 4.0  # SIGTERM did it, not the SIGKILL 5 s on
    assert group_pids(handle.pgid) == []
    assert not any(live(pid) for pid in pids)
    result = driver.wait(handle, 1)
    assert result.signal == signal.SIGTERM and result.exit_code == 143


def test_stop_escalates_to_sigkill(run, driver):
    ctx, handle = run.start({"command": "trap '' TERM; echo ready; sleep 300 & wait; wait"})
    assert wait_for(lambda: read(ctx.stdout_path) == "ready\n")
    started = time.monotonic()
    driver.stop(handle, 0.3)
    assert 0.3 <= time.monotonic() - started < 3.0
    assert group_pids(handle.pgid) == []
    assert driver.wait(handle, 1).signal == signal.SIGKILL


@pytest.mark.skipif(shutil.which("setsid") is None, reason="needs the setsid binary")
def test_stop_kills_a_child_that_left_the_group(run, driver, tmp_path):
    pidfile = tmp_path / "escaped.pid"
    ctx, handle = run.start(
        {"command": f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' & wait"}
    )
    assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip())
    escaped = int(pidfile.read_text())
    driver.stop(handle, 2.0)
    assert not live(escaped)  # stop returns once it is gone, not before


def test_stop_after_the_end_waits_for_the_dying_rest_of_the_group(driver, tmp_path):
    """The supervisor records the end right after SIGKILLing the group, whose
    members take a moment to go: stop must not return before they have."""
    record = tmp_path / "run-0.json"
    record.write_text('{"supervisor_pid": 1}\n{"pid": 2}\n{"exit_code": 143, "signal": 15}\n')
    # A member left behind that is still going: it goes by itself in 0.6s.
    rest = subprocess.Popen(["sleep", "0.6"], start_new_session=True)
    try:
        handle = ExecHandle(pid=rest.pid, pgid=rest.pid, record_path=str(record))
        driver.stop(handle, 5.0)
        assert group_pids(rest.pid) == []
    finally:
        rest.kill()
        rest.wait()


def test_stragglers_die_when_the_leader_exits(run, tmp_path):
    pidfile = tmp_path / "bg.pid"
    ctx, result = run({"command": f"sleep 300 & echo $! > {pidfile}; exit 0"})
    assert result.exit_code == 0
    assert wait_for(lambda: not live(int(pidfile.read_text())), 2.0)


def test_stop_is_idempotent_and_tolerates_dead_tasks(run, driver):
    _, handle = run.start({"command": "exit 0"})
    assert driver.wait(handle, 5).exit_code == 0
    driver.stop(handle, 0.2)
    driver.stop(handle, 0.2)


def test_handle_json_and_recover(run, driver):
    _, handle = run.start({"command": "sleep 300"})
    data = driver.handle_to_json(handle)
    assert data["pid"] == handle.pid
    assert data["supervisor_pid"] != handle.pid
    recovered = driver.recover(data)
    assert recovered is not None
    assert driver.wait(recovered, 0.05) is None
    # A supervisor gone without a record (here: another run's paths): lost.
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert (
        driver.recover(
            {
                **data,
                "supervisor_pid": gone.pid,
                "pid": gone.pid,
                "record_path": data["record_path"] + ".none",
            }
        )
        is None
    )
    result = []
    waiter = threading.Thread(target=lambda: result.append(driver.wait(recovered, None)))
    waiter.start()
    driver.stop(recovered, 2.0)
    waiter.join(5)
    # The supervisor recorded the true exit, though we are not its parent.
    assert result and result[0].exit_code == 143 and result[0].signal == signal.SIGTERM
    again = driver.recover(data)
    assert again is not None and driver.wait(again, 0).exit_code == 143
    assert driver.recover({"pid": "x"}) is None


def test_task_outlives_its_agent_and_its_exit_is_recorded(run, driver, tmp_path):
    """The supervisor records the exit code of a task no agent waits for."""
    gate = tmp_path / "gate"
    ctx, handle = run.start({"command": f"while [ ! -e {gate} ]; do sleep 0.05; done; exit 7"})
    data = driver.handle_to_json(handle)
    driver.close()  # as if the agent that started it died
    gate.touch()
    successor = ExecDriver()  # not connected to that supervisor: it polls
    recovered = successor.recover(data)
    assert recovered is not None
    assert successor.wait(recovered, 10).exit_code == 7
    assert successor.recover(data) is not None  # the file still tells, after the end


def test_a_restarted_agent_reconnects_to_its_supervisor(make_ctx, tmp_path):
    """Same data dir, same supervisor: it survives the agent and tells the next one."""
    gate = tmp_path / "gate"
    first = ExecDriver(state_dir=str(tmp_path))
    handle = first.start(
        make_ctx({"command": f"while [ ! -e {gate} ]; do sleep 0.02; done; exit 5"})
    )
    data = first.handle_to_json(handle)
    first.close()
    assert live(handle.supervisor_pid) and live(handle.pid)
    second = ExecDriver(state_dir=str(tmp_path))
    try:
        other = second.start(make_ctx({"command": "sleep 300"}, name="other"))
        assert other.supervisor_pid == handle.supervisor_pid
        recovered = second.recover(data)
        assert second.wait(recovered, 0.05) is None
        gate.touch()
        assert second.wait(recovered, 10).exit_code == 5
        second.stop(other, 1.0)
        assert second.wait(other, 5).signal == signal.SIGTERM
    finally:
        second.close()
    # No agent, no task: the supervisor leaves.
    assert wait_for(lambda: not live(handle.supervisor_pid), 5.0)


def test_legacy_handle_without_supervisor(driver):
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        data = {
            "pid": proc.pid,
            "pgid": proc.pid,
            "create_time": psutil.Process(proc.pid).create_time(),
        }
        recovered = driver.recover(data)
        assert recovered is not None and driver.wait(recovered, 0.05) is None
        assert driver.recover({**data, "create_time": data["create_time"] - 1000}) is None
    finally:
        proc.kill()
        proc.wait()


def test_supervisor_start_failure_is_a_driver_error(driver, make_ctx):
    with pytest.raises(DriverError, match="executable not found: /nonexistent"):
        driver.start(make_ctx({"command": ["/nonexistent"]}))


def test_fingerprint():
    assert ExecDriver().fingerprint() == {"driver.exec": True}


def test_a_run_is_started_once_and_found_by_its_record(run, driver, make_ctx, tmp_path):
    """An agent killed between start and saving the handle: the run is in the task dir."""
    gate = tmp_path / "gate"
    config = {
        "command": f"echo started >> {tmp_path}/starts; "
        f"while [ ! -e {gate} ]; do sleep 0.02; done; exit 3"
    }
    ctx, handle = run.start(config)
    assert driver.find(make_ctx(config, attempt=1)) is None  # never started
    found = driver.find(ctx)
    assert found is not None and found.pid == handle.pid
    # Asked to start the same run again, the driver takes over the first one.
    again = driver.start(ctx)
    assert again.pid == handle.pid
    gate.touch()
    assert driver.wait(again, 10).exit_code == 3
    assert driver.wait(handle, 10).exit_code == 3
    assert read(tmp_path / "starts") == "started\n"
    assert driver.find(ctx) is not None  # ended: its exit is still on record


def test_a_task_whose_supervisor_died_is_killed_not_left_behind(run, driver):
    _, handle = run.start({"command": "sleep 300"})
    os.kill(handle.supervisor_pid, signal.SIGKILL)
    result = driver.wait(handle, 5)
    assert result.exit_code is None and "supervisor" in result.error
    assert wait_for(lambda: not live(handle.pid))


def test_after_its_supervisor_died_the_next_start_brings_up_another(run, driver):
    _, first = run.start({"command": "sleep 300"})
    os.kill(first.supervisor_pid, signal.SIGKILL)
    assert driver.wait(first, 5).exit_code is None
    ctx, result = run({"command": "exit 6"}, name="next")
    assert result.exit_code == 6
    _, second = run.start({"command": "sleep 300"}, name="third")
    assert second.supervisor_pid != first.supervisor_pid and live(second.supervisor_pid)
