"""The scheduler's read-side indexes: rooms, shared class members, memo, rings."""

import random
from collections import Counter

from orch.server.scheduler.cluster import Cluster
from orch.server.scheduler.feasible import feasible_parts, feasible_rooms
from orch.server.scheduler.stack import Ring, Stack
from orch.structs import (
    Allocation,
    Constraint,
    Job,
    Node,
    Resources,
    Task,
    TaskGroup,
)

GROUP = TaskGroup("g", 10, (Task("t", "exec", {"command": "x"}),))


def node(node_id, region="eu", cpu=1000, memory=1000):
    return Node(
        node_id, region=region, resources=Resources(cpu, memory), attributes={"driver.exec": True}
    )


def alloc(alloc_id, node_id, job_id="j", cpu=100, memory=100):
    return Allocation(alloc_id, job_id, "g", node_id, 0, resources=Resources(cpu, memory))


def test_rooms_follow_capacity_usage_and_health():
    cluster = Cluster()
    cluster.upsert_node(node("n1"))
    room = cluster.room("n1")

    def seen():
        return (room.cpu, room.memory, room.cpu_used, room.memory_used, room.healthy)

    assert seen() == (1000, 1000, 0, 0, True)
    cluster.reserve_many([alloc("a1", "n1"), alloc("a1", "n1"), alloc("a2", "n1")])
    assert seen() == (1000, 1000, 200, 200, True)
    assert cluster.free("n1") == Resources(800, 800)
    assert cluster.job_nodes("j") == {room: 2}
    cluster.release(alloc("a1", "n1"))
    assert seen() == (1000, 1000, 100, 100, True)
    cluster.set_healthy("n1", False)
    assert seen() == (1000, 1000, 100, 100, False)
    assert cluster.members() == {}
    cluster.set_healthy("n1", True)
    assert seen() == (1000, 1000, 100, 100, True)
    cluster.upsert_node(node("n1", cpu=2000))
    assert seen() == (2000, 1000, 100, 100, True) and cluster.room("n1") is room
    cluster.release(alloc("a2", "n1"))
    assert cluster.job_nodes("j") == {}


def test_a_reservation_on_an_unknown_node_is_kept_for_when_it_registers():
    cluster = Cluster()
    cluster.reserve(alloc("a1", "later", cpu=300, memory=300))
    room = cluster.room("later")
    assert (room.cpu_used, room.memory_used) == (300, 300)
    assert cluster.free("later") == Resources(0, 0) and cluster.members() == {}
    cluster.upsert_node(node("later"))
    assert cluster.free("later") == Resources(700, 700)
    assert [r.node_id for rooms in cluster.members().values() for r in rooms] == ["later"]


def test_members_are_shared_until_a_class_changes():
    cluster = Cluster()
    cluster.upsert_node(node("a"))
    first = cluster.members()
    cluster.reserve(alloc("x", "a"))
    assert cluster.members() is first
    cluster.upsert_node(node("b"))
    second = cluster.members()
    assert second is not first
    assert sorted(r.node_id for r in next(iter(second.values()))) == ["a", "b"]
    assert [[r.node_id for r in rooms] for rooms in first.values()] == [["a"]]


def test_feasible_parts_answer_is_reused_then_refreshed():
    cluster = Cluster()
    cluster.upsert_node(node("eu1"))
    cluster.upsert_node(node("us1", region="us"))
    job = Job("j", (GROUP,), constraints=(Constraint("region", "=", "eu"),))
    parts, failures = feasible_rooms(cluster, job, GROUP)
    assert [[r.node_id for r in rooms] for _, rooms in parts] == [["eu1"]]
    assert failures == {"constraint region = eu": 1}
    assert feasible_rooms(cluster, job, GROUP)[0] is parts
    ids, _ = feasible_parts(cluster, job, GROUP)
    assert [(len(part), list(part), part[0]) for _, part in ids] == [(1, ["eu1"], "eu1")]
    cluster.upsert_node(node("eu2"))
    parts, failures = feasible_rooms(cluster, job, GROUP)
    assert sorted(r.node_id for _, rooms in parts for r in rooms) == ["eu1", "eu2"]
    cluster.set_healthy("eu1", False)
    parts, _ = feasible_rooms(cluster, job, GROUP)
    assert [r.node_id for _, rooms in parts for r in rooms] == ["eu2"]


def test_ring_over_parts_visits_each_once_and_forgets_dropped():
    parts = [("a", "b", "c"), (), ("d",), ("e", "f")]
    ring = Ring(parts, random.Random(5))
    assert len(ring) == 6
    first = [next(ring.walk) for _ in range(6)]
    assert sorted(first) == ["a", "b", "c", "d", "e", "f"]
    ring.drop(first[0])
    ring.drop(first[3])
    ring.drop(first[3])
    assert len(ring) == 4
    second = [next(ring.walk) for _ in range(4)]
    assert second == [n for n in first if n not in (first[0], first[3])]
    for node_id in second:
        ring.drop(node_id)
    assert len(ring) == 0 and next(ring.walk, None) is None


