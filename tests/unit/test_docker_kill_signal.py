"""The docker driver's stop with a task's kill_signal and kill_timeout, on a real engine.

Skips (outside CI) when no engine answers; every container made here carries
this run's allocation label and is removed at teardown.
"""

import signal
import time
import uuid

import pytest

from orch.agent.drivers.docker import DockerDriver
from tests.docker_image import TEST_IMAGE, remove_containers

from helpers import TaskStarter, read_or_empty
from waiting import wait_for


@pytest.fixture
def start(tmp_path, engine):
    alloc_id = f"test-{uuid.uuid4().hex[:12]}"
    env = {"ORCH_ALLOC_ID": alloc_id}
    run = TaskStarter(
        DockerDriver(), alloc_id, tmp_path / "t", config={"image": TEST_IMAGE}, env=env
    )
    yield run
    run.stop_all(1)
    remove_containers(engine, alloc_id)


def test_the_kill_signal_reaches_the_container(start, engine):
    ctx, handle = start("trap 'echo got INT; exit 0' INT; echo ready; while :; do sleep 0.1; done")
    assert wait_for(lambda: "ready" in read_or_empty(ctx.stdout_path), timeout=30)
    start.driver.stop(handle, 10, signal.SIGINT)
    result = start.driver.wait(handle, 5)
    assert result is not None and result.exit_code == 0
    assert wait_for(lambda: "got INT" in read_or_empty(ctx.stdout_path), timeout=10)
    assert (
        engine.containers.list(all=True, ignore_removed=True, filters={"id": handle.container_id})
        == []
    )


def test_an_ignored_signal_ends_in_sigkill_after_the_timeout(start, engine):
    ctx, handle = start("trap '' INT TERM; echo ready; while :; do sleep 0.1; done")
    assert wait_for(lambda: "ready" in read_or_empty(ctx.stdout_path), timeout=30)
    began = time.monotonic()
    start.driver.stop(handle, 1, signal.SIGINT)
    assert 1.0 <= time.monotonic() - began < 8
    result = start.driver.wait(handle, 5)
    assert result is not None and result.exit_code == 137
    assert (
        engine.containers.list(all=True, ignore_removed=True, filters={"id": handle.container_id})
        == []
    )
