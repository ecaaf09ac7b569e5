"""python-nomad drives a real orch cluster through /v1, every call as its documentation shows.

One server (with a token) and two agents on loopback, real orch.pyz
processes, for the whole module; each test uses jobs of its own.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import nomad
import pytest
import requests
from nomad.api.exceptions import (
    BadRequestNomadException,
    URLNotAuthorizedNomadException,
    URLNotFoundNomadException,
)

from harness import Cluster, ensure_pyz, wait_until

pytestmark = pytest.mark.integration

TOKEN = "nomad-e2e-token"
NS = 1_000_000_000
WAIT = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ensure_pyz()
    c = Cluster(tmp_path_factory.mktemp("nomad-api"), token=TOKEN)
    c.start_server()
    # Agents in no named datacenter: dc1, Nomad's default, which the jobs name.
    c.node_a = c.start_agent("a")
    c.node_b = c.start_agent("b")
    yield c
    c.stop_all()


@pytest.fixture(scope="module")
def n(cluster):
    return nomad.Nomad(host="127.0.0.1", port=cluster.port, token=TOKEN, timeout=30)


def sh_job(cluster: Cluster, job_id: str, script: str, *, count: int = 1, **extra) -> dict:
    """A Nomad JSON job whose task runs ``script`` (its PID recorded for teardown)."""
    return {
        "ID": job_id,
        "Name": job_id,
        "Type": extra.pop("Type", "service"),
        "Datacenters": ["dc1"],
        "TaskGroups": [
            {
                "Name": "g",
                "Count": count,
                "Tasks": [
                    {
                        "Name": "t",
                        "Driver": "raw_exec",
                        "Config": {
                            "command": "/bin/sh",
                            "args": ["-c", cluster.pid_command(job_id, script)],
                        },
                        "Env": {"GREETING": "hello"},
                        "Resources": {"CPU": 50, "MemoryMB": 32},
                        "KillTimeout": 2 * NS,
                    }
                ],
                **extra.pop("group", {}),
            }
        ],
        **extra,
    }


def wait_status(n, job_id: str, status: str, timeout: float = WAIT) -> dict:
    return wait_until(
        lambda: (job := n.job.get_job(job_id))["Status"] == status and job,
        timeout,
        what=f"job {job_id} {status}",
    )


def frames(text: str) -> list[dict]:
    """The JSON frames of a framed log stream, one after another."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        frame, i = decoder.raw_decode(text, i)
        out.append(frame)
    return out


def test_python_nomad_registers_runs_reads_logs_and_purges(cluster, n):
    job = sh_job(cluster, "hello", 'echo "$GREETING from $ORCH_JOB_ID"; exec sleep 300')
    out = n.job.register_job("hello", {"Job": job})
    assert out["EvalID"] and out["JobModifyIndex"] > 0
    assert n.job.get_job("hello")["ID"] == "hello"
    assert "hello" in n.jobs and "hello" in n.job
    assert any(j["ID"] == "hello" for j in n.jobs.get_jobs())
    assert {node["ID"] for node in n.nodes.get_nodes()} >= {cluster.node_a, cluster.node_b}
    assert n.evaluation.get_evaluation(out["EvalID"])["JobID"] == "hello"
    assert any(e["JobID"] == "hello" for e in n.evaluations.get_evaluations())
    running = wait_status(n, "hello", "running")
    assert running["TaskGroups"][0]["Tasks"][0]["Env"] == {"GREETING": "hello"}
    [alloc] = n.job.get_allocations("hello")
    assert alloc["ClientStatus"] == "running" and alloc["TaskStates"]["t"]["State"] == "running"
    assert any(a["ID"] == alloc["ID"] for a in n.allocations.get_allocations())
    assert n.allocation.get_allocation(alloc["ID"])["Job"]["ID"] == "hello"
    assert n.job.get_evaluations("hello")[0]["JobID"] == "hello"

    plain = wait_until(
        lambda: (
            "from hello"
            in (t := n.client.stream_logs.stream(alloc["ID"], "t", "stdout", plain=True))
            and t
        ),
        WAIT,
        what="the task's log",
    )
    assert plain == "hello from hello\n"
    framed = frames(n.client.stream_logs.stream(alloc["ID"], "t", "stdout"))
    assert b"".join(base64.b64decode(f["Data"]) for f in framed) == b"hello from hello\n"
    assert framed[-1]["Offset"] == len(plain) and framed[0]["File"] == "alloc/logs/t.stdout.0"
    tail = n.client.stream_logs.stream(
        alloc["ID"], "t", "stdout", offset=6, origin="end", plain=True
    )
    assert tail == "hello\n"

    # follow on a live task: frames as the log grows, heartbeats ({}) between.
    with requests.get(
        f"{cluster.url}/v1/client/fs/logs/{alloc['ID']}",
        params={"task": "t", "type": "stdout", "follow": "True"},
        headers={"X-Nomad-Token": TOKEN},
        stream=True,
        timeout=30,
    ) as live:
        assert live.status_code == 200
        seen = b""
        for chunk in live.iter_content(None):
            seen += chunk
            if b"Data" in seen and seen.endswith(b"}"):
                break
    assert frames(seen.decode())[0] == {}
    assert base64.b64decode(frames(seen.decode())[1]["Data"]) == b"hello from hello\n"

    stop = n.job.deregister_job("hello")
    assert stop["EvalID"]
    assert wait_status(n, "hello", "dead")["Stop"] is True
    n.job.deregister_job("hello", purge=True)
    assert "hello" not in n.job and "hello" not in n.jobs


