"""The /v1 API through the server's WSGI app: Nomad's shapes, indexes and error form."""

from __future__ import annotations

import copy
import json
import random
import threading
import time

import pytest

from orch.config import ServerConfig
from orch.server.api import make_app
from orch.server.changes import MAX_BLOCKING
from orch.server.server import Server

from helpers import request
from waiting import wait_for

NODE_ID = "11111111-2222-4333-8444-555555555555"


def nomad_job(job_id: str = "web", count: int = 2, **extra) -> dict:
    """A job in Nomad's API JSON form, as python-nomad users write it."""
    return {
        "ID": job_id,
        "Name": job_id,
        "Type": "service",
        "Datacenters": ["dc1"],
        "TaskGroups": [
            {
                "Name": "g",
                "Count": count,
                "Tasks": [
                    {
                        "Name": "t",
                        "Driver": "raw_exec",
                        "Config": {"command": "/bin/sleep", "args": ["300"]},
                        "Env": {"MODE": "test"},
                        "Resources": {"CPU": 100, "MemoryMB": 64},
                        "KillTimeout": 3_000_000_000,
                    }
                ],
            }
        ],
        **extra,
    }


@pytest.fixture
def server(tmp_path):
    server = Server(ServerConfig(data_dir=str(tmp_path), token="s3cret"))
    yield server
    server.stop()


@pytest.fixture
def app(server):
    return make_app(server)


AUTH = {"X-Nomad-Token": "s3cret"}


def call(app, method, path, body=None, headers=AUTH):
    """(status, headers, body: JSON when the answer is JSON, else text)."""
    raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    status, out_headers, text = request(app, method, path, body=raw, headers=headers)
    if out_headers.get("Content-Type", "").startswith("application/json"):
        return status, out_headers, json.loads(text)
    return status, out_headers, text


def register(app, job=None) -> dict:
    status, _, out = call(app, "POST", "/v1/jobs", {"Job": job or nomad_job()})
    assert status == 200, out
    return out


def add_node(app, node_id: str = NODE_ID) -> None:
    body = {
        "node_id": node_id,
        "region": "global",  # no datacenter attribute: in dc1, Nomad's default
        "resources": {"cpu": 4000, "memory": 4096},
        "endpoint": "http://127.0.0.1:9",
        "attributes": {"hostname": "n1", "driver.exec": True, "driver.docker": False},
    }
    status, _, out = call(app, "POST", "/register", body, {"Authorization": "Bearer s3cret"})
    assert status == 200, out


def test_register_answers_nomads_fields_and_the_job_reads_back(app):
    out = register(app)
    assert set(out) >= {"EvalID", "EvalCreateIndex", "JobModifyIndex", "Warnings"}
    status, headers, job = call(app, "GET", "/v1/job/web")
    assert status == 200
    assert int(headers["X-Nomad-Index"]) == job["ModifyIndex"] > 0
    assert job["ID"] == "web" and job["Type"] == "service" and job["Status"] == "pending"
    assert job["JobModifyIndex"] == out["JobModifyIndex"]
    assert job["CreateIndex"] <= job["JobModifyIndex"] <= job["ModifyIndex"]
    assert isinstance(job["SubmitTime"], int) and job["SubmitTime"] > 1_700_000_000 * 10**9
    [group] = job["TaskGroups"]
    [task] = group["Tasks"]
    assert group["Count"] == 2
    assert task["Driver"] == "exec" and task["Env"] == {"MODE": "test"}
    assert task["Resources"] == {"CPU": 100, "MemoryMB": 64}
    assert task["KillTimeout"] == 3_000_000_000
    assert task["Config"] == {"command": "/bin/sleep", "args": ["300"]}
    assert job["Constraints"] == [
        {"LTarget": "${node.datacenter}", "RTarget": "dc1", "Operand": "="}
    ]


def test_a_job_read_back_registers_again_unchanged(app):
    first = register(app)
    _, _, job = call(app, "GET", "/v1/job/web")
    status, _, again = call(app, "POST", "/v1/job/web", {"Job": job})
    assert status == 200, again
    # Unchanged: no new version, the same evaluation, the same modify index.
    assert again["EvalID"] == first["EvalID"]
    assert again["JobModifyIndex"] == first["JobModifyIndex"]
    assert call(app, "GET", "/v1/job/web")[2]["Version"] == 0


