"""Group services: validation, storage round trip, reports, the catalog index."""

import json

import pytest

from orch import codec
from orch.agent.spec import parse_alloc
from orch.errors import ValidationError
from orch.jobspec import parse_job
from orch.server import catalog
from orch.server.push import alloc_payload
from orch.server.state import StateStore
from orch.server.sync import merge_report
from orch.structs import (
    Allocation,
    AllocStatus,
    EvalStatus,
    Evaluation,
    Node,
    Plan,
    Resources,
    TriggeredBy,
    replace,
)
from orch.validation import bodies


def job_body(services=None, count=1, job_id="web"):
    group = {
        "name": "g",
        "count": count,
        "tasks": [{"name": "t", "config": {"command": "sleep 100"}}],
    }
    if services is not None:
        group["services"] = services
    return {"job_id": job_id, "type": "service", "task_groups": [group]}


WEB = {
    "name": "web",
    "port": 8080,
    "tags": ["v1"],
    "checks": [{"type": "http", "path": "/health", "interval": "5s", "timeout": "2s"}],
    "check_restart": {"limit": 3, "grace": "10s"},
}


def test_services_are_validated_into_their_complete_form():
    group = parse_job(job_body([WEB])).task_groups[0]
    (service,) = group.services
    assert service == {
        "name": "web",
        "port": 8080,
        "tags": ["v1"],
        "checks": [
            {"name": "http-0", "type": "http", "interval": 5.0, "timeout": 2.0, "path": "/health"}
        ],
        "check_restart": {"limit": 3, "grace": 10.0},
    }
    script = {"name": "s", "checks": [{"type": "script", "command": "true"}, {"type": "tcp"}]}
    checks = parse_job(job_body([script])).task_groups[0].services[0]["checks"]
    assert [c["type"] for c in checks] == ["script", "tcp"]
    assert checks[0]["command"] == "true" and checks[0]["interval"] == 10.0


@pytest.mark.parametrize(
    "services, message",
    [
        ("web", "task_groups[0].services: must be a list"),
        ([{"name": "bad name"}], "task_groups[0].services[0].name"),
        ([{"name": "a"}, {"name": "a"}], 'duplicate service name "a"'),
        ([{"name": "a", "tags": [1]}], "task_groups[0].services[0].tags[0]: must be a string"),
        ([{"name": "a", "port": 70000}], "services[0].port: must be a port label"),
        ([{"name": "a", "checks": [{"type": "grpc"}]}], "checks[0].type: must be one of"),
        ([{"name": "a", "checks": [{"type": "tcp", "interval": "soon"}]}], "interval"),
        ([{"name": "a", "checks": [{"type": "tcp", "timeout": 0}]}], "timeout: must be more"),
        ([{"name": "a", "checks": [{"type": "http", "path": "x"}]}], "path: must be a string"),
        ([{"name": "a", "checks": [{"type": "tcp", "path": "/"}]}], "only allowed on http"),
        ([{"name": "a", "checks": [{"type": "script"}]}], "command: is required"),
        ([{"name": "a", "check_restart": {"limit": -1}}], "check_restart.limit"),
        ([{"name": "a", "check_restart": {"grace": "x"}}], "check_restart.grace"),
        ([{"name": "a", "colour": "red"}], "services[0].colour: unknown field"),
    ],
)
def test_bad_services_are_refused_with_the_path(services, message):
    with pytest.raises(ValidationError) as err:
        parse_job(job_body(services))
    assert message in str(err.value)


def test_spec_hash_and_dict_unchanged_without_services():
    plain = parse_job(job_body()).task_groups[0]
    assert "services" not in plain.to_dict()
    with_services = parse_job(job_body([WEB])).task_groups[0]
    assert with_services.spec_hash() != plain.spec_hash()
    assert replace(with_services, services=()).spec_hash() == plain.spec_hash()


def test_job_and_alloc_round_trip_through_the_codec():
    job = parse_job(job_body([WEB]))
    assert codec.job_from(json.loads(json.dumps(job.to_dict()))) == job
    alloc = Allocation("a1", "web", "g", "n1", 0, health="unhealthy")
    alloc.checks["web/http-0"] = {"status": "failing", "output": "HTTP 500", "time": 3.0}
    (stored,) = codec.allocs_json([alloc])
    assert codec.alloc_from(json.loads(stored)) == alloc
    assert codec.alloc_from(json.loads(codec.allocs_json([Allocation("a", "j", "g", "n", 0)])[0]))


