import pytest

from orch.server.scheduler.cluster import Cluster
from orch.server.scheduler.feasible import (
    check_constraint,
    class_feasible,
    drivers_feasible,
    feasible_parts,
)
from orch.structs import Constraint, Job, Node, Resources, Task, TaskGroup

ATTRS = {
    "os": "linux",
    "arch": "amd64",
    "cpu.cores": 8,
    "hostname": "h1",
    "driver.exec": True,
    "driver.docker": False,
    "kernel": "6.1.0-13",
}


def node(node_id="n1", region="eu", attrs=None, meta=None):
    return Node(
        node_id,
        region=region,
        resources=Resources(1000, 1000),
        attributes=dict(ATTRS if attrs is None else attrs),
        meta=meta or {"rack": "r1", "tier": "10"},
    )


def ok(attribute, op, value, n=None):
    return check_constraint(n or node(), Constraint(attribute, op, value))


@pytest.mark.parametrize(
    "attribute,op,value,expected",
    [
        ("region", "=", "eu", True),
        ("region", "=", "us", False),
        ("region", "!=", "us", True),
        ("region", "!=", "eu", False),
        ("node_id", "=", "n1", True),
        ("hostname", "=", "h1", True),
        ("os", "=", "linux", True),
        ("arch", "!=", "arm64", True),
        ("cpu.cores", ">", "4", True),
        ("cpu.cores", ">", "8", False),
        ("cpu.cores", ">=", "8", True),
        ("cpu.cores", "<", "8", False),
        ("cpu.cores", "<=", "8.0", True),
        ("cpu.cores", "=", "8.0", True),
        ("meta.rack", "=", "r1", True),
        ("meta.rack", "=", "r2", False),
        ("kernel", "regex", r"^6\.", True),
        ("kernel", "regex", "^5", False),
        ("region", "regex", "e", True),
    ],
)
def test_operators(attribute, op, value, expected):
    assert ok(attribute, op, value) is expected


def test_numbers_compare_as_numbers_strings_as_strings():
    # As numbers 10 > 9; as strings "10" < "9".
    assert ok("meta.tier", ">", "9")
    assert not ok("meta.tier", "<", "9")
    assert ok("os", ">", "darwin")
    assert ok("os", "<", "windows")


def test_missing_attribute_fails_all_but_not_equal():
    for op in ("=", ">", "<", ">=", "<=", "regex"):
        assert not ok("meta.missing", op, "x")
    assert ok("meta.missing", "!=", "x")
    assert not ok("gpu", "=", "1")


def test_boolean_attributes():
    assert ok("driver.exec", "=", "true")
    assert ok("driver.exec", "=", "1")
    assert ok("driver.docker", "=", "false")
    assert not ok("driver.docker", "=", "true")
    assert ok("driver.docker", "!=", "true")


def group(*drivers, commands=True, constraints=()):
    tasks = tuple(
        Task(f"t{i}", d, {"command": "x"} if commands else {"image": "i"})
        for i, d in enumerate(drivers)
    )
    return TaskGroup("g", 1, tasks, constraints)


@pytest.mark.parametrize(
    "exec_attr,docker_attr,drivers,commands,expected",
    [
        (True, False, ("exec",), True, True),
        (False, True, ("exec",), True, False),
        (False, True, ("docker",), False, True),
        ("1", "0", ("docker",), True, True),  # exec fallback with a command
        (True, False, ("docker",), False, False),  # no command: no fallback
        (False, False, ("docker",), True, False),
        ("true", "false", ("exec", "docker"), True, True),
        ("0", "true", ("exec", "docker"), True, False),
    ],
)
def test_drivers(exec_attr, docker_attr, drivers, commands, expected):
    n = node(attrs={"driver.exec": exec_attr, "driver.docker": docker_attr})
    assert drivers_feasible(n, group(*drivers, commands=commands)) is expected


def test_node_without_driver_fingerprint_runs_anything():
    assert drivers_feasible(node(attrs={}), group("docker", commands=False))


def test_class_feasible_reasons_and_job_constraints():
    job = Job("j", (), constraints=(Constraint("region", "=", "us"),))
    g = group("exec")
    assert class_feasible(node(), job, g) == "constraint region = us"
    assert class_feasible(node(region="us"), job, g) is None
    docker = group("docker", commands=False)
    assert class_feasible(node(region="us"), job, docker) == "missing drivers"
    g2 = group("exec", constraints=(Constraint("os", "=", "windows"),))
    assert class_feasible(node(region="us"), job, g2) == "constraint os = windows"


def feasible_nodes(cluster, job, group):
    """Node ids that can run the group, and why the others cannot."""
    parts, failures = feasible_parts(cluster, job, group)
    return [node_id for _, ids in parts for node_id in ids], failures


def test_feasible_nodes_counts_rejections_per_class_size():
    cluster = Cluster()
    for i in range(3):
        cluster.upsert_node(node(f"eu{i}", region="eu"))
    for i in range(2):
        cluster.upsert_node(node(f"us{i}", region="us"))
    cluster.upsert_node(node("win", region="us", attrs={**ATTRS, "os": "windows"}))
    job = Job("j", (), constraints=(Constraint("region", "=", "us"),))
    g = group("exec", constraints=(Constraint("os", "=", "linux"),))
    candidates, failures = feasible_nodes(cluster, job, g)
    assert sorted(candidates) == ["us0", "us1"]
    assert failures == {"constraint region = us": 3, "constraint os = linux": 1}


def test_node_id_constraint_is_checked_per_node():
    cluster = Cluster()
    for i in range(4):
        cluster.upsert_node(node(f"n{i}"))
    job = Job("j", ())
    g = group("exec", constraints=(Constraint("node_id", "!=", "n2"),))
    candidates, failures = feasible_nodes(cluster, job, g)
    assert sorted(candidates) == ["n0", "n1", "n3"]
    assert failures == {"constraint node_id != n2": 1}


def test_unhealthy_nodes_are_not_candidates():
    cluster = Cluster()
    cluster.upsert_node(node("a"))
    cluster.upsert_node(node("b"))
    cluster.set_healthy("a", False)
    candidates, _ = feasible_nodes(cluster, Job("j", ()), group("exec"))
    assert candidates == ["b"]