def test_an_update_raises_the_indexes_and_keeps_versions(app):
    first = register(app)
    time.sleep(0.002)
    second = register(app, nomad_job(count=3))
    assert second["JobModifyIndex"] > first["JobModifyIndex"]
    assert second["EvalID"] != first["EvalID"]
    status, _, versions = call(app, "GET", "/v1/job/web/versions")
    assert status == 200
    assert [v["Version"] for v in versions["Versions"]] == [1, 0]
    assert [v["TaskGroups"][0]["Count"] for v in versions["Versions"]] == [3, 2]


def test_lists_are_nomads_stubs_with_an_index(app):
    register(app)
    register(app, nomad_job("api"))
    status, headers, jobs = call(app, "GET", "/v1/jobs")
    assert status == 200 and int(headers["X-Nomad-Index"]) > 0
    assert [j["ID"] for j in jobs] == ["api", "web"]
    stub = jobs[1]
    assert stub["JobSummary"]["Summary"]["g"] == {
        "Queued": 2,
        "Complete": 0,
        "Failed": 0,
        "Running": 0,
        "Starting": 0,
        "Lost": 0,
        "Unknown": 0,
    }
    assert [j["ID"] for j in call(app, "GET", "/v1/jobs?prefix=a")[2]] == ["api"]
    _, _, evals = call(app, "GET", "/v1/evaluations")
    assert {e["JobID"] for e in evals} == {"api", "web"}
    assert all(e["TriggeredBy"] == "job-register" and e["Type"] == "service" for e in evals)
    _, _, one = call(app, "GET", f"/v1/evaluation/{evals[0]['ID']}")
    assert one["ID"] == evals[0]["ID"] and one["Status"] == "pending"
    assert call(app, "GET", "/v1/allocations")[:2][0] == 200
    assert call(app, "GET", "/v1/job/web/allocations")[2] == []
    _, _, job_evals = call(app, "GET", "/v1/job/web/evaluations")
    assert [e["JobID"] for e in job_evals] == ["web"]
    _, _, summary = call(app, "GET", "/v1/job/web/summary")
    assert summary["JobID"] == "web" and summary["Summary"]["g"]["Queued"] == 2


def test_deregister_stops_and_purge_forgets_any_case(app):
    register(app)
    status, _, out = call(app, "DELETE", "/v1/job/web")
    assert status == 200 and out["EvalID"]
    _, _, job = call(app, "GET", "/v1/job/web")
    assert job["Stop"] is True and job["Status"] == "dead"
    status, _, out = call(app, "DELETE", "/v1/job/web?purge=TRUE")
    assert status == 200 and out["EvalID"]
    status, headers, text = call(app, "GET", "/v1/job/web")
    assert status == 404 and headers["Content-Type"].startswith("text/plain") and text


@pytest.mark.parametrize(
    "method,path,body,status",
    [
        ("GET", "/v1/job/nope", None, 404),
        ("GET", "/v1/allocation/nope", None, 404),
        ("GET", "/v1/evaluation/nope", None, 404),
        ("GET", "/v1/node/nope", None, 404),
        ("GET", "/v1/deployment/nope", None, 404),
        ("GET", "/v1/nowhere", None, 404),
        ("GET", "/v1", None, 404),
        ("GET", "/v1/", None, 404),
        ("DELETE", "/v1/jobs", None, 405),
        ("POST", "/v1/jobs", b"{not json", 400),
        ("POST", "/v1/jobs", {"NoJob": 1}, 400),
        ("POST", "/v1/jobs", {"Job": {"ID": "x", "Vault": {}}}, 400),
        ("POST", "/v1/job/other", {"Job": nomad_job()}, 400),
        ("DELETE", "/v1/job/nope?purge=maybe", None, 404),
        ("GET", "/v1/jobs?index=x", None, 400),
        ("POST", "/v1/jobs/parse", {"JobHCL": ""}, 400),
        ("POST", "/v1/node/nope/eligibility", {"Eligibility": "eligible"}, 404),
        ("GET", "/v1/client/fs/logs/nope?task=t&type=stdout", None, 404),
        ("GET", "/v1/client/fs/logs/nope?task=t&type=nope", None, 400),
    ],
)
def test_errors_are_plain_text_with_nomads_status(app, method, path, body, status):
    got, headers, text = call(app, method, path, body)
    assert got == status, text
    assert headers["Content-Type"].startswith("text/plain")
    assert isinstance(text, str) and text and "<" not in text


