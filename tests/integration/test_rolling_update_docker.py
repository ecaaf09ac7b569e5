"""Zero downtime with the docker driver: the rolling-update proof on real containers.

A count-3 busybox httpd service (image `orch-test/busybox:latest`) serves its
version on "/" and, in a good build, a "/health" file that the http check
reads; a bad build has none, so its check fails (404). The group's `http`
port maps the host port to 8080 in the container. A client resolves the
instances through `GET /services/<name>?healthy=true` and sends a request
every 20 ms throughout: a rolling update, a failing version's auto-revert and
a canary + promote each finish with 0 failed requests. Skips when no engine
answers (fails in CI).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import requests

from harness import wait_until
from rolling import (
    COUNT,
    MAX_PARALLEL,
    CatalogWatch,
    Client,
    cli,
    get,
    healthy,
    roll_job,
    run_cli,
    versions,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.docker_image import (  # noqa: E402
    LABEL_ALLOC,
    TEST_IMAGE,
    ensure_test_image,
    remove_containers,
    require_engine,
)

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.timeout(360)]
CONTAINER_PORT = 8080


def docker_job(version: str, build: str = "good") -> dict:
    """The `roll` job on docker: httpd serving `version`; a bad build has no /health."""
    health = "printf ok > /www/health && " if build == "good" else ""
    command = (
        f"mkdir -p /www && printf {version} > /www/index.html && {health}"
        f"exec httpd -f -p {CONTAINER_PORT} -h /www"
    )
    task = {
        "name": "srv",
        "driver": "docker",
        "config": {"image": TEST_IMAGE, "command": command},
        "resources": {"cpu": 50, "memory": 32},
    }
    return roll_job(task, to=CONTAINER_PORT)


@pytest.fixture(scope="module")
def engine():
    client = require_engine()
    ensure_test_image(client)
    yield client
    client.close()


@pytest.fixture
def running_v1(engine, server, agent_factory):
    low = random.randrange(22000, 30000)
    agent_factory(extra=["--port-range", f"{low}-{low + 40}"])
    seen: set[str] = set()  # every allocation of the test: their containers go at the end
    try:
        resp = requests.post(server.url + "/jobs", json=docker_job("v1"), timeout=5)
        assert resp.status_code == 200, resp.text
        wait_until(lambda: len(healthy(server)) == COUNT, 90, what="3 healthy v1 containers")
        yield server, seen
    finally:
        seen |= {a["allocation_id"] for a in get(server, "/jobs/roll")["allocations"]}
        requests.delete(server.url + "/jobs/roll", timeout=5)
        wait_until(lambda: not ours(engine, seen), 60, what="the job's containers to stop")
        for alloc_id in seen:
            remove_containers(engine, alloc_id)


def ours(engine, alloc_ids: set[str]) -> list:
    """The running containers of these allocations."""
    found = engine.containers.list(ignore_removed=True, filters={"label": "orch.job_id=roll"})
    return [c for c in found if c.labels.get(LABEL_ALLOC) in alloc_ids]


def report(what: str, client: Client) -> None:
    print(f"docker {what}: {client.sent} requests, {len(client.failed)} failed {client.failed[:3]}")


def test_docker_rolling_update_then_failing_version_with_zero_failed_requests(
    pyz, running_v1, tmp_path
):
    server, _ = running_v1
    client, watch = Client(server), CatalogWatch(server)
    client.start()
    watch.start()
    done = run_cli(pyz, server, tmp_path, docker_job("v2"))
    wait_until(lambda: versions(server) == ["v2"] * COUNT, 60, what="every container on v2")
    mark = len(client.answers)
    wait_until(lambda: len(client.answers) > mark + 20, 30, what="requests after the update")
    client.stop()
    fewest = watch.stop()
    report("rolling update", client)
    assert done.returncode == 0, done.stdout + done.stderr
    assert client.failed == []
    assert set(client.answers[mark:]) == {"v2"}
    assert fewest >= COUNT - MAX_PARALLEL, fewest

    # A version whose check fails: the deployment fails and auto-reverts to v2.
    client, watch = Client(server), CatalogWatch(server)
    client.start()
    watch.start()
    bad = run_cli(pyz, server, tmp_path, docker_job("v3", build="bad"))

    def reverted():
        d = get(server, "/jobs/roll/deployment")
        return d["job_version"] == 3 and d["status"] == "successful"

    wait_until(reverted, 120, what="the revert's deployment to succeed")
    client.stop()
    fewest = watch.stop()
    report("failed update + revert", client)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "rolling back to job version 1" in bad.stdout, bad.stdout
    assert client.failed == []
    assert set(client.answers) == {"v2"}  # the bad copies never entered the healthy set
    assert fewest >= COUNT - MAX_PARALLEL, fewest
    statuses = [d["status"] for d in get(server, "/jobs/roll/deployments")["deployments"][:3]]
    assert statuses == ["successful", "failed", "successful"]


def test_docker_canary_then_promote_with_zero_failed_requests(pyz, running_v1):
    server, _ = running_v1
    client = Client(server)
    client.start()
    job = docker_job("v2")
    job["update"]["canary"] = 1
    resp = requests.put(server.url + "/jobs/roll", json=job, timeout=5)
    assert resp.status_code == 200, resp.text

    def canary_healthy():
        d = get(server, "/jobs/roll/deployment")
        return d if d["groups"]["web"]["healthy"] == 1 else None

    d = wait_until(canary_healthy, 60, what="the canary container to turn healthy")
    assert d["status"] == "running" and d["groups"]["web"]["promoted"] is False
    assert versions(server) == ["v1", "v1", "v1", "v2"]
    promoted = cli(pyz, server, "job", "promote", "roll")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr

    def succeeded():
        return get(server, f"/deployments/{d['deployment_id']}")["status"] == "successful"

    wait_until(succeeded, 120, what="the promoted deployment to succeed")
    wait_until(lambda: versions(server) == ["v2"] * COUNT, 60, what="every container on v2")
    mark = len(client.answers)
    wait_until(lambda: len(client.answers) > mark + 20, 30, what="requests after the promote")
    client.stop()
    report("canary + promote", client)
    assert client.failed == []
    assert set(client.answers[mark:]) == {"v2"}