HCL = """
job "from-hcl" {
  datacenters = ["dc1"]
  type        = "batch"

  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo parsed from HCL on $${NOMAD_DC:-?}; echo err >&2"]
      }
      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
"""


def test_python_nomad_parses_hcl_and_runs_the_job(cluster, n, tmp_path):
    path = tmp_path / "from-hcl.nomad.hcl"
    path.write_text(HCL)
    job = n.jobs.parse(path.read_text())
    assert job["ID"] == "from-hcl" and job["Type"] == "batch"
    assert job["TaskGroups"][0]["Tasks"][0]["Driver"] == "raw_exec"
    assert n.jobs.parse(path.read_text(), canonicalize=True)["Namespace"] == "default"
    out = n.jobs.register_job({"Job": job})
    assert out["EvalID"]
    wait_status(n, "from-hcl", "dead")
    [alloc] = n.job.get_allocations("from-hcl")
    assert alloc["ClientStatus"] == "complete"
    stream = n.client.stream_logs.stream
    assert stream(alloc["ID"], "t", "stdout", plain=True) == "parsed from HCL on dc1\n"
    assert stream(alloc["ID"], "t", "stderr", plain=True) == "err\n"
    # follow on a finished task: the stream ends once its log is drained.
    resp = requests.get(
        f"{cluster.url}/v1/client/fs/logs/{alloc['ID']}",
        params={"task": "t", "type": "stderr", "follow": "true"},
        headers={"X-Nomad-Token": TOKEN},
        timeout=30,
    )
    data = [base64.b64decode(f["Data"]) for f in frames(resp.text) if f]
    assert data == [b"err\n"]
    with pytest.raises(BadRequestNomadException) as refused:
        n.jobs.parse('job "x" {\n  group "g" {\n    volume "v" {}\n  }\n}\n')
    assert "volume" in refused.value.nomad_resp.text
    n.job.deregister_job("from-hcl", purge=True)


def test_python_nomad_raises_the_exceptions_nomad_clients_expect(cluster, n):
    with pytest.raises(URLNotFoundNomadException):
        n.job.get_job("no-such-job")
    with pytest.raises(URLNotFoundNomadException):
        n.allocation.get_allocation("no-such-alloc")
    with pytest.raises(BadRequestNomadException) as bad:
        n.job.register_job("other-id", {"Job": sh_job(cluster, "mismatch", "true")})
    assert "does not match" in bad.value.nomad_resp.text
    with pytest.raises(BadRequestNomadException) as refused:
        n.job.register_job(
            "v", {"Job": {**sh_job(cluster, "v", "true"), "Vault": {"Policies": ["x"]}}}
        )
    assert "Vault" in refused.value.nomad_resp.text
    stranger = nomad.Nomad(host="127.0.0.1", port=cluster.port, token="wrong", timeout=30)
    with pytest.raises(URLNotAuthorizedNomadException):
        stranger.jobs.get_jobs()
    resp = requests.get(f"{cluster.url}/v1/jobs", timeout=30)
    assert resp.status_code == 403 and resp.text == "Permission denied"
    assert n.status.leader.get_leader() == f"127.0.0.1:{cluster.port}"
    assert n.agent.get_agent()["config"]["ACL"]["Enabled"] is True


def test_python_nomad_drains_a_node_and_its_alloc_moves(cluster, n):
    job = sh_job(cluster, "mover", "exec sleep 300")
    n.job.register_job("mover", {"Job": job})
    wait_status(n, "mover", "running")
    [alloc] = n.job.get_allocations("mover")
    source = alloc["NodeID"]
    other = cluster.node_b if source == cluster.node_a else cluster.node_a
    n.node.drain_node_with_spec(source, {"Deadline": 30 * NS, "IgnoreSystemJobs": False})
    assert n.node.get_node(source)["SchedulingEligibility"] == "ineligible"

    def moved():
        allocs = n.job.get_allocations("mover")
        return any(a["NodeID"] == other and a["ClientStatus"] == "running" for a in allocs) and all(
            a["ClientStatus"] != "running" for a in allocs if a["NodeID"] == source
        )

    wait_until(moved, WAIT, what="the allocation to move off the drained node")
    n.node.drain_node_with_spec(source, None, mark_eligible=True)
    node = n.node.get_node(source)
    assert node["Drain"] is False and node["SchedulingEligibility"] == "eligible"
    n.node.eligible_node(source, ineligible=True)
    assert n.node.get_node(source)["SchedulingEligibility"] == "ineligible"
    n.node.eligible_node(source, eligible=True)
    assert n.node.get_node(source)["SchedulingEligibility"] == "eligible"
    n.job.deregister_job("mover", purge=True)


