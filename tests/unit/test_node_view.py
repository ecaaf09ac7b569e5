"""GET /nodes' node shape: the seed's fields, and numbers that say what they are."""

from orch.server.views import node_view
from orch.structs import Allocation, AllocStatus, DesiredStatus, Node, Resources


def alloc(i, status=AllocStatus.RUNNING, desired=DesiredStatus.RUN):
    return Allocation(
        f"a{i}",
        "web",
        "g",
        "n1",
        i,
        Resources(100, 64),
        desired_status=desired,
        client_status=status,
    )


def test_node_view_keeps_the_seed_fields_and_adds_allocated_and_free():
    node = Node(
        "n1",
        resources=Resources(2000, 1024),
        usage={"cpu": 1800, "memory": 900, "cpu_used": 200, "memory_used": 124},
    )
    view = node_view(
        node, [alloc(0), alloc(1), alloc(2, desired=DesiredStatus.STOP)], lambda j: None
    )
    for seed in ("node_id", "region", "resources", "healthy", "last_heartbeat", "allocations"):
        assert seed in view
    assert view["resources"] == {"cpu": 2000, "memory": 1024}  # total, as registered
    assert view["usage"]["cpu_used"] == 200  # the heartbeat, as sent
    assert view["allocated"] == {"cpu": 200, "memory": 128}  # a stopping one holds none
    assert view["free"] == {"cpu": 1800, "memory": 896}
    first = view["allocations"][0]
    assert set(first) >= {
        "allocation_id",
        "job_id",
        "task_group",
        "status",
        "start_time",
        "end_time",
    }
    assert first["resources"] == {"cpu": 100, "memory": 64}
