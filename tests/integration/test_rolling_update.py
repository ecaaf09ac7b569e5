"""Rolling updates on the real zipapp: a count-3 HTTP service with an http check.

The service answers its version on "/" and its health on "/health" (a "bad"
build answers 500 there). Throughout each update the test reads the catalog
(`GET /services/<name>?healthy=true`): with max_parallel 1 it never lists
fewer than count - max_parallel healthy instances.
"""

from __future__ import annotations

import random
import sys
import textwrap

import pytest
import requests

from harness import wait_until
from rolling import (
    COUNT,
    MAX_PARALLEL,
    CatalogWatch,
    Client,
    alloc_ids,
    cli,
    get,
    healthy,
    roll_job,
    run_cli,
    versions,
)

WEB = textwrap.dedent(
    """
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    PORT, VERSION, BUILD = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            code = 500 if self.path == "/health" and BUILD == "bad" else 200
            body = VERSION.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
    """
)


def web_job(script, version: str, build: str = "good") -> dict:
    command = [sys.executable, str(script), "${ORCH_PORT_http}", version, build]
    task = {
        "name": "srv",
        "driver": "exec",
        "config": {"command": command},
        "resources": {"cpu": 50, "memory": 64},
    }
    return roll_job(task)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "web.py"
    path.write_text(WEB)
    return path