def test_python_nomad_dispatches_and_forces_a_periodic_launch(cluster, n):
    params = {"Payload": "optional", "MetaRequired": ["user"]}
    work = sh_job(
        cluster, "work", 'echo "user=$ORCH_META_user"', Type="batch", ParameterizedJob=params
    )
    n.job.register_job("work", {"Job": work})
    out = n.job.dispatch_job("work", meta={"user": "ann"}, payload=base64.b64encode(b"x").decode())
    child = out["DispatchedJobID"]
    assert child.startswith("work-dispatch-") and out["EvalID"]
    wait_status(n, child, "dead")
    [alloc] = n.job.get_allocations(child)
    assert alloc["ClientStatus"] == "complete"
    assert n.client.stream_logs.stream(alloc["ID"], "t", "stdout", plain=True) == "user=ann\n"
    with pytest.raises(BadRequestNomadException):
        n.job.dispatch_job("work", meta={})

    periodic = {"Enabled": True, "Spec": "0 3 * * *", "TimeZone": "UTC", "ProhibitOverlap": False}
    nightly = sh_job(cluster, "nightly", "echo nightly", Type="batch", Periodic=periodic)
    n.job.register_job("nightly", {"Job": nightly})
    forced = n.job.periodic_job("nightly")
    assert forced["EvalID"]
    launched = n.evaluation.get_evaluation(forced["EvalID"])["JobID"]
    assert launched.startswith("nightly-periodic-")
    wait_status(n, launched, "dead")
    assert n.job.get_summary("nightly")["Children"]["Dead"] >= 1
    for job_id in ("work", "nightly"):
        n.job.deregister_job(job_id, purge=True)


def test_python_nomad_promotes_and_fails_deployments(cluster, n):
    update = {
        "MaxParallel": 1,
        "Canary": 1,
        "HealthCheck": "task_states",
        "MinHealthyTime": 1 * NS,
        "HealthyDeadline": 30 * NS,
        "ProgressDeadline": 60 * NS,
        "AutoRevert": False,
    }

    def version(v: int) -> dict:
        return sh_job(cluster, "canaried", f"echo v{v}; exec sleep 300", count=2, Update=update)

    n.job.register_job("canaried", {"Job": version(0)})
    wait_until(lambda: len(running_allocs(n, "canaried")) == 2, WAIT, what="two copies of v0")
    n.job.register_job("canaried", {"Job": version(1)})
    first = wait_until(lambda: n.job.get_deployment("canaried"), WAIT, what="a deployment")
    assert first["JobVersion"] == 1 and first["Status"] == "running"
    wait_until(
        lambda: n.deployment.get_deployment(first["ID"])["TaskGroups"]["g"]["HealthyAllocs"] >= 1,
        WAIT,
        what="a healthy canary",
    )
    # The canary by its id, as Nomad lists it (it was [None]: python-nomad's
    # get_allocation(None) raised a TypeError), and in its allocation.
    [canary_id] = n.deployment.get_deployment(first["ID"])["TaskGroups"]["g"]["PlacedCanaries"]
    canary = n.allocation.get_allocation(canary_id)
    assert canary["JobVersion"] == 1 and canary["DeploymentID"] == first["ID"]
    assert canary["DeploymentStatus"]["Canary"] is True
    assert canary["DeploymentStatus"]["Healthy"] is True
    assert canary["AllocatedResources"]["Tasks"]["t"] == {
        "Cpu": {"CpuShares": 50},
        "Memory": {"MemoryMB": 32},
    }
    stubs = {a["ID"]: a for a in n.job.get_allocations("canaried")}
    assert stubs[canary_id]["DeploymentStatus"] == canary["DeploymentStatus"]
    olds = [a for a in stubs.values() if a["JobVersion"] == 0]
    assert olds and all("DeploymentID" not in a for a in olds)  # placed by no deployment
    assert [a["ID"] for a in n.deployment.get_deployment_allocations(first["ID"])] == [canary_id]
    placed_by = n.evaluation.get_allocations(canary["EvalID"])
    assert canary_id in [a["ID"] for a in placed_by]
    assert all(a["EvalID"] == canary["EvalID"] for a in placed_by)
    n.deployment.promote_deployment_all(first["ID"])
    wait_until(
        lambda: n.deployment.get_deployment(first["ID"])["Status"] == "successful",
        WAIT,
        what="the promoted deployment to succeed",
    )
    assert any(d["ID"] == first["ID"] for d in n.deployments.get_deployments())

    n.job.register_job("canaried", {"Job": version(2)})
    second = wait_until(
        lambda: (d := n.job.get_deployment("canaried"))["ID"] != first["ID"] and d,
        WAIT,
        what="a second deployment",
    )
    out = n.deployment.fail_deployment(second["ID"])
    assert out["DeploymentModifyIndex"] > 0
    assert n.deployment.get_deployment(second["ID"])["Status"] == "failed"
    assert {d["ID"] for d in n.job.get_deployments("canaried")} == {first["ID"], second["ID"]}
    n.job.deregister_job("canaried", purge=True)


