"""A graceful stop on the real zipapp: out of the catalog, shutdown_delay, then the signal.

The task is a tiny web service that, on SIGTERM, writes when the signal came
and exits. After `DELETE /jobs/<id>` its instance must leave
`GET /services/<name>` first, keep answering through the group's
shutdown_delay (a client that resolved it a moment earlier is not refused),
and only then get its kill signal.
"""

from __future__ import annotations

import http.server
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from harness import free_port, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.docker_image import (  # noqa: E402
    TEST_IMAGE,
    ensure_test_image,
    remove_containers,
    require_engine,
)

DELAY = 2.0

# Serves "/" with 200; on SIGTERM writes "SIGTERM <unix time>" to argv[2] and exits.
WEB = textwrap.dedent(
    """
    import signal, sys, time, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    def on_term(signum, frame):
        line = f"{signal.Signals(signum).name} {time.time()}"
        print(line, flush=True)
        with open(sys.argv[2], "w") as out:
            out.write(line + "\\n")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while True:
        time.sleep(0.05)
    """
)


def job(script, port: int, marker) -> dict:
    service = {
        "name": "calm-svc",
        "port": port,
        "checks": [{"type": "http", "path": "/", "interval": "200ms", "timeout": "1s"}],
    }
    task = {
        "name": "web",
        "driver": "exec",
        "config": {"command": [sys.executable, str(script), str(port), str(marker)]},
        "resources": {"cpu": 100, "memory": 64},
        "kill_timeout": "10s",
    }
    group = {"name": "g", "services": [service], "shutdown_delay": f"{DELAY}s", "tasks": [task]}
    return {"job_id": "calm", "type": "service", "task_groups": [group]}


def instances(server) -> list:
    resp = requests.get(server.url + "/services/calm-svc", timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()["instances"]


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_instance_leaves_the_catalog_before_the_task_gets_its_signal(
    pyz, server, agent_factory, tmp_path
):
    agent_factory()
    script, marker = tmp_path / "web.py", tmp_path / "signal.txt"
    script.write_text(WEB)
    port = free_port()
    resp = requests.post(server.url + "/jobs", json=job(script, port, marker), timeout=5)
    assert resp.status_code == 200, resp.text
    wait_until(lambda: [i for i in instances(server) if i["healthy"]], 60, what="healthy")

    deleted_at = time.time()
    assert requests.delete(server.url + "/jobs/calm", timeout=10).status_code == 200
    wait_until(lambda: instances(server) == [], 10, interval=0.02, what="catalog drop")
    gone_at = time.time()
    # Out of the catalog, still serving: through the delay nobody is refused.
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).text == "ok"
    assert not marker.exists(), "signalled before its shutdown_delay was over"

    line = wait_until(lambda: marker.exists() and marker.read_text(), 30, what="the signal")
    name, signalled_at = line.split()
    signalled_at = float(signalled_at)
    print(f"deleted {deleted_at:.3f} gone {gone_at:.3f} signalled {signalled_at:.3f}")
    assert name == "SIGTERM"
    assert gone_at < signalled_at
    assert signalled_at - deleted_at >= DELAY
    # The allocation ends stopped, its task complete (it exited on the signal).
    allocs = requests.get(server.url + "/jobs/calm", timeout=5).json()["allocations"]
    wait_until(
        lambda: (
            requests.get(
                server.url + f"/allocations/{allocs[0]['allocation_id']}", timeout=5
            ).json()["client_status"]
            in ("stopped", "complete")
        ),
        30,
        what="the allocation's end",
    )


# -- the same with the docker driver, where an engine answers --------------------


class _Hearer(http.server.BaseHTTPRequestHandler):
    """Records each GET's path and arrival time: the container's trap calls home."""

    heard: list = []

    def do_GET(self):
        self.heard.append((self.path, time.time()))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hearer():
    _Hearer.heard = []
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), _Hearer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], _Hearer.heard
    server.shutdown()
    server.server_close()


def docker_job(job_id: str, port: int, home: int) -> dict:
    # On SIGINT the container tells the host (its gateway) and exits.
    # (busybox's wget needs a resolver the static image lacks: nc it is.)
    gateway = "$(ip route | awk '/default/ {print $3}')"
    call_home = f"printf 'GET /INT HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {gateway} {home}"
    command = (
        f"home() {{ {call_home}; }}; trap 'home; exit 0' INT; "
        "echo up > /www/index.html; httpd -f -p 8080 -h /www & "
        "while :; do sleep 0.1; done"
    )
    service = {
        "name": f"{job_id}-svc",
        "port": port,
        "checks": [{"type": "tcp", "interval": "200ms", "timeout": "1s"}],
    }
    task = {
        "name": "t",
        "driver": "docker",
        "config": {"image": TEST_IMAGE, "port": port, "container_port": 8080, "command": command},
        "resources": {"cpu": 100, "memory": 64},
        "kill_signal": "SIGINT",
    }
    group = {"name": "g", "services": [service], "shutdown_delay": f"{DELAY}s", "tasks": [task]}
    return {"job_id": job_id, "type": "service", "task_groups": [group]}


@pytest.mark.integration
@pytest.mark.docker
@pytest.mark.timeout(240)
def test_docker_task_gets_its_kill_signal_after_the_delay(pyz, server, agent_factory, hearer):
    engine = require_engine()
    ensure_test_image(engine)
    agent_factory()
    home, heard = hearer
    job_id = f"gs-{uuid.uuid4().hex[:8]}"
    port = free_port()
    resp = requests.post(server.url + "/jobs", json=docker_job(job_id, port, home), timeout=5)
    assert resp.status_code == 200, resp.text
    svc = f"/services/{job_id}-svc"
    try:
        wait_until(
            lambda: requests.get(server.url + svc + "?healthy=true", timeout=5).json()["count"], 90
        )
        deleted_at = time.time()
        assert requests.delete(server.url + f"/jobs/{job_id}", timeout=10).status_code == 200
        wait_until(lambda: requests.get(server.url + svc, timeout=5).json()["count"] == 0, 10, 0.02)
        gone_at = time.time()
        path, signalled_at = wait_until(lambda: heard and heard[0], 30, what="the container's call")
        print(f"deleted {deleted_at:.3f} gone {gone_at:.3f} signalled {signalled_at:.3f}")
        assert path == "/INT"
        assert gone_at < signalled_at and signalled_at - deleted_at >= DELAY
        wait_until(
            lambda: (
                not engine.containers.list(
                    all=True, ignore_removed=True, filters={"label": f"orch.job_id={job_id}"}
                )
            ),
            30,
            what="the container removed",
        )
    finally:
        for container in engine.containers.list(
            all=True, ignore_removed=True, filters={"label": f"orch.job_id={job_id}"}
        ):
            remove_containers(engine, container.labels.get("orch.alloc_id"))
        engine.close()