@pytest.fixture
def running_v1(pyz, server, agent_factory, script):
    low = random.randrange(22000, 30000)
    agent_factory(extra=["--port-range", f"{low}-{low + 40}"])
    resp = requests.post(server.url + "/jobs", json=web_job(script, "v1"), timeout=5)
    assert resp.status_code == 200, resp.text
    wait_until(lambda: len(healthy(server)) == COUNT, 60, what="3 healthy v1 instances")
    return server


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_rolling_update_keeps_healthy_copies_then_a_bad_version_reverts(
    pyz, running_v1, script, tmp_path
):
    server = running_v1
    watch = CatalogWatch(server)
    watch.start()
    done = run_cli(pyz, server, tmp_path, web_job(script, "v2"))
    fewest = watch.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "successful" in done.stdout
    print(f"rolling update: fewest healthy instances {fewest} over {watch.reads} reads")
    assert fewest >= COUNT - MAX_PARALLEL
    d = get(server, "/jobs/roll/deployment")
    assert d["status"] == "successful" and d["job_version"] == 1
    assert d["groups"]["web"]["healthy"] == COUNT
    wait_until(lambda: versions(server) == ["v2"] * COUNT, 30, what="every instance on v2")
    assert [v["stable"] for v in get(server, "/jobs/roll/versions")["versions"]][:1] == [True]

    # A version whose check fails: the deployment fails, auto-reverts to v2.
    watch = CatalogWatch(server)
    watch.start()
    bad = run_cli(pyz, server, tmp_path, web_job(script, "v3", build="bad"))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "failed" in bad.stdout and "healthy_deadline" in bad.stdout, bad.stdout
    assert "rolling back to job version 1" in bad.stdout, bad.stdout

    def reverted():
        d = get(server, "/jobs/roll/deployment")
        return d if d["job_version"] == 3 and d["status"] == "successful" else None

    wait_until(reverted, 90, what="the revert's deployment to succeed")
    fewest = watch.stop()
    print(f"failed update + revert: fewest healthy instances {fewest}")
    assert fewest >= COUNT - MAX_PARALLEL
    wait_until(lambda: versions(server) == ["v2"] * COUNT, 30, what="every instance back on v2")
    deployments = get(server, "/jobs/roll/deployments")["deployments"]
    assert [d["status"] for d in deployments[:3]] == ["successful", "failed", "successful"]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_canary_waits_for_promote_then_rollout_replaces_every_copy(
    pyz, running_v1, script, tmp_path
):
    server = running_v1
    job = web_job(script, "v2")
    job["update"]["canary"] = 1
    resp = requests.put(server.url + "/jobs/roll", json=job, timeout=5)
    assert resp.status_code == 200, resp.text

    def canary_healthy():
        d = get(server, "/jobs/roll/deployment")
        return d if d["groups"]["web"]["healthy"] == 1 else None

    d = wait_until(canary_healthy, 60, what="the canary to turn healthy")
    assert d["status"] == "running" and d["groups"]["web"]["promoted"] is False
    # The canary serves beside the three old copies, which wait for promotion.
    assert versions(server) == ["v1", "v1", "v1", "v2"]
    shown = cli(pyz, server, "deployment", "status", "roll")
    assert shown.returncode == 0 and "running" in shown.stdout, shown.stdout + shown.stderr
    promoted = cli(pyz, server, "job", "promote", "roll")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr

    def succeeded():
        d = get(server, f"/deployments/{d_id}")
        return d if d["status"] == "successful" else None

    d_id = d["deployment_id"]
    wait_until(succeeded, 90, what="the promoted deployment to succeed")
    status = cli(pyz, server, "job", "status", "roll")
    assert "Latest Deployment" in status.stdout and "successful" in status.stdout, status.stdout
    wait_until(lambda: versions(server) == ["v2"] * COUNT, 30, what="every instance on v2")

    # A rolling restart without a spec change: every copy replaced, none lost.
    before = alloc_ids(server)
    watch = CatalogWatch(server)
    watch.start()
    rolled = cli(pyz, server, "job", "promote", "roll")
    assert rolled.returncode == 1 and "no running deployment" in rolled.stderr + rolled.stdout
    # The rollout follows the update block, canary included.
    rolled = cli(pyz, server, "job", "rollout", "roll", "--detach")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    rollout = wait_until(
        lambda: (d := canary_healthy()) and d["deployment_id"] != d_id and d,
        60,
        what="the rollout's canary to turn healthy",
    )
    promoted = cli(pyz, server, "job", "promote", "roll")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    d_id = rollout["deployment_id"]
    wait_until(succeeded, 90, what="the rollout's deployment to succeed")
    fewest = watch.stop()
    print(f"rollout: fewest healthy instances {fewest}")
    assert fewest >= COUNT - MAX_PARALLEL
    wait_until(lambda: len(healthy(server)) == COUNT, 30, what="3 healthy after the rollout")
    assert not (alloc_ids(server) & before)
    assert versions(server) == ["v2"] * COUNT


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_zero_downtime_rolling_update(pyz, running_v1, script, tmp_path):
    server = running_v1
    client = Client(server)
    client.start()
    done = run_cli(pyz, server, tmp_path, web_job(script, "v2"))
    wait_until(lambda: versions(server) == ["v2"] * COUNT, 30, what="every instance on v2")
    mark = len(client.answers)
    wait_until(lambda: len(client.answers) > mark + 20, 30, what="requests after the update")
    client.stop()
    print(f"zero downtime: {client.sent} requests, {len(client.failed)} failed {client.failed[:3]}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert client.failed == []
    assert set(client.answers[mark:]) == {"v2"}

    # A version whose check fails, auto-reverted: still no failed request.
    client = Client(server)
    client.start()
    bad = run_cli(pyz, server, tmp_path, web_job(script, "v3", build="bad"))

    def reverted():
        d = get(server, "/jobs/roll/deployment")
        return d["job_version"] == 3 and d["status"] == "successful"

    wait_until(reverted, 90, what="the revert's deployment to succeed")
    client.stop()
    print(f"failed update: {client.sent} requests, {len(client.failed)} failed {client.failed[:3]}")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert client.failed == []
    assert set(client.answers) == {"v2"}  # the bad copies never entered the healthy set


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_rollout_follows_its_deployment_to_the_end(pyz, running_v1):
    # Without --detach the CLI waits on the job's blocking reads until the
    # deployment ends, and says so.
    rolled = cli(pyz, running_v1, "job", "rollout", "roll")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert "successful" in rolled.stdout, rolled.stdout
    assert get(running_v1, "/jobs/roll/deployment")["status"] == "successful"