def test_the_token_comes_as_x_nomad_token_or_bearer(app):
    status, _, text = call(app, "GET", "/v1/jobs", headers={})
    assert (status, text) == (403, "Permission denied")
    assert call(app, "GET", "/v1/jobs", headers={"X-Nomad-Token": "wrong"})[0] == 403
    assert call(app, "GET", "/v1/jobs", headers={"Authorization": "Bearer s3cret"})[0] == 200
    assert call(app, "GET", "/v1/jobs")[0] == 200
    # orch's own routes keep their 401 and JSON.
    status, _, out = call(app, "GET", "/jobs", headers={})
    assert status == 401 and "error" in out


def test_a_blocking_query_waits_for_a_change(app):
    register(app)
    _, headers, _ = call(app, "GET", "/v1/job/web")
    index = int(headers["X-Nomad-Index"])
    start = time.monotonic()
    _, again, _ = call(app, "GET", f"/v1/job/web?index={index}&wait=200ms")
    assert time.monotonic() - start >= 0.19
    assert int(again["X-Nomad-Index"]) == index

    took, woke, job = woken(
        app, f"/v1/job/web?index={index}&wait=30s", lambda: register(app, nomad_job(count=5))
    )
    assert took < 20
    assert int(woke["X-Nomad-Index"]) > index and job["TaskGroups"][0]["Count"] == 5


def woken(app, path: str, change) -> tuple[float, dict, object]:
    """A blocking GET of ``path`` while ``change()`` runs 0.2 s later on
    another thread: (seconds it took, its headers, its body)."""

    def later():
        time.sleep(0.2)
        change()

    writer = threading.Thread(target=later)
    writer.start()
    start = time.monotonic()
    _, headers, body = call(app, "GET", path)
    writer.join()
    return time.monotonic() - start, headers, body


def test_a_blocking_node_read_wakes_when_the_node_goes_down(app, server):
    """Its index was the node's last beat: a node that goes down beats no
    more, so the query slept its whole wait (40 s) with the news."""
    add_node(app)
    _, headers, _ = call(app, "GET", f"/v1/node/{NODE_ID}")
    index = int(headers["X-Nomad-Index"])

    path = f"/v1/node/{NODE_ID}?index={index}&wait=30s"
    took, woke, node = woken(app, path, lambda: server.store.set_node_health(NODE_ID, False))
    assert took < 20
    assert node["Status"] == "down" and int(woke["X-Nomad-Index"]) > index


def test_a_file_naming_a_datacenter_places_there_and_only_there(app):
    """A node's datacenter is its agent's --datacenter, dc1 when it names
    none (as a Nomad agent's); it was the node's region before, so a file
    naming dc1 stayed pending on `orch dev` (region global)."""
    add_node(app)  # registered without a datacenter: dc1
    status, _, plan = call(app, "POST", "/v1/job/web/plan", {"Job": nomad_job()})
    assert status == 200 and not plan["FailedTGAllocs"], plan
    status, _, plan = call(app, "POST", "/v1/job/web/plan", {"Job": nomad_job(Datacenters=["dc2"])})
    [metric] = plan["FailedTGAllocs"].values()
    assert metric["ConstraintFiltered"] == {"datacenter = dc2": 1} and metric["NodesFiltered"] == 1
    assert metric["DimensionExhausted"] is None
    big = nomad_job(count=1)
    big["TaskGroups"][0]["Tasks"][0]["Resources"]["MemoryMB"] = 10**6
    [metric] = call(app, "POST", "/v1/job/web/plan", {"Job": big})[2]["FailedTGAllocs"].values()
    assert metric["DimensionExhausted"] == {"memory": 1} and metric["NodesExhausted"] == 1
    other = "22222222-2222-4333-8444-555555555555"
    body = {
        "node_id": other,
        "region": "global",
        "resources": {"cpu": 4000, "memory": 4096},
        "endpoint": "http://127.0.0.1:9",
        "attributes": {"hostname": "n2", "driver.exec": True, "datacenter": "dc2"},
    }
    assert call(app, "POST", "/register", body, {"Authorization": "Bearer s3cret"})[0] == 200
    status, _, plan = call(app, "POST", "/v1/job/web/plan", {"Job": nomad_job(Datacenters=["dc2"])})
    assert status == 200 and not plan["FailedTGAllocs"], plan
    _, _, node = call(app, "GET", f"/v1/node/{other}")
    assert node["Datacenter"] == "dc2"
    assert call(app, "GET", f"/v1/node/{NODE_ID}")[2]["Datacenter"] == "dc1"


