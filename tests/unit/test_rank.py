"""Ranking, through the stack that applies it (it inlines the bin-pack score)."""

import random

import pytest

from orch.server.scheduler.cluster import Cluster
from orch.server.scheduler.rank import anti_affinity_penalty
from orch.server.scheduler.stack import Stack
from orch.structs import Allocation, Job, Node, Resources, Task, TaskGroup

GROUP = TaskGroup("g", 1, (Task("t", "exec", {"command": "x"}),))


def pick(nodes, demand, used=None):
    """The node a batch job's placement picks among ``nodes`` (limit 2: all)."""
    cluster = Cluster()
    for node_id, total in nodes.items():
        cluster.upsert_node(Node(node_id, resources=total))
    for node_id, res in (used or {}).items():
        cluster.reserve(Allocation(f"held-{node_id}", "other", "g", node_id, 0, resources=res))
    stack = Stack(cluster, Job("j", (GROUP,)), rng=random.Random(0))
    node_id, failures = stack.select(GROUP, demand)
    assert failures == {}
    return node_id


def test_the_fuller_node_wins_whatever_the_order():
    total = Resources(1000, 1000)
    used = {"fuller": Resources(500, 500), "emptier": Resources(100, 100)}
    for order in (("fuller", "emptier"), ("emptier", "fuller")):
        nodes = {node_id: total for node_id in order}
        assert pick(nodes, Resources(100, 100), used) == "fuller"


def test_balanced_use_beats_lopsided_use_of_the_same_total():
    total = Resources(1000, 1000)
    # After the placement both have 1000 free in all: 500 + 500, or 1000 + 0.
    used = {"balanced": Resources(500, 400), "lopsided": Resources(0, 900)}
    nodes = {"lopsided": total, "balanced": total}
    assert pick(nodes, Resources(0, 100), used) == "balanced"


def test_a_node_without_cpu_capacity_is_ranked_without_dividing_by_zero():
    assert pick({"no-cpu": Resources(0, 1000)}, Resources(0, 100)) == "no-cpu"


def test_anti_affinity_penalty():
    assert anti_affinity_penalty(0, 3) == 0.0
    assert anti_affinity_penalty(1, 3) == pytest.approx(2 / 3)
    assert anti_affinity_penalty(2, 3) == pytest.approx(1.0)
    assert anti_affinity_penalty(1, 0) == 2.0
