"""Host ports as a scheduled resource (issue #11 item 1): the network block,
port picking, the feasibility reason, the plan commit's re-check and the
index rebuilt from stored allocations."""

from __future__ import annotations

import copy
import random

import pytest

from orch.codec import alloc_from, allocs_json, job_from, node_from
from orch.config import ServerConfig
from orch.errors import ValidationError
from orch.jobspec import parse_job
from orch.server import deploy
from orch.server.scheduler import ports as host_ports
from orch.server.scheduler.cluster import Cluster
from orch.server.scheduler.generic import compute_plan
from orch.server.scheduler.system import compute_system_plan
from orch.server.server import Server
from orch.server.worker import SchedulerWorker
from orch.structs import (
    AllocStatus,
    DesiredStatus,
    Evaluation,
    Node,
    Plan,
    Resources,
    TriggeredBy,
    replace,
)
from orch.validation.bodies import port_range

EVAL = Evaluation("e1", "web", TriggeredBy.JOB_REGISTER)


def body(ports, count=1, job_id="web", type="service"):
    return {
        "job_id": job_id,
        "type": type,
        "task_groups": [
            {
                "name": "g",
                "count": count,
                "network": {"ports": ports},
                "tasks": [
                    {
                        "name": "t",
                        "config": {"command": "sleep 60"},
                        "resources": {"cpu": 10, "memory": 10},
                    }
                ],
            }
        ],
    }


def one_node(port_range=(20000, 32000), nodes=("n1",)):
    cluster = Cluster()
    for node_id in nodes:
        cluster.upsert_node(
            Node(
                node_id,
                resources=Resources(10_000, 10_000),
                attributes={"driver.exec": True},
                port_range=port_range,
            )
        )
    return cluster


# ---- validation and storage ---------------------------------------------------


def test_network_block_is_parsed_stored_and_read_back():
    job = parse_job(body([{"label": "http"}, {"label": "admin", "static": 8080, "to": 80}]))
    group = job.task_groups[0]
    assert [(p.label, p.static, p.to) for p in group.ports] == [
        ("http", None, None),
        ("admin", 8080, 80),
    ]
    stored = job.to_dict()
    assert stored["task_groups"][0]["network"] == {
        "ports": [{"label": "http"}, {"label": "admin", "static": 8080, "to": 80}]
    }
    assert job_from(stored) == job


def test_a_group_without_ports_keeps_its_shape_and_hash():
    plain = body([])
    del plain["task_groups"][0]["network"]
    group = parse_job(plain).task_groups[0]
    assert "network" not in group.to_dict()
    with_ports = parse_job(body([{"label": "http"}])).task_groups[0]
    # A port change replaces the copies; no ports leaves old hashes alone.
    assert group.spec_hash() != with_ports.spec_hash()
    assert group.spec_hash() == replace(with_ports, ports=()).spec_hash()


@pytest.mark.parametrize(
    "ports, message",
    [
        ([{"label": "http"}, {"label": "http"}], 'duplicate port label "http"'),
        ([{"label": "a", "static": 80}, {"label": "b", "static": 80}], "already used"),
        ([{"label": "a", "static": 0}], "static: must be an integer from 1 to 65535"),
        ([{"label": "a", "static": 65536}], "static: must be an integer"),
        ([{"label": "a", "to": True}], "to: must be an integer"),
        ([{"label": "a-b"}], "label: must be 1-64 letters"),
        ([{"label": 3}], "label: must be"),
        ([{"label": "a", "host": 1}], "unknown field"),
        ([{"label": f"p{i}"} for i in range(33)], "at most 32"),
        ("http", "must be a list"),
    ],
)
def test_bad_network_blocks_are_refused_with_the_field(ports, message):
    with pytest.raises(ValidationError, match=message) as err:
        parse_job(body(ports))
    assert "task_groups[0].network" in str(err.value)


def test_port_range_of_an_agent():
    assert port_range(None) == (20000, 32000)
    assert port_range("30000-30010") == (30000, 30010)
    for bad in ("30010-30000", "0-10", "1-70000", "abc", 5, "1-", "-5"):
        with pytest.raises(ValidationError, match="LOW-HIGH"):
            port_range(bad)
    node = Node("n", port_range=(30000, 30010))
    assert node.to_dict()["port_range"] == "30000-30010"
    assert node_from(node.to_dict()).port_range == (30000, 30010)
    assert node_from({"node_id": "old"}).port_range == (20000, 32000)


def test_allocation_ports_survive_both_encodings():
    job = parse_job(body([{"label": "http", "to": 80}]))
    plan, _ = compute_plan(job, [], one_node(), EVAL, now=1.0, rng=random.Random(1))
    alloc = plan.place[0]
    assert alloc.ports[0]["label"] == "http" and alloc.ports[0]["to"] == 80
    assert alloc_from(alloc.to_dict()).ports == alloc.ports
    import json

    assert alloc_from(json.loads(allocs_json([alloc])[0])).ports == alloc.ports


