from orch.server.scheduler.cluster import Cluster
from orch.structs import Allocation, Node, Resources, replace


def node(node_id, region="global", cpu=1000, memory=2000, healthy=True):
    return Node(node_id, region=region, resources=Resources(cpu, memory),
                healthy=healthy, attributes={"driver.exec": True})


def alloc(alloc_id, node_id="n1", job_id="j", cpu=100, memory=200):
    return Allocation(alloc_id, job_id, "g", node_id, 0,
                      resources=Resources(cpu, memory))


def test_nodes_grouped_by_class():
    cluster = Cluster()
    cluster.upsert_node(node("a", "eu"))
    cluster.upsert_node(node("b", "eu"))
    cluster.upsert_node(node("c", "us"))
    classes = cluster.classes()
    assert sorted(sorted(ids) for ids in classes.values()) == [["a", "b"], ["c"]]
    assert len(cluster) == 3
    assert {n.node_id for n in cluster.nodes()} == {"a", "b", "c"}


def test_upsert_moves_node_between_classes():
    cluster = Cluster()
    cluster.upsert_node(node("a", "eu"))
    cluster.upsert_node(node("b", "eu"))
    cluster.upsert_node(node("a", "us"))
    classes = sorted(sorted(ids) for ids in cluster.classes().values())
    assert classes == [["a"], ["b"]]
    assert cluster.node("a").region == "us"


def test_unhealthy_and_removed_nodes_leave_classes():
    cluster = Cluster()
    cluster.upsert_node(node("a"))
    cluster.upsert_node(node("b"))
    cluster.set_healthy("a", False)
    assert list(cluster.classes().values()) == [["b"]]
    assert cluster.node("a").healthy is False
    cluster.set_healthy("a", True)
    assert sorted(next(iter(cluster.classes().values()))) == ["a", "b"]
    cluster.remove_node("b")
    assert list(cluster.classes().values()) == [["a"]]
    assert cluster.node("b") is None
    cluster.upsert_node(node("c", healthy=False))
    assert list(cluster.classes().values()) == [["a"]]
    cluster.set_healthy("missing", True)
    cluster.remove_node("missing")


def test_reserve_and_release_are_idempotent():
    cluster = Cluster()
    cluster.upsert_node(node("n1"))
    a = alloc("a1")
    cluster.reserve(a)
    cluster.reserve(a)
    assert cluster.free("n1") == Resources(900, 1800)
    assert cluster.job_count("j", "n1") == 1
    cluster.reserve(alloc("a2", job_id="k"))
    assert cluster.free("n1") == Resources(800, 1600)
    assert cluster.job_count("k", "n1") == 1
    cluster.release(a)
    cluster.release(a)
    assert cluster.free("n1") == Resources(900, 1800)
    assert cluster.job_count("j", "n1") == 0


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


def test_version_bumps_on_changes_only():
    cluster = Cluster()
    versions = [cluster.version]
    cluster.upsert_node(node("n1"))
    versions.append(cluster.version)
    cluster.upsert_node(replace(node("n1"), last_heartbeat=5.0))
    assert cluster.version == versions[-1]
    cluster.reserve(alloc("a1"))
    versions.append(cluster.version)
    cluster.release(alloc("a1"))
    versions.append(cluster.version)
    cluster.set_healthy("n1", False)
    versions.append(cluster.version)
    cluster.remove_node("n1")
    versions.append(cluster.version)
    assert versions == sorted(set(versions))
