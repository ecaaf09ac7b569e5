"""The deployment watcher while no deployment runs: it leaves the change feed
alone (no pass at every commit) and wakes when a deployment starts."""

from __future__ import annotations

import time

import pytest

from orch.server.deploywatcher import DeploymentWatcher
from orch.server.planner import new_eval
from orch.server.state import StateStore
from orch.structs import Deployment, Job, Node, Resources, Task, TaskGroup, TriggeredBy

from waiting import wait_for


@pytest.fixture
def watched(tmp_path):
    store = StateStore(str(tmp_path))
    passes: list[float] = []
    running = store.running_deployments

    def counted():
        passes.append(time.monotonic())
        return running()

    store.running_deployments = counted  # type: ignore[method-assign]
    # A tick far longer than the test: every pass seen is one a write caused.
    watcher = DeploymentWatcher(store, lambda job_id: None, lambda job_id, v: None, interval=30)
    watcher.start()
    # Started on the feed: the first commit gives a pass, which finds nothing.
    store.upsert_node(_node(0))
    assert wait_for(lambda: len(passes) == 1)
    yield store, passes
    watcher.stop()
    store.close()


def _node(i: int) -> Node:
    return Node(f"n{i}", resources=Resources(1000, 1000), attributes={"driver.exec": True})


def test_commits_without_a_deployment_wake_no_pass(watched):
    store, passes = watched
    for i in range(1, 21):
        store.upsert_node(_node(i))
        time.sleep(0.02)  # apart: a watcher on the feed would pass after each
    assert store.changes.index >= 20
    assert len(passes) == 1


def test_a_deployment_written_wakes_the_watcher_and_then_the_feed_does(watched):
    store, passes = watched
    # A deployment that stays running: of a stored job, its one group waiting
    # for a copy, its state as a pass computes it (so a pass writes nothing).
    # One of a job not stored was cancelled by its first pass; after that no
    # commit woke the watcher, and the test passed only if it looked at
    # ``passes`` before that next pass did (a loaded host's test did not).
    task = Task("t", "exec", {"command": "true"}, Resources(cpu=10, memory=10))
    job = Job("web", (TaskGroup("g", 1, (task,)),))
    store.put_job(job, new_eval("web", TriggeredBy.JOB_REGISTER, 1.0))
    version = store.get_job("web").version
    state = {"promoted": True, "placed": 0, "healthy": 0, "unhealthy": 0}
    deployment = Deployment("d1", "web", version, groups={"g": state}, create_time=1.0)
    store.put_deployment(deployment)
    assert wait_for(lambda: len(passes) >= 2, timeout=10)
    # A deployment runs: each commit is looked at again.
    assert store.get_deployment("d1").active  # its passes leave it running
    seen = len(passes)
    store.upsert_node(_node(2))
    assert wait_for(lambda: len(passes) > seen, timeout=10)