# ---- placement --------------------------------------------------------------------


def test_three_copies_of_a_dynamic_port_get_three_distinct_ports():
    job = parse_job(body([{"label": "http"}], count=3))
    cluster = one_node(port_range=(20000, 20100))
    plan, _ = compute_plan(job, [], cluster, EVAL, now=1.0, rng=random.Random(7))
    values = [a.ports[0]["value"] for a in plan.place]
    assert len(plan.place) == 3 and len(set(values)) == 3
    assert all(20000 <= v <= 20100 for v in values)
    # Reserved, they are avoided by the next plan too.
    cluster.reserve_many(plan.place)
    more = parse_job(body([{"label": "http"}], count=3, job_id="more"))
    plan2, _ = compute_plan(more, [], cluster, EVAL, now=1.0, rng=random.Random(7))
    assert not set(values) & {a.ports[0]["value"] for a in plan2.place}


def test_a_taken_static_port_is_a_reason_in_words():
    job = parse_job(body([{"label": "http", "static": 8080}], count=2))
    plan, _ = compute_plan(job, [], one_node(), EVAL, now=1.0, rng=random.Random(1))
    assert len(plan.place) == 1 and plan.place[0].ports[0]["value"] == 8080
    assert plan.failed["g"] == {"wanted": 1, "failures": {"port 8080 taken": 1}}


def test_a_static_port_spreads_copies_over_nodes_and_release_frees_it():
    job = parse_job(body([{"label": "http", "static": 8080}], count=2))
    cluster = one_node(nodes=("n1", "n2"))
    plan, _ = compute_plan(job, [], cluster, EVAL, now=1.0, rng=random.Random(3))
    assert sorted(a.node_id for a in plan.place) == ["n1", "n2"] and not plan.failed
    cluster.reserve_many(plan.place)
    assert all(cluster.room(n).ports == {8080: 1} for n in ("n1", "n2"))
    cluster.release(plan.place[0])
    cluster.release(plan.place[0])  # twice: a no-op
    assert cluster.room(plan.place[0].node_id).ports == {}


def test_a_range_too_small_for_the_dynamic_ports_fails_by_name():
    job = parse_job(body([{"label": "a"}, {"label": "b"}], count=2))
    plan, _ = compute_plan(
        job, [], one_node(port_range=(30000, 30002)), EVAL, now=1.0, rng=random.Random(1)
    )
    assert len(plan.place) == 1
    assert plan.failed["g"]["failures"] == {host_ports.PORTS_EXHAUSTED: 1}


def test_stops_in_the_same_plan_free_their_ports():
    job = parse_job(body([{"label": "http", "static": 8080}]))
    cluster = one_node()
    first, _ = compute_plan(job, [], cluster, EVAL, now=1.0, rng=random.Random(1))
    cluster.reserve_many(first.place)
    changed = parse_job(body([{"label": "http", "static": 8080}], count=1))
    changed.task_groups[0].tasks[0].config["command"] = "sleep 61"
    changed = replace(changed, version=1)
    plan, _ = compute_plan(changed, first.place, cluster, EVAL, now=2.0, rng=random.Random(1))
    assert [a for a, _ in plan.stop] == [first.place[0].allocation_id]
    assert [a.ports[0]["value"] for a in plan.place] == [8080] and not plan.failed


def rolling_update(nodes, count=1):
    """Version 0 of a static-port service, version 1 submitted."""
    raw = body([{"label": "http", "static": 8080}], count=count)
    raw["update"] = {"max_parallel": 1}
    job = parse_job(raw)
    cluster = one_node(nodes=nodes)
    first, _ = compute_plan(job, [], cluster, EVAL, now=1.0, rng=random.Random(1))
    cluster.reserve_many(first.place)
    raw["task_groups"][0]["tasks"][0]["config"]["command"] = "sleep 61"
    changed = replace(parse_job(raw), version=1)
    d = deploy.new_deployment(changed, list(changed.task_groups), 2.0)
    running = [replace(a, client_status=AllocStatus.RUNNING) for a in first.place]
    plan, _ = compute_plan(
        changed, running, cluster, EVAL, now=2.0, rng=random.Random(1), deployment=d
    )
    return first, plan


def test_a_rolling_update_stops_the_old_copy_whose_static_port_its_replacement_needs():
    """As Nomad's destructive update: the replacement did not fit beside its
    old copy (port 8080 taken), so the update never ran."""
    first, plan = rolling_update(("n1", "n2", "n3"), count=3)
    assert len(plan.stop) == 1 and not plan.failed  # max_parallel 1
    (old,) = [a for a in first.place if a.allocation_id == plan.stop[0][0]]
    assert [(a.node_id, a.index, a.ports[0]["value"]) for a in plan.place] == [
        (old.node_id, old.index, 8080)
    ]


def test_a_rolling_update_keeps_the_old_copy_while_its_replacement_fits_elsewhere():
    _first, plan = rolling_update(("n1", "n2"))
    assert plan.stop == [] and len(plan.place) == 1 and not plan.failed