def test_plan_and_revert(app):
    register(app)
    status, _, plan = call(
        app, "POST", "/v1/job/web/plan", {"Job": nomad_job(count=3), "Diff": True}
    )
    assert status == 200, plan
    assert plan["Diff"]["Type"] == "Edited"
    assert set(plan["Annotations"]["DesiredTGUpdates"]["g"]) >= {"Place", "Stop", "Ignore"}
    register(app, nomad_job(count=3))
    status, _, out = call(app, "POST", "/v1/job/web/revert", {"JobID": "web", "JobVersion": 0})
    assert status == 200 and out["EvalID"]
    _, _, job = call(app, "GET", "/v1/job/web")
    assert job["Version"] == 2 and job["TaskGroups"][0]["Count"] == 2
    body = {"JobID": "web", "JobVersion": 0, "EnforcePriorVersion": 1}
    assert call(app, "POST", "/v1/job/web/revert", body)[0] == 400
    assert call(app, "POST", "/v1/job/web/revert", {"JobID": "web", "JobVersion": 9})[0] == 404


def test_nodes_eligibility_and_drain(app):
    add_node(app)
    status, headers, nodes = call(app, "GET", "/v1/nodes")
    assert status == 200 and "X-Nomad-Index" in headers
    [stub] = nodes
    assert stub["ID"] == NODE_ID and stub["Name"] == "n1" and stub["Address"] == "127.0.0.1"
    assert stub["Status"] == "ready" and stub["SchedulingEligibility"] == "eligible"
    assert stub["Drivers"]["exec"]["Healthy"] is True
    body = {"Eligibility": "ineligible", "NodeID": NODE_ID}
    status, _, out = call(app, "POST", f"/v1/node/{NODE_ID}/eligibility", body)
    assert status == 200 and out["NodeModifyIndex"] > 0
    assert call(app, "GET", f"/v1/node/{NODE_ID}")[2]["SchedulingEligibility"] == "ineligible"
    spec = {"NodeID": NODE_ID, "DrainSpec": {"Deadline": 60 * 10**9, "IgnoreSystemJobs": False}}
    assert call(app, "POST", f"/v1/node/{NODE_ID}/drain", spec)[0] == 200
    node = call(app, "GET", f"/v1/node/{NODE_ID}")[2]
    assert node["Drain"] is True and node["DrainStrategy"]["Deadline"] == 60 * 10**9
    # python-nomad's drain_node(id, enable=False): the old query form.
    assert call(app, "POST", f"/v1/node/{NODE_ID}/drain?enable=False")[0] == 200
    assert call(app, "GET", f"/v1/node/{NODE_ID}")[2]["Drain"] is False
    cancel = {"NodeID": NODE_ID, "DrainSpec": None, "MarkEligible": True}
    assert call(app, "POST", f"/v1/node/{NODE_ID}/drain", cancel)[0] == 200
    assert call(app, "GET", f"/v1/node/{NODE_ID}")[2]["SchedulingEligibility"] == "eligible"
    assert call(app, "POST", f"/v1/node/{NODE_ID}/eligibility", {"Eligibility": "x"})[0] == 400
    assert call(app, "GET", f"/v1/node/{NODE_ID}/allocations")[:3:2] == (200, [])


def test_a_drain_canceled_without_mark_eligible_stays_ineligible(app):
    """`nomad node drain -disable -keep-ineligible` (MarkEligible false, the
    default): the node was made eligible whatever the flag said."""
    add_node(app)
    spec = {"NodeID": NODE_ID, "DrainSpec": {"Deadline": 60 * 10**9}}
    for mark, expected in ((False, "ineligible"), (None, "ineligible"), (True, "eligible")):
        assert call(app, "POST", f"/v1/node/{NODE_ID}/drain", spec)[0] == 200
        cancel = {"NodeID": NODE_ID, "DrainSpec": None}
        if mark is not None:
            cancel["MarkEligible"] = mark
        assert call(app, "POST", f"/v1/node/{NODE_ID}/drain", cancel)[0] == 200
        node = call(app, "GET", f"/v1/node/{NODE_ID}")[2]
        assert node["Drain"] is False and node["SchedulingEligibility"] == expected, mark


def test_a_drain_deadline_past_what_a_float_holds_is_the_longest(app):
    """Its seconds were computed before the cap: an OverflowError (a 500)."""
    add_node(app)
    for deadline in (10**400, 10**400 + 1):
        spec = {"NodeID": NODE_ID, "DrainSpec": {"Deadline": deadline}}
        assert call(app, "POST", f"/v1/node/{NODE_ID}/drain", spec)[0] == 200
        longest = call(app, "GET", f"/v1/node/{NODE_ID}")[2]["DrainStrategy"]["Deadline"]
        assert longest == 30 * 24 * 3600 * 10**9