def test_full_nodes_are_dropped_but_still_counted_when_placement_fails():
    cluster = Cluster()
    for i in range(6):
        cluster.upsert_node(node(f"n{i}", cpu=250 if i < 3 else 1000, memory=250))
    stack = Stack(cluster, Job("j", (GROUP,)), rng=random.Random(1))
    demand = Resources(100, 100)
    placed = Counter()
    while True:
        node_id, failures = stack.select(GROUP, demand)
        if node_id is None:
            break
        placed[node_id] += 1
    assert placed == {f"n{i}": 2 for i in range(6)}
    assert failures == {"cpu exhausted": 3, "memory exhausted": 3}


def test_a_node_going_down_mid_evaluation_is_skipped():
    cluster = Cluster()
    cluster.upsert_node(node("a"))
    cluster.upsert_node(node("b"))
    stack = Stack(cluster, Job("j", (GROUP,)), rng=random.Random(0))
    stack.select(GROUP, Resources(1, 1))
    cluster.set_healthy("a", False)
    for _ in range(5):
        assert stack.select(GROUP, Resources(1, 1))[0] == "b"


def crowded(full_classes=100, size=1):
    """Many full classes (one node each, own region) and one class with room."""
    cluster = Cluster()
    for i in range(full_classes):
        cluster.upsert_node(node(f"full{i}", region=f"r{i}", memory=100))
        cluster.reserve(alloc(f"x{i}", f"full{i}", job_id="other", cpu=0, memory=100))
    for i in range(size):
        cluster.upsert_node(node(f"free{i}", region="spare"))
    return cluster


def test_class_room_is_cached_until_the_class_changes():
    cluster = crowded(full_classes=1, size=2)
    spare = cluster.room("free0").node_class
    assert cluster.class_room(spare) == (1000, 1000, 2)
    cluster.reserve(alloc("a", "free0", memory=700))
    assert cluster.class_room(spare) == (1000, 1000, 2)  # free1 is untouched
    cluster.reserve(alloc("b", "free1", cpu=300, memory=400))
    assert cluster.class_room(spare) == (900, 600, 2)
    cluster.set_healthy("free1", False)
    assert cluster.class_room(spare) == (900, 300, 1)


def test_crowded_cluster_places_on_the_class_with_room():
    cluster = crowded()
    stack = Stack(cluster, Job("j", (GROUP,)), rng=random.Random(4))
    for _ in range(10):
        assert stack.select(GROUP, Resources(50, 100))[0] == "free0"
    node_id, failures = stack.select(GROUP, Resources(50, 100))
    assert node_id is None
    assert failures == {"memory exhausted": 101}


def test_stops_in_the_plan_keep_their_class_in_a_crowded_cluster():
    cluster = crowded()
    running = alloc("x7", "full7", job_id="j", cpu=0, memory=100)
    cluster.release(alloc("x7", "full7"))
    cluster.reserve(running)
    stack = Stack(cluster, Job("j", (GROUP,)), rng=random.Random(4), releasing=[running])
    picked = Counter(stack.select(GROUP, Resources(0, 100))[0] for _ in range(11))
    assert picked == {"free0": 10, "full7": 1}


def fit_score(total_cpu, total_memory, free_cpu, free_memory):
    """Nomad's ScoreFitBinPack, 0..1, written out plainly as the oracle."""
    cpu = min(1.0, max(0.0, free_cpu / total_cpu)) if total_cpu > 0 else 0.0
    memory = min(1.0, max(0.0, free_memory / total_memory)) if total_memory > 0 else 0.0
    return min(18.0, max(0.0, 20.0 - (10.0**cpu + 10.0**memory))) / 18.0


def test_the_stack_ranks_as_the_binpack_score_does():
    # With limit 2 the stack must keep the better of the two nodes by the
    # bin-pack score (penalties aside).
    cluster = Cluster()
    sizes = [(1000, 4000), (4000, 1000), (3000, 3000), (500, 8000), (8000, 500)]
    for i, (cpu, memory) in enumerate(sizes):
        cluster.upsert_node(node(f"n{i}", cpu=cpu, memory=memory))
    demand = Resources(300, 300)
    for seed in range(30):
        stack = Stack(cluster, Job("j", (GROUP,)), rng=random.Random(seed))
        ring = stack._state(GROUP, demand).ring
        first_two = [next(ring.walk).node_id, next(ring.walk).node_id]
        stack = Stack(cluster, Job("j", (GROUP,)), rng=random.Random(seed))
        chosen = stack.select(GROUP, demand)[0]

        def score(node_id):
            n = cluster.node(node_id).resources
            return fit_score(n.cpu, n.memory, n.cpu - 300, n.memory - 300)

        assert chosen == max(first_two, key=score)