def test_the_system_scheduler_picks_ports_and_names_a_conflict():
    cluster = one_node(nodes=("n1", "n2"))
    taken = parse_job(body([{"label": "x", "static": 9000}], job_id="other"))
    first, _ = compute_plan(taken, [], cluster, EVAL, now=1.0, rng=random.Random(1))
    cluster.reserve_many(first.place)
    busy = first.place[0].node_id
    job = parse_job(
        body([{"label": "x", "static": 9000}, {"label": "d"}], job_id="sys", type="system")
    )
    plan, _ = compute_system_plan(job, [], cluster, EVAL, now=1.0, rng=random.Random(1))
    assert [a.node_id for a in plan.place] == [n for n in ("n1", "n2") if n != busy]
    ports = {p["label"]: p["value"] for p in plan.place[0].ports}
    assert ports["x"] == 9000 and 20000 <= ports["d"] <= 32000
    assert plan.failed["g"]["failures"] == {"port 9000 taken": 1}


# ---- the store: commit re-check and restart -------------------------------------


@pytest.fixture
def server(tmp_path):
    srv = Server(ServerConfig(data_dir=str(tmp_path)))
    srv.pusher.place = srv.pusher.stop = lambda *args, **kwargs: None
    srv.register(
        {
            "node_id": "n1",
            "resources": {"cpu": 4000, "memory": 4000},
            "endpoint": "http://127.0.0.1:9",
            "port_range": "21000-21999",
        }
    )
    yield srv
    srv.stop()


def submit(server, raw):
    _, ev = server.submit_job(copy.deepcopy(raw))
    SchedulerWorker(server.broker, server.store, server.planner, 0, seed=1).process([ev])
    return server.store.get_eval(ev.eval_id)


def test_the_commit_rejects_a_placement_whose_port_was_taken_meanwhile(server):
    submit(server, body([{"label": "http", "static": 8080}]))
    (held,) = server.store.allocs_for_job("web")
    # A plan computed before that placement was committed: same port, same node.
    stale = replace(held, allocation_id="0190-stale", job_id="web", index=1)
    placed, _, rejected = server.store.commit_plan(Plan("e", "web", place=[stale]), [])
    assert (placed, rejected) == ([], 1)
    # Two placements of one plan may not share a port either.
    fresh = [
        replace(
            held, allocation_id=f"0190-new{i}", ports=[{"label": "d", "value": 21500, "to": None}]
        )
        for i in range(2)
    ]
    placed, _, rejected = server.store.commit_plan(Plan("e", "web", place=fresh), [])
    assert (len(placed), rejected) == (1, 1)


def test_ports_are_reserved_again_after_a_restart_and_freed_on_stop(tmp_path, server):
    ev = submit(server, body([{"label": "http"}], count=3))
    assert ev.placed == 3
    allocs = server.store.allocs_for_job("web")
    values = sorted(a.ports[0]["value"] for a in allocs)
    assert len(set(values)) == 3 and all(21000 <= v <= 21999 for v in values)
    server.stop()
    again = Server(ServerConfig(data_dir=str(tmp_path)))
    try:
        assert sorted(a.ports[0]["value"] for a in again.store.allocs_for_job("web")) == values
        assert sorted(again.store.cluster.room("n1").ports) == values
        again.store.stop_allocs([a.allocation_id for a in allocs], "test")
        assert again.store.cluster.room("n1").ports == {}
        assert all(
            a.desired_status == DesiredStatus.STOP for a in again.store.allocs_for_job("web")
        )
    finally:
        again.stop()


def test_the_cli_says_a_port_conflict_in_words():
    from orch.cli.format import describe_failures

    said = describe_failures({"port 8080 taken": 2, host_ports.PORTS_EXHAUSTED: 1})
    assert said == "dynamic ports exhausted on 1 node; port 8080 taken on 2 nodes"


def test_an_update_reuses_a_static_port_its_own_stop_frees(server):
    first = body([{"label": "http", "static": 8080}])
    submit(server, first)
    (old,) = server.store.allocs_for_job("web")
    changed = copy.deepcopy(first)
    changed["task_groups"][0]["tasks"][0]["config"]["command"] = "sleep 61"
    ev = submit(server, changed)
    assert ev.placed == 1 and not ev.failures
    live = [a for a in server.store.allocs_for_job("web") if a.holds_resources()]
    assert [a.ports[0]["value"] for a in live] == [8080] and live[0] is not old
    assert server.store.cluster.room("n1").ports == {8080: 1}


def test_a_bad_port_range_in_a_register_is_a_400(server):
    from orch.server.api import make_app

    from helpers import call

    reg = {
        "node_id": "n2",
        "resources": {"cpu": 1, "memory": 1},
        "endpoint": "http://127.0.0.1:9",
        "port_range": "9-1",
    }
    status, answer = call(make_app(server), "POST", "/register", reg)
    assert status == 400 and "port_range" in answer["error"]
    assert server.store.get_node("n2") is None