def test_push_resolves_the_port_and_the_agent_validates_it():
    body = job_body([{**WEB, "port": "http"}, {"name": "raw", "port": 9000}])
    body["task_groups"][0]["network"] = {"ports": [{"label": "http", "to": 80}]}
    job = parse_job(body)
    alloc = Allocation("a1", "web", "g", "n1", 0)
    body = alloc_payload(alloc, job)
    assert [s["port"] for s in body["task_group"]["services"]] == [None, 9000]
    # A label resolves through the allocation's ports (the scheduler's, where set).
    ports = [{"label": "http", "value": 21000, "to": 80}]
    placed = Allocation("a1", "web", "g", "n1", 0, ports=ports)
    assert catalog.service_port({"port": "http"}, placed) == 21000
    spec = parse_alloc(body)
    assert spec.services[1]["port"] == 9000 and spec.services[0]["checks"][0]["path"] == "/health"
    assert parse_alloc(spec.to_dict()) == spec


def test_a_service_port_label_the_group_does_not_declare_is_refused():
    """It was taken, then never resolved: the service listed without a port,
    its http check failing for good. Nomad refuses it at submit."""
    for network in (None, {"ports": [{"label": "admin"}]}):
        body = job_body([{**WEB, "port": "http"}])
        if network:
            body["task_groups"][0]["network"] = network
        with pytest.raises(ValidationError, match=r"services\[0\]\.port: port label \"http\""):
            parse_job(body)


def test_reports_carry_health_and_checks():
    check = {"status": "passing", "output": "HTTP 200", "time": 1.0}
    bodies.alloc_report({"status": "running", "health": "healthy", "checks": {"w/c": check}}, "a")
    for bad, where in [
        ({"health": "fine"}, "a.health"),
        ({"checks": []}, "a.checks"),
        ({"checks": {"w/c": {"status": "ok"}}}, "a.checks.w/c.status"),
        ({"checks": {"w/c": {**check, "time": "x"}}}, "a.checks.w/c.time"),
    ]:
        with pytest.raises(ValidationError, match=where):
            bodies.alloc_report({"status": "running", **bad}, "a")
    alloc = Allocation("a1", "j", "g", "n1", 0, client_status=AllocStatus.RUNNING)
    report = {"status": "running", "health": "healthy", "checks": {"w/c": check}}
    merged = merge_report(alloc, report, 5.0)
    assert merged.health == "healthy" and merged.checks == {"w/c": check}
    assert merge_report(merged, report, 6.0) is None  # unchanged: no write
    cleared = merge_report(merged, {"status": "running"}, 7.0)
    assert cleared.health is None and cleared.checks == {}


def _store_with(tmp_path, count=3):
    store = StateStore(str(tmp_path))
    store.upsert_node(Node("n1", resources=Resources(4000, 4096), endpoint="http://10.1.2.3:4646"))
    job = parse_job(job_body([WEB, {"name": "admin", "port": 9000}], count=count))
    ev = Evaluation("e1", job.job_id, TriggeredBy.JOB_REGISTER)
    store.put_job(job, ev)
    allocs = [
        Allocation(f"a{i}", job.job_id, "g", "n1", i, resources=Resources(100, 64))
        for i in range(count)
    ]
    store.commit_plan(
        Plan("e1", job.job_id, place=allocs), [replace(ev, status=EvalStatus.COMPLETE)]
    )
    return store


def test_catalog_lists_live_instances_and_drops_stopped_and_lost(tmp_path):
    store = _store_with(tmp_path)
    assert catalog.list_services(store)["services"] == [
        {"name": "admin", "tags": [], "instances": 3, "healthy": 0},
        {"name": "web", "tags": ["v1"], "instances": 3, "healthy": 0},
    ]
    a0 = store.get_alloc("a0")
    store.update_allocs([replace(a0, client_status=AllocStatus.RUNNING, health="healthy")])
    (inst,) = catalog.instances(store, "web", healthy_only=True)
    assert inst == {
        "service": "web",
        "address": "10.1.2.3",
        "port": 8080,
        "tags": ["v1"],
        "alloc_id": "a0",
        "node_id": "n1",
        "job_id": "web",
        "healthy": True,
    }
    store.stop_allocs(["a1"], "test")
    assert [i["alloc_id"] for i in catalog.instances(store, "web")] == ["a0", "a2"]
    store.mark_node_down("n1", "missed heartbeats")
    assert catalog.instances(store, "web") == [] and catalog.list_services(store)["count"] == 0


def test_catalog_index_is_rebuilt_on_reopen(tmp_path):
    _store_with(tmp_path, count=2).close()
    again = StateStore(str(tmp_path))
    assert [i["alloc_id"] for i in catalog.instances(again, "admin")] == ["a0", "a1"]
    assert catalog.instances(again, "nope") == []


def test_instances_keep_the_service_they_were_placed_with(tmp_path):
    store = _store_with(tmp_path, count=1)
    changed = parse_job(job_body([{**WEB, "port": 9090, "tags": ["v2"]}], count=1))
    store.put_job(changed, Evaluation("e2", changed.job_id, TriggeredBy.JOB_UPDATE))
    (old,) = catalog.instances(store, "web")
    assert (old["port"], old["tags"]) == (8080, ["v1"])  # still the old copy's
    # The service the new version dropped still lists its running copy.
    assert [i["alloc_id"] for i in catalog.instances(store, "admin")] == ["a0"]
