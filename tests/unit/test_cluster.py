from orch.server.scheduler.cluster import Cluster
from orch.structs import Allocation, Node, Resources, replace


def node(node_id, region="global", cpu=1000, memory=2000, healthy=True):
    return Node(
        node_id,
        region=region,
        resources=Resources(cpu, memory),
        healthy=healthy,
        attributes={"driver.exec": True},
    )


def alloc(alloc_id, node_id="n1", job_id="j", cpu=100, memory=200):
    return Allocation(alloc_id, job_id, "g", node_id, 0, resources=Resources(cpu, memory))


def classes(cluster) -> dict[str, list[str]]:
    """Healthy node ids by class, as the scheduler reads them (members())."""
    return {cls: [room.node_id for room in rooms] for cls, rooms in cluster.members().items()}


def test_nodes_grouped_by_class():
    cluster = Cluster()
    cluster.upsert_node(node("a", "eu"))
    cluster.upsert_node(node("b", "eu"))
    cluster.upsert_node(node("c", "us"))
    assert sorted(sorted(ids) for ids in classes(cluster).values()) == [["a", "b"], ["c"]]
    assert {cluster.node(n).region for n in "abc"} == {"eu", "us"}


def test_upsert_moves_node_between_classes():
    cluster = Cluster()
    cluster.upsert_node(node("a", "eu"))
    cluster.upsert_node(node("b", "eu"))
    cluster.upsert_node(node("a", "us"))
    assert sorted(sorted(ids) for ids in classes(cluster).values()) == [["a"], ["b"]]
    assert cluster.node("a").region == "us"


def test_unhealthy_nodes_leave_classes():
    cluster = Cluster()
    cluster.upsert_node(node("a"))
    cluster.upsert_node(node("b"))
    cluster.set_healthy("a", False)
    assert list(classes(cluster).values()) == [["b"]]
    assert cluster.node("a").healthy is False
    cluster.set_healthy("a", True)
    assert sorted(next(iter(classes(cluster).values()))) == ["a", "b"]
    cluster.upsert_node(node("c", healthy=False))
    assert sorted(next(iter(classes(cluster).values()))) == ["a", "b"]
    cluster.set_healthy("missing", True)
    assert cluster.node("missing") is None


def test_reserve_and_release_are_idempotent():
    cluster = Cluster()
    cluster.upsert_node(node("n1"))
    a = alloc("a1")
    room = cluster.room("n1")
    cluster.reserve(a)
    cluster.reserve(a)
    assert cluster.free("n1") == Resources(900, 1800)
    assert cluster.job_nodes("j") == {room: 1}
    cluster.reserve(alloc("a2", job_id="k"))
    assert cluster.free("n1") == Resources(800, 1600)
    assert cluster.job_nodes("k") == {room: 1}
    cluster.release(a)
    cluster.release(a)
    assert cluster.free("n1") == Resources(900, 1800)
    assert cluster.job_nodes("j") == {}


def test_release_uses_what_was_reserved():
    cluster = Cluster()
    cluster.upsert_node(node("n1"))
    a = alloc("a1")
    cluster.reserve(a)
    cluster.release(replace(a, resources=Resources(999, 999)))
    assert cluster.free("n1") == Resources(1000, 2000)


def test_reservations_survive_node_upsert():
    cluster = Cluster()
    cluster.upsert_node(node("n1"))
    cluster.reserve(alloc("a1"))
    cluster.upsert_node(node("n1", cpu=2000))
    assert cluster.free("n1") == Resources(1900, 1800)
    assert cluster.free("unknown") == Resources(0, 0)
