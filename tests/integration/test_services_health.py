"""Health checks and the service catalog on the real zipapp: a real HTTP task.

Until group networks (scheduler-chosen ports) land, a service names its port
as a number: the test picks a free one and the task listens on it.
"""

from __future__ import annotations

import signal
import sys
import textwrap
import time

import pytest
import requests

from harness import free_port, wait_until
from harness import get_json as get
from harness import orch_cli as cli

# A tiny web service: "/" answers 200 with its pid, "/fail" always 500.
WEB = textwrap.dedent(
    """
    import os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            code = 500 if self.path == "/fail" else 200
            body = f"pid {os.getpid()} path {self.path}".encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def web_job(job_id: str, script, port: int, path: str = "/", check_restart=None) -> dict:
    service = {
        "name": f"{job_id}-svc",
        "port": port,
        "tags": ["v1"],
        "checks": [{"type": "http", "path": path, "interval": "200ms", "timeout": "1s"}],
    }
    if check_restart is not None:
        service["check_restart"] = check_restart
    return {
        "job_id": job_id,
        "type": "service",
        "task_groups": [
            {
                "name": "g",
                "count": 1,
                "services": [service],
                "tasks": [
                    {
                        "name": "web",
                        "driver": "exec",
                        "config": {"command": [sys.executable, str(script), str(port)]},
                        "resources": {"cpu": 100, "memory": 64},
                    }
                ],
            }
        ],
    }


def the_alloc(server, job_id: str) -> dict:
    allocs = get(server, f"/jobs/{job_id}")["allocations"]
    live = [a for a in allocs if a["desired_status"] == "run"]
    assert len(live) == 1, allocs
    return get(server, f"/allocations/{live[0]['allocation_id']}")


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "web.py"
    path.write_text(WEB)
    return path


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_healthy_service_is_discovered_and_leaves_when_stopped(pyz, server, agent_factory, script):
    agent = agent_factory()
    port = free_port()
    resp = requests.post(server.url + "/jobs", json=web_job("web", script, port), timeout=5)
    assert resp.status_code == 200, resp.text

    def healthy_instances():
        return get(server, "/services/web-svc?healthy=true")["instances"]

    (inst,) = wait_until(healthy_instances, 60, what="a healthy instance of web-svc")
    alloc = the_alloc(server, "web")
    assert inst == {
        "service": "web-svc",
        "address": "127.0.0.1",
        "port": port,
        "tags": ["v1"],
        "alloc_id": alloc["allocation_id"],
        "node_id": agent.node_id,
        "job_id": "web",
        "healthy": True,
    }
    assert alloc["health"] == "healthy"
    assert alloc["checks"]["web-svc/http-0"]["output"].startswith("HTTP 200")
    # The instance answers where the catalog says.
    assert requests.get(f"http://{inst['address']}:{inst['port']}/", timeout=5).ok
    services = get(server, "/services")
    assert services["services"] == [
        {"name": "web-svc", "tags": ["v1"], "instances": 1, "healthy": 1}
    ]
    listed = cli(pyz, server, "service", "info", "web-svc", "--healthy")
    assert listed.returncode == 0 and f"127.0.0.1:{port}" in listed.stdout, listed
    status = cli(pyz, server, "job", "status", "web")
    assert status.returncode == 0 and "Health" in status.stdout and "healthy" in status.stdout

    # Stopped: gone from the catalog at once (desired stop), for good.
    stopped_at = time.monotonic()
    assert requests.delete(server.url + "/jobs/web", timeout=5).status_code == 200
    wait_until(lambda: get(server, "/services/web-svc")["count"] == 0, 5, what="catalog drop")
    assert time.monotonic() - stopped_at < 2.0  # within a heartbeat or so (0.5 s)
    assert get(server, "/services")["count"] == 0
    assert cli(pyz, server, "service", "list").stdout.strip() == "No services"


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_failing_check_shows_unhealthy_and_check_restart_restarts(
    pyz, server, agent_factory, script
):
    agent_factory()
    port = free_port()
    restart = {"limit": 3, "grace": "5s"}  # room to look before the restart
    body = web_job("sick", script, port, path="/fail", check_restart=restart)
    assert requests.post(server.url + "/jobs", json=body, timeout=5).status_code == 200

    def answered_500():
        # (The first checks may find the task not listening yet: refused.)
        found = the_alloc(server, "sick")
        output = found["checks"].get("sick-svc/http-0", {}).get("output", "")
        return output.startswith("HTTP 500") and found

    alloc = wait_until(answered_500, 60, what="an unhealthy allocation answering 500")
    result = alloc["checks"]["sick-svc/http-0"]
    assert alloc["health"] == "unhealthy" and result["status"] == "failing"
    assert "path /fail" in result["output"]
    assert get(server, "/services/sick-svc?healthy=true")["count"] == 0
    assert get(server, "/services/sick-svc")["instances"][0]["healthy"] is False

    def cli_shows_unhealthy():
        # The check may restart the task while the CLI starts (a loaded host
        # is slow to start it): health is unknown for a moment, then failing again.
        shown = cli(pyz, server, "alloc", "status", alloc["allocation_id"])
        assert shown.returncode == 0, shown.stderr
        out = shown.stdout
        return "Health" in out and "unhealthy" in out and "HTTP 500" in out

    wait_until(cli_shows_unhealthy, 60, what="alloc status showing the failing check")

    def restarted_by_check():
        task = the_alloc(server, "sick")["tasks"]["web"]
        messages = [e["message"] for e in task["events"] if e["type"] == "Restarting"]
        return task["restarts"] >= 1 and messages

    messages = wait_until(restarted_by_check, 60, what="a restart by the check")
    assert messages[0] == "restarted by check sick-svc/http-0: 3 consecutive failures"
    # Health is unknown between the restart and the next check, then failing again.
    wait_until(
        lambda: (
            (a := the_alloc(server, "sick"))["health"] == "unhealthy"
            and a["client_status"] == "running"
        ),
        30,
        what="unhealthy again, still running",
    )


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_instances_of_a_lost_node_leave_the_catalog_within_the_ttl(
    pyz, server, agent_factory, script
):
    agent = agent_factory()
    port = free_port()
    assert requests.post(server.url + "/jobs", json=web_job("far", script, port), timeout=5).ok
    wait_until(lambda: get(server, "/services/far-svc?healthy=true")["count"] == 1, 60)
    # A frozen agent misses its heartbeats (its task keeps running): the node
    # is lost after the server's node TTL (3 s here), and its instances with it.
    agent.proc.signal(signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        wait_until(lambda: get(server, "/services/far-svc")["count"] == 0, 30, what="drop")
        assert time.monotonic() - frozen_at < 3.0 + 3.0  # the TTL, plus the monitor's tick
    finally:
        agent.proc.signal(signal.SIGCONT)
