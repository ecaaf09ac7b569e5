"""Nomad job files (tests/nomad_jobs/) through convert -> plan -> run on a real cluster.

Each file says what it should reach in its header (``# expect: running``,
``# expect-service: NAME``, ``# expect-allocs: nodes``, ``# expect-restarts:
N``, ``# requires: docker``). Three agents in two Nomad datacenters (``--datacenter``): ``a`` and
``c`` in dc1, ``b`` in dc2 with ``meta.rack = r2``. Docker files run on an
agent that talks to the local engine and skip where the docker tests skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from harness import Cluster, clean_env, orch_cli, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.docker_image import ensure_test_image, require_engine  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CORPUS = Path(__file__).resolve().parents[1] / "nomad_jobs"
TERMINAL = ("complete", "failed", "stopped", "lost")
WAIT = 60.0  # generous: the machine is shared


def header(path: Path) -> dict[str, str]:
    """``# key: value`` lines at the top of a corpus file."""
    out = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def corpus(docker: bool) -> list[Path]:
    files = sorted(CORPUS.glob("*.nomad.hcl"))
    return [p for p in files if (header(p).get("requires") == "docker") == docker]


def start_cluster(tmp: Path, agents: dict[str, list[str]], env=None) -> Cluster:
    c = Cluster(tmp, heartbeat_interval=0.5)
    try:
        c.start_server()
        c.nodes = {name: c.start_agent(name, *extra, env=env) for name, extra in agents.items()}
    except BaseException:
        c.stop_all()
        raise
    return c


@pytest.fixture(scope="module")
def dcs(pyz, tmp_path_factory):
    c = start_cluster(
        tmp_path_factory.mktemp("nomad-corpus"),
        {
            "a": [],  # dc1 by default, as a Nomad agent
            "b": ["--datacenter", "dc2", "--meta", "rack=r2"],
            "c": ["--datacenter", "dc1", "--meta", "rack=r1"],
        },
    )
    yield c
    c.stop_all()


@pytest.fixture(scope="module")
def docker_cluster(pyz, tmp_path_factory):
    engine = require_engine()
    ensure_test_image(engine)
    c = start_cluster(tmp_path_factory.mktemp("nomad-docker"), {"docker": []})
    yield c
    c.stop_all()
    engine.close()


def convert(pyz, path: Path) -> dict:
    """`orch job convert FILE`: the orch JSON (no server needed)."""
    done = subprocess.run(
        [sys.executable, str(pyz), "job", "convert", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("path", corpus(docker=False), ids=lambda p: p.name)
def test_corpus_file_runs(dcs, pyz, path):
    run_file(dcs, pyz, path)


@pytest.mark.docker
@pytest.mark.parametrize("path", corpus(docker=True), ids=lambda p: p.name)
def test_corpus_docker_file_runs(docker_cluster, pyz, path):
    run_file(docker_cluster, pyz, path)


def run_file(c: Cluster, pyz, path: Path) -> None:
    expect = header(path)
    job_id = convert(pyz, path)["job_id"]
    plan = orch_cli(pyz, c, "job", "plan", str(path))
    unplaceable = expect["expect"] == "pending"
    assert plan.returncode == (2 if unplaceable else 0), plan.stdout + plan.stderr
    run = orch_cli(pyz, c, "job", "run", "--detach", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    try:
        reach(c, job_id, expect)
    finally:
        stop(c, job_id)


def reach(c: Cluster, job_id: str, expect: dict) -> None:
    """The state the file's header promises."""
    state = expect["expect"]
    if state == "periodic":
        child = c.post(f"/jobs/{job_id}/periodic/force").json()["job_id"]
        c.wait_job(child, "complete", WAIT)
    elif state == "dispatch":
        resp = c.post(f"/jobs/{job_id}/dispatch", {"meta": {"target": "staging"}})
        assert resp.status_code == 200, resp.text
        c.wait_job(resp.json()["job_id"], "complete", WAIT)
    elif state == "pending":
        wait_until(lambda: evaluated(c, job_id), WAIT, what=f"{job_id} evaluated")
        job = c.job(job_id)
        assert job["status"] == "pending" and not job["allocations"], job
    else:
        c.wait_job(job_id, state, WAIT)
    if expect.get("expect-allocs") == "nodes":
        wait_until(lambda: len(c.live_allocs(job_id)) == len(c.nodes), WAIT, what="one per node")
    if "expect-restarts" in expect:
        [alloc] = c.job(job_id)["allocations"]
        restarts = [t["restarts"] for t in alloc["tasks"].values()]
        assert restarts == [int(expect["expect-restarts"])], alloc
    if "expect-service" in expect:
        name, count = expect["expect-service"], c.job(job_id)["task_groups"][0]["count"]
        wait_until(lambda: healthy(c, name) == count, WAIT, what=f"{count} healthy {name}")


def evaluated(c: Cluster, job_id: str) -> bool:
    evals = c.get(f"/jobs/{job_id}/evaluations").json()["evaluations"]
    return bool(evals) and all(e["status"] != "pending" for e in evals)


def healthy(c: Cluster, name: str) -> int:
    return c.get(f"/services/{name}?healthy=true").json()["count"]


def stop(c: Cluster, job_id: str) -> None:
    """Stop the job and its children, and wait until their agents have let go of them."""
    ids = [job_id] + [ch["job_id"] for ch in c.job(job_id).get("children") or []]
    for one in ids:
        c.delete(f"/jobs/{one}")
    for one in ids:
        for alloc in c.job(one)["allocations"]:
            wait_until(lambda a=alloc: released(c, a), WAIT, what=f"{one} stopped on its node")


def released(c: Cluster, alloc: dict) -> bool:
    """The agent killed the allocation's tasks: it answers 404 (removed) or terminal.

    The server stops reading task states once it wants an allocation stopped,
    so the node that ran it is asked."""
    endpoint = c.node(alloc["node_id"])["endpoint"]
    resp = requests.get(f"{endpoint}/allocations/{alloc['allocation_id']}", timeout=5)
    if resp.status_code == 404:
        return True
    tasks = (resp.json().get("tasks") or {}).values()
    return resp.json()["status"] in TERMINAL and all(t["status"] in TERMINAL for t in tasks)