def test_a_deregister_whose_job_is_purged_meanwhile_still_answers(app, server, monkeypatch):
    """A purge by another request between the stop and its answer left no
    deregister evaluation to answer with: max() of nothing, a 500."""
    register(app)
    stop = server.stop_job

    def stop_then_purged(job_id):
        ev = stop(job_id)
        server.delete_job(job_id)  # the other request's purge, in between
        return ev

    monkeypatch.setattr(server, "stop_job", stop_then_purged)
    status, _, out = call(app, "DELETE", "/v1/job/web")
    assert status == 200, out
    assert out["EvalID"] and out["JobModifyIndex"] > 0
    assert call(app, "GET", "/v1/job/web")[0] == 404


def test_dispatch_and_periodic_force(app):
    params = {"ParameterizedJob": {"Payload": "optional", "MetaRequired": ["user"]}}
    register(app, {**nomad_job("work", count=1), "Type": "batch", **params})
    body = {"Meta": {"user": "ann"}, "Payload": "aGk=", "IdPrefixTemplate": None}
    status, _, out = call(app, "POST", "/v1/job/work/dispatch", body)
    assert status == 200, out
    assert out["DispatchedJobID"].startswith("work-dispatch-") and out["EvalID"]
    child = call(app, "GET", f"/v1/job/{out['DispatchedJobID']}")[2]
    assert child["ParentID"] == "work" and child["Meta"] == {"user": "ann"}
    assert call(app, "POST", "/v1/job/work/dispatch", {"Meta": {}})[0] == 400
    summary = call(app, "GET", "/v1/job/work/summary")[2]
    assert summary["Children"] == {"Pending": 1, "Running": 0, "Dead": 0}
    periodic = {"Periodic": {"Enabled": True, "Spec": "0 3 * * *", "TimeZone": "UTC"}}
    register(app, {**nomad_job("nightly", count=1), "Type": "batch", **periodic})
    status, _, out = call(app, "POST", "/v1/job/nightly/periodic/force")
    assert status == 200 and out["EvalID"] and out["EvalCreateIndex"] > 0
    assert call(app, "POST", "/v1/job/web/periodic/force")[0] == 404


def test_a_dispatch_idempotency_token_is_honoured(app):
    """python-nomad's dispatch_job(..., idempotency_token=) (a query) and the
    body's IdempotencyToken were ignored: each retry launched a new child."""
    params = {"ParameterizedJob": {"Payload": "optional", "MetaRequired": ["user"]}}
    register(app, {**nomad_job("work", count=1), "Type": "batch", **params})
    body = {"Meta": {"user": "ann"}}
    path = "/v1/job/work/dispatch?idempotency_token=retry-1"
    first = call(app, "POST", path, body)[2]
    again = call(app, "POST", path, body)[2]
    assert first["EvalID"] and again["EvalID"] == ""
    assert again["DispatchedJobID"] == first["DispatchedJobID"]
    child = call(app, "GET", f"/v1/job/{first['DispatchedJobID']}")[2]
    assert child["Dispatched"] is True and child["DispatchIdempotencyToken"] == "retry-1"
    assert call(app, "GET", "/v1/job/work")[2]["Dispatched"] is False
    by_body = call(app, "POST", "/v1/job/work/dispatch", {**body, "IdempotencyToken": "retry-1"})
    assert by_body[2]["DispatchedJobID"] == first["DispatchedJobID"]
    other = call(app, "POST", "/v1/job/work/dispatch", {**body, "IdempotencyToken": "x"})[2]
    assert other["DispatchedJobID"] != first["DispatchedJobID"] and other["EvalID"]
    summary = call(app, "GET", "/v1/job/work/summary")[2]
    assert summary["Children"]["Pending"] == 2


def test_a_parents_summary_index_moves_with_its_children(app, server):
    """Its Children counts changed under an index that did not: a blocking
    read of the summary slept its whole wait."""
    params = {"ParameterizedJob": {"Payload": "optional"}}
    register(app, {**nomad_job("work", count=1), "Type": "batch", **params})
    _, headers, before = call(app, "GET", "/v1/job/work/summary")
    time.sleep(0.01)  # indexes are times
    out = call(app, "POST", "/v1/job/work/dispatch", {})[2]
    _, headers, after = call(app, "GET", "/v1/job/work/summary")
    assert after["Children"]["Pending"] == 1
    assert after["ModifyIndex"] > before["ModifyIndex"]
    assert int(headers["X-Nomad-Index"]) == after["ModifyIndex"]
    time.sleep(0.01)
    server.stop_job(out["DispatchedJobID"])
    later = call(app, "GET", "/v1/job/work/summary")[2]
    assert later["Children"]["Dead"] == 1 and later["ModifyIndex"] > after["ModifyIndex"]


