import random

from orch.server.scheduler.cluster import Cluster
from orch.server.scheduler.stack import Ring, Stack, placement_limit
from orch.structs import Job, JobType, Node, Resources, Task, TaskGroup

GROUP = TaskGroup("g", 10, (Task("t", "exec", {"command": "x"}),))


def test_ring_visits_every_node_once_per_lap_in_random_order():
    ids = [f"n{i}" for i in range(50)]
    ring = Ring([ids], random.Random(3))
    first = [next(ring.walk) for _ in ids]
    second = [next(ring.walk) for _ in ids]
    assert sorted(first) == sorted(ids)
    assert first == second
    assert first != ids


def test_placement_limit():
    batch, service = Job("b", ()), Job("s", (), type=JobType.SERVICE)
    assert placement_limit(batch, 50000) == 2
    assert placement_limit(service, 1) == 2
    assert placement_limit(service, 4) == 2
    assert placement_limit(service, 50000) == 16


def test_batch_picks_the_fuller_of_the_first_two_fitting_nodes():
    cluster = Cluster()
    cluster.upsert_node(Node("big", resources=Resources(10000, 10000)))
    cluster.upsert_node(Node("small", resources=Resources(1000, 1000)))
    stack = Stack(cluster, Job("j", (GROUP,)), rng=random.Random(0))
    node_id, failures = stack.select(GROUP, Resources(100, 100))
    assert (node_id, failures) == ("small", {})


def test_select_counts_its_own_placements():
    cluster = Cluster()
    cluster.upsert_node(Node("n", resources=Resources(250, 1000)))
    stack = Stack(cluster, Job("j", (GROUP,)), rng=random.Random(0))
    demand = Resources(100, 100)
    assert stack.select(GROUP, demand)[0] == "n"
    assert stack.select(GROUP, demand)[0] == "n"
    assert stack.select(GROUP, demand) == (None, {"cpu exhausted": 1})
    assert cluster.free("n") == Resources(250, 1000)