def running_allocs(n, job_id: str) -> list[dict]:
    return [
        a
        for a in n.job.get_allocations(job_id)
        if a["ClientStatus"] == "running" and a["DesiredStatus"] == "run"
    ]


def test_services_of_a_running_job_are_listed_as_nomad_lists_them(cluster, n):
    group = {
        "Networks": [{"DynamicPorts": [{"Label": "http"}]}],
        "Services": [{"Name": "pinger", "PortLabel": "http", "Tags": ["v1"]}],
    }
    n.job.register_job("pinger", {"Job": sh_job(cluster, "pinger", "exec sleep 300", group=group)})
    wait_status(n, "pinger", "running")
    [alloc] = n.job.get_allocations("pinger")
    headers = {"X-Nomad-Token": TOKEN}

    def listed():
        resp = requests.get(f"{cluster.url}/v1/services", headers=headers, timeout=30)
        return resp.json() if resp.ok and resp.json() else None

    [namespace] = wait_until(listed, WAIT, what="the service in /v1/services")
    assert {"ServiceName": "pinger", "Tags": ["v1"]} in namespace["Services"]
    resp = requests.get(f"{cluster.url}/v1/service/pinger", headers=headers, timeout=30)
    [instance] = resp.json()
    assert int(resp.headers["X-Nomad-Index"]) > 0
    assert instance["AllocID"] == alloc["ID"] and instance["JobID"] == "pinger"
    assert instance["Address"] == "127.0.0.1" and 20000 <= instance["Port"] <= 32000
    n.job.deregister_job("pinger", purge=True)


def test_the_readmes_job_file_runs_through_python_nomad(cluster, n):
    # README "Coming from Nomad" says its side-by-side file runs as it is.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("One job file side by side", 1)[1]
    job = n.jobs.parse(section.split("```hcl\n", 1)[1].split("```", 1)[0])
    try:
        n.job.register_job(job["ID"], {"Job": job})
        wait_until(lambda: len(running_allocs(n, "web")) == 2, WAIT, what="2 web allocs")

        def healthy():
            resp = cluster.get("/services/web?healthy=true")
            return resp.ok and resp.json()["count"] == 2

        wait_until(healthy, WAIT, what="2 healthy instances of the web service")
        [instance, _] = requests.get(
            f"{cluster.url}/v1/service/web", headers={"X-Nomad-Token": TOKEN}, timeout=30
        ).json()
        page = requests.get(f"http://{instance['Address']}:{instance['Port']}/", timeout=30)
        assert page.ok and "Directory listing" in page.text  # python3 -m http.server
    finally:
        n.job.deregister_job("web", purge=False)
        # Purged once its tasks are gone, so that none outlives the test.
        wait_until(
            lambda: all(a["ClientStatus"] != "running" for a in n.job.get_allocations("web")),
            WAIT,
            what="web's tasks stopped",
        )
        n.job.deregister_job("web", purge=True)


def test_a_job_as_nomad_job_inspect_prints_it_registers_and_runs(cluster, n):
    # tests/nomad_jobs/inspected/: every field as Nomad prints it ("KillSignal": "", ...).
    inspected = Path(__file__).resolve().parents[1] / "nomad_jobs" / "inspected"
    job = json.loads((inspected / "web.inspect.json").read_text())
    try:
        assert n.job.register_job("web", job)["EvalID"]
        wait_until(lambda: len(running_allocs(n, "web")) == 1, WAIT, what="the web alloc")
        again = n.job.register_job("web", {"Job": n.job.get_job("web")})
        assert again["JobModifyIndex"] == n.job.get_job("web")["JobModifyIndex"]  # unchanged
    finally:
        n.job.deregister_job("web", purge=False)
        wait_until(
            lambda: all(a["ClientStatus"] != "running" for a in n.job.get_allocations("web")),
            WAIT,
            what="web's tasks stopped",
        )
        n.job.deregister_job("web", purge=True)