def test_deployments_status_agent_and_services(app):
    register(app)
    assert call(app, "GET", "/v1/deployments")[:3:2] == (200, [])
    assert call(app, "GET", "/v1/job/web/deployments")[2] == []
    assert call(app, "GET", "/v1/job/web/deployment")[2] is None
    assert call(app, "POST", "/v1/deployment/fail/nope")[0] == 404
    assert call(app, "POST", "/v1/deployment/promote/nope", {"All": True})[0] == 404
    status, _, leader = call(app, "GET", "/v1/status/leader")
    assert status == 200 and leader == "127.0.0.1:4646"
    assert call(app, "GET", "/v1/status/peers")[2] == ["127.0.0.1:4646"]
    _, _, me = call(app, "GET", "/v1/agent/self")
    assert me["member"]["Port"] == 4646 and me["config"]["ACL"]["Enabled"] is True
    assert call(app, "GET", "/v1/services")[2] == []
    assert call(app, "GET", "/v1/service/nope")[2] == []


def test_parse_returns_the_bare_job(app):
    hcl = (
        'job "hello" {\n  group "g" {\n    task "t" {\n      driver = "exec"\n'
        '      config {\n        command = "/bin/true"\n      }\n    }\n  }\n}\n'
    )
    status, _, job = call(app, "POST", "/v1/jobs/parse", {"JobHCL": hcl, "Canonicalize": True})
    assert status == 200, job
    assert job["ID"] == "hello" and job["Type"] == "service"
    assert job["TaskGroups"][0]["Tasks"][0]["Config"]["command"] == "/bin/true"


def test_parse_refuses_what_orch_lacks_with_its_line(app):
    hcl = 'job "x" {\n  vault {\n    policies = ["a"]\n  }\n}\n'
    status, headers, text = call(app, "POST", "/v1/jobs/parse", {"JobHCL": hcl})
    assert status == 400 and headers["Content-Type"].startswith("text/plain")
    assert "vault" in text and "line 2" in text


RICH = {
    "ID": "rich",
    "Type": "service",
    "Datacenters": ["dc1"],
    "Constraints": [{"LTarget": "${attr.kernel.name}", "RTarget": "linux", "Operand": "="}],
    "Meta": {"team": "blue"},
    "Update": {"MaxParallel": 2, "MinHealthyTime": 5 * 10**9, "HealthCheck": "task_states"},
    "TaskGroups": [
        {
            "Name": "web",
            "Count": 2,
            "Meta": {"tier": "gold"},
            "Networks": [
                {
                    "ReservedPorts": [{"Label": "admin", "Value": 9901}],
                    "DynamicPorts": [{"Label": "http", "To": 8080}],
                }
            ],
            "Services": [
                {
                    "Name": "web",
                    "PortLabel": "http",
                    "Tags": ["a"],
                    "Checks": [
                        {
                            "Name": "alive",
                            "Type": "http",
                            "Path": "/health",
                            "Interval": 10 * 10**9,
                            "Timeout": 2 * 10**9,
                        },
                        {
                            "Name": "script",
                            "Type": "script",
                            "Command": "/bin/check",
                            "Args": ["-q"],
                            "Interval": 10 * 10**9,
                            "Timeout": 2 * 10**9,
                            "CheckRestart": {"Limit": 3, "Grace": 5 * 10**9},
                        },
                    ],
                }
            ],
            "RestartPolicy": {
                "Attempts": 2,
                "Interval": 60 * 10**9,
                "Delay": 10**9,
                "Mode": "fail",
            },
            "Tasks": [
                {
                    "Name": "srv",
                    "Driver": "docker",
                    "Config": {"image": "nginx:1", "ports": ["http"]},
                    "Resources": {"CPU": 200, "MemoryMB": 128},
                    "KillSignal": "SIGINT",
                }
            ],
        }
    ],
}


def test_every_field_read_back_translates_to_the_same_orch_job(app, server):
    register(app, RICH)
    before = server.store.require_job("rich").spec()
    _, _, job = call(app, "GET", "/v1/job/rich")
    assert job["TaskGroups"][0]["Networks"][0]["DynamicPorts"] == [
        {"Label": "http", "Value": 0, "To": 8080}
    ]
    assert job["TaskGroups"][0]["Services"][0]["Checks"][0]["Interval"] == 10 * 10**9
    assert job["Update"]["MinHealthyTime"] == 5 * 10**9
    assert job["TaskGroups"][0]["RestartPolicy"]["Delay"] == 10**9
    script = job["TaskGroups"][0]["Services"][0]["Checks"][1]
    assert (script["Command"], script["Args"]) == ("/bin/check", ["-q"])
    status, _, out = call(app, "PUT", "/v1/job/rich", {"Job": job})
    assert status == 200, out
    assert server.store.require_job("rich").spec() == before
    assert server.store.require_job("rich").version == 0


