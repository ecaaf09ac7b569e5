"""The deployment watcher while no deployment runs: it leaves the change feed
alone (no pass at every commit) and wakes when a deployment starts."""

from __future__ import annotations

import time

import pytest

from orch.server.deploywatcher import DeploymentWatcher
from orch.server.state import StateStore
from orch.structs import Deployment, Node, Resources

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
    store.put_deployment(Deployment("d1", "web", 0, create_time=1.0, modify_time=1.0))
    assert wait_for(lambda: len(passes) >= 2, timeout=10)
    # A deployment runs: each commit is looked at again.
    seen = len(passes)
    store.upsert_node(_node(2))
    assert wait_for(lambda: len(passes) > seen, timeout=10)
