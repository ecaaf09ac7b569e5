"""Suspect nodes (pushes to them fail) get no new placements."""

from orch.server.scheduler.cluster import Cluster
from orch.structs import Node, Resources, replace


def node(node_id, cpu=1000, healthy=True):
    return Node(
        node_id,
        region="global",
        resources=Resources(cpu, 2000),
        healthy=healthy,
        attributes={"driver.exec": True},
    )


def member_ids(cluster):
    return sorted(room.node_id for rooms in cluster.members().values() for room in rooms)


def test_a_suspect_node_leaves_the_classes_until_cleared():
    cluster = Cluster()
    cluster.upsert_node(node("a"))
    cluster.upsert_node(node("b"))
    cluster.set_suspect("a", True)
    assert member_ids(cluster) == ["b"]
    assert cluster.suspect() == {"a"}
    assert cluster.node("a").healthy, "suspect is not down"
    # Changes to the node while suspect do not bring it back.
    cluster.upsert_node(replace(node("a"), resources=Resources(2000, 2000)))
    cluster.set_healthy("a", False)
    cluster.set_healthy("a", True)
    assert member_ids(cluster) == ["b"]
    cluster.set_suspect("a", False)
    assert member_ids(cluster) == ["a", "b"] and cluster.suspect() == frozenset()


def test_a_node_down_and_suspect_comes_back_only_when_both_clear():
    cluster = Cluster()
    cluster.upsert_node(node("a"))
    cluster.set_healthy("a", False)
    cluster.set_suspect("a", True)
    cluster.set_suspect("a", False)
    assert member_ids(cluster) == []
    cluster.set_healthy("a", True)
    assert member_ids(cluster) == ["a"]


def test_suspect_before_registering_is_kept():
    cluster = Cluster()
    cluster.set_suspect("a", True)
    cluster.upsert_node(node("a"))
    assert member_ids(cluster) == []
    cluster.set_suspect("a", False)
    assert member_ids(cluster) == ["a"]