def test_query_booleans_are_checked(app):
    register(app)
    status, headers, text = call(app, "DELETE", "/v1/job/web?purge=maybe")
    assert status == 400 and "purge" in text
    assert call(app, "GET", "/v1/job/web")[2]["Stop"] is False


WRONG_TYPES = [None, 1, -1, 1.5, "x", "", [], {}, [1], [{}], {"a": 1}, True, 10**30]


def mutations(job: dict, rng: random.Random, count: int):
    """``count`` copies of ``job``, each with one value anywhere replaced by a wrong type."""

    def paths(value, at=()):
        yield at
        items = (
            value.items()
            if isinstance(value, dict)
            else enumerate(value)
            if isinstance(value, list)
            else ()
        )
        for key, child in items:
            yield from paths(child, (*at, key))

    every = list(paths(job))[1:]
    for _ in range(count):
        out = copy.deepcopy(job)
        where = rng.choice(every)
        parent = out
        for key in where[:-1]:
            parent = parent[key]
        parent[where[-1]] = rng.choice(WRONG_TYPES)
        yield out


def test_hostile_job_bodies_are_4xx_never_5xx(app):
    rng = random.Random(15)
    for job in mutations(RICH, rng, 300):
        for path in ("/v1/jobs", "/v1/job/rich/plan"):
            status, headers, text = call(app, "POST", path, {"Job": job})
            assert status < 500, (path, job, text)
            if status >= 400:
                assert headers["Content-Type"].startswith("text/plain"), text


def test_blocking_queries_past_the_cap_are_answered_at_once(app, server):
    register(app)
    index = int(call(app, "GET", "/v1/job/web")[1]["X-Nomad-Index"])
    path = f"/v1/job/web?index={index}&wait=60s"
    waiting = [threading.Thread(target=call, args=(app, "GET", path)) for _ in range(MAX_BLOCKING)]
    for t in waiting:
        t.start()
    # The last asks only once the others hold every slot. Asked sooner, it could
    # take a slot itself, and one of the others, answered at once, left the slot
    # to it for good: on a loaded host it then waited its second every time.
    feed = server.store.changes
    assert wait_for(lambda: feed.blocked == MAX_BLOCKING, timeout=30)
    start = time.monotonic()
    status, headers, _ = call(app, "GET", f"/v1/job/web?index={index}&wait=30s")
    took = time.monotonic() - start
    assert status == 200 and int(headers["X-Nomad-Index"]) == index
    assert took < 10, "past the cap, yet it waited"  # with a slot, it would wait 30 s
    register(app, nomad_job(count=4))  # a change wakes the others
    for t in waiting:
        t.join(timeout=20)
        assert not t.is_alive()


def test_an_orch_shell_command_reads_back_as_sh_c(app):
    body = {
        "job_id": "native",
        "task_groups": [
            {
                "name": "g",
                "tasks": [{"name": "t", "config": {"command": "echo $HOME", "args": ["a b"]}}],
            }
        ],
    }
    status, _, out = call(app, "POST", "/jobs", body, {"Authorization": "Bearer s3cret"})
    assert status == 200, out
    [task] = call(app, "GET", "/v1/job/native")[2]["TaskGroups"][0]["Tasks"]
    assert task["Config"] == {"command": "/bin/sh", "args": ["-c", "echo $HOME 'a b'"]}


POST_ROUTES = [
    "/v1/jobs",
    "/v1/job/web",
    "/v1/job/nosuch",
    "/v1/jobs/parse",
    "/v1/job/web/plan",
    "/v1/job/web/revert",
    "/v1/job/nosuch/revert",
    "/v1/job/web/dispatch",
    "/v1/job/nosuch/dispatch",
    "/v1/job/web/periodic/force",
    f"/v1/node/{NODE_ID}/drain",
    "/v1/node/nosuch/drain",
    f"/v1/node/{NODE_ID}/eligibility",
    "/v1/node/nosuch/eligibility",
    "/v1/deployment/promote/nosuch",
    "/v1/deployment/fail/nosuch",
]
HOSTILE_BODIES = [
    b"{",
    b"\xff\xfe",
    b"null",
    b"[]",
    b'"x"',
    b"[" * 5000 + b"]" * 5000,
    b'{"Job": NaN}',
    b'{"a": 1e999}',
]
# The first MALFORMED bodies are no JSON object at all: a 4xx on every route.
MALFORMED = len(HOSTILE_BODIES)
HOSTILE_BODIES += [
    json.dumps({"Job": {"ID": 10**40}}).encode(),
    json.dumps({"Job": {"ID": "web", "TaskGroups": [{"Count": 10**30}]}}).encode(),
    json.dumps({"Job": {"ID": "web", "TaskGroups": [{"Constraints": [{"Operand": []}]}]}}).encode(),
    json.dumps({"JobHCL": 'job "a" {\n  group "g" {\n    count = 1e400\n  }\n}\n'}).encode(),
    json.dumps({"JobHCL": ["job"]}).encode(),
    json.dumps({"JobVersion": 10**30, "EnforcePriorVersion": "1"}).encode(),
    json.dumps({"Meta": [1], "Payload": 5}).encode(),
    json.dumps({"DrainSpec": {"Deadline": 10**30}, "MarkEligible": "yes"}).encode(),
    json.dumps({"Eligibility": ["eligible"]}).encode(),
    json.dumps({"EnforceIndex": True, "JobModifyIndex": [1], "Job": {"ID": "web"}}).encode(),
]
GET_ROUTES = [
    "/v1/jobs",
    "/v1/job/web",
    "/v1/job/web/allocations",
    "/v1/job/web/evaluations",
    "/v1/job/web/versions",
    "/v1/job/web/summary",
    "/v1/job/web/deployment",
    "/v1/job/nosuch/versions",
    "/v1/allocations",
    "/v1/allocation/nosuch",
    "/v1/evaluations",
    "/v1/evaluation/nosuch",
    "/v1/nodes",
    f"/v1/node/{NODE_ID}",
    "/v1/node/nosuch",
    "/v1/client/fs/logs/nosuch",
    "/v1/status/leader",
    "/v1/agent/self",
    "/v1/services",
    "/v1/service/nosuch",
]
HOSTILE_QUERIES = [
    "?index=99999999999999999999999",
    "?index=-1",
    "?index=%EF%BC%91",  # a fullwidth digit: not ASCII
    "?index=1&wait=1e400s",
    "?index=1&wait=-5s",
    "?prefix=%00",
    "?all=maybe&purge=2&plain=yes&follow=",
    "?task=t&type=stdout&offset=99999999999999999999",
    "?task=t&type=bogus&origin=middle",
]


def _is_nomad_error(status: int, headers: dict) -> bool:
    return 400 <= status < 500 and headers["Content-Type"].startswith("text/plain")


def test_every_v1_post_route_answers_hostile_bodies_with_nomads_4xx(app):
    add_node(app)
    register(app)
    for path in POST_ROUTES:
        for i, raw in enumerate(HOSTILE_BODIES):
            status, headers, text = call(app, "POST", path, raw)
            if i < MALFORMED:
                assert _is_nomad_error(status, headers), (path, raw[:40], status, text)
            else:  # JSON objects: a route may ignore fields it does not read (as Nomad)
                assert status < 500, (path, raw[:40], text)
                assert status < 400 or _is_nomad_error(status, headers), (path, raw[:40])
    assert call(app, "GET", "/v1/job/web")[2]["TaskGroups"][0]["Count"] == 2  # unchanged


def test_every_v1_get_route_answers_hostile_queries_without_a_5xx(app):
    add_node(app)
    register(app)
    for path in GET_ROUTES:
        for query in HOSTILE_QUERIES:
            status, headers, text = call(app, "GET", path + query)
            assert status < 500, (path, query, text)
            if status >= 400:
                assert _is_nomad_error(status, headers), (path, query, text)


@pytest.mark.parametrize("word, stops", [("TRUE", True), ("t", True), ("F", False), ("1", True)])
def test_query_booleans_are_gos_words_in_any_case(app, word, stops):
    register(app)
    status, _, _ = call(app, "DELETE", f"/v1/job/web?purge={word}")
    assert status == 200
    status, _, out = call(app, "GET", "/v1/job/web")
    assert (status == 404) if stops else (out["Stop"] is True)
    # The same words everywhere: a log's flags are read before the alloc is looked up.
    status, _, text = call(app, "GET", f"/v1/client/fs/logs/nosuch?task=t&type=stdout&plain={word}")
    assert status == 404 and "alloc not found" in text
