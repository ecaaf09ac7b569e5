"""Ports as a scheduled resource and the task environment, on the built zipapp.

One agent with a three-port dynamic range: three copies of a web service get
three distinct ports and each answers HTTP on its own; a static port cannot
fit twice on the node (the second copy stays pending, saying why); after a
server restart the ports are unchanged and still reserved; once the job is
stopped, a new job gets them. With a docker engine: a container is reached on
its host port.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import requests

from harness import free_port, http_get, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.docker_image import TEST_IMAGE, ensure_test_image, remove_containers, require_engine  # noqa: E402


def service(job_id, port, *, count, command=None, driver="exec", image=None):
    config = {
        "command": command
        or [sys.executable, "-m", "http.server", "${ORCH_PORT_http}", "--bind", "127.0.0.1"]
    }
    if image:
        config["image"] = image
    return {
        "job_id": job_id,
        "type": "service",
        "task_groups": [
            {
                "name": "web",
                "count": count,
                "network": {"ports": [port]},
                "tasks": [
                    {
                        "name": "srv",
                        "driver": driver,
                        "config": config,
                        "resources": {"cpu": 50, "memory": 64},
                    }
                ],
            }
        ],
    }


def post(server, path, body):
    resp = requests.post(server.url + path, json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def allocs(server, job_id, *, running_only=True):
    view = http_get(f"{server.url}/jobs/{job_id}").json()
    return [
        a
        for a in view.get("allocations", [])
        if a["desired_status"] == "run" and (not running_only or a["client_status"] == "running")
    ]


def evaluation(server, eval_id, done=lambda ev: ev["status"] != "pending"):
    def finished():
        ev = http_get(f"{server.url}/evaluations/{eval_id}").json()
        return ev if done(ev) else None

    return wait_until(finished, 30, what=f"evaluation {eval_id}")


def answers(port):
    try:
        return requests.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def host_ports(alloc_list):
    return sorted(a["ports"][0]["value"] for a in alloc_list)


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_ports_are_scheduled_reserved_across_restarts_and_freed(server, agent_factory):
    low = random.randrange(22000, 31000)
    agent_factory(extra=["--port-range", f"{low}-{low + 2}"])
    post(server, "/jobs", service("web", {"label": "http"}, count=3))
    running = wait_until(
        lambda: (r := allocs(server, "web")) and len(r) == 3 and r, 60, what="three copies running"
    )
    ports = host_ports(running)
    assert ports == [low, low + 1, low + 2], ports
    for alloc in running:
        shown = http_get(f"{server.url}/allocations/{alloc['allocation_id']}").json()
        assert shown["ports"] == alloc["ports"]
        assert shown["ports"][0]["label"] == "http"
    for port in ports:
        wait_until(lambda port=port: answers(port), 30, what=f"HTTP on {port}")

    static = free_port()
    pinned = post(server, "/jobs", service("pinned", {"label": "http", "static": static}, count=2))
    ev = evaluation(server, pinned["evaluation_id"])
    assert ev["failures"] == {f"port {static} taken": 1}, ev
    wait_until(lambda: len(allocs(server, "pinned")) == 1, 60, what="one pinned copy running")
    wait_until(lambda: answers(static), 30, what=f"HTTP on static {static}")

    server.restart()
    assert host_ports(allocs(server, "web", running_only=False)) == ports
    extra = post(server, "/jobs", service("extra", {"label": "http"}, count=1))
    ev = evaluation(server, extra["evaluation_id"])
    assert ev["failures"] == {"dynamic ports exhausted": 1}, ev
    assert requests.delete(f"{server.url}/jobs/extra", timeout=10).status_code == 200

    assert requests.delete(f"{server.url}/jobs/web", timeout=10).status_code == 200
    wait_until(lambda: not any(answers(p) for p in ports), 30, what="old copies gone")
    post(server, "/jobs", service("again", {"label": "http"}, count=3))
    again = wait_until(
        lambda: (r := allocs(server, "again")) and len(r) == 3 and r, 60, what="the new job running"
    )
    assert host_ports(again) == ports
    for port in ports:
        wait_until(lambda port=port: answers(port), 30, what=f"HTTP on {port} again")


@pytest.mark.integration
@pytest.mark.docker
@pytest.mark.timeout(240)
def test_a_container_is_reached_on_its_host_port(server, agent_factory):
    engine = require_engine()
    ensure_test_image(engine)
    low = random.randrange(22000, 31000)
    agent_factory(extra=["--port-range", f"{low}-{low + 9}"])
    body = service(
        "dk-ports",
        {"label": "http", "to": 8080},
        count=1,
        driver="docker",
        image=TEST_IMAGE,
        command="mkdir -p /local/www && echo hello-$ORCH_ALLOC_INDEX > /local/www/index.html"
        " && exec httpd -f -p ${ORCH_PORT_http} -h /local/www",
    )
    post(server, "/jobs", body)
    try:
        (alloc,) = wait_until(
            lambda: allocs(server, "dk-ports") or None, 90, what="container running"
        )
        port = alloc["ports"][0]
        assert port["to"] == 8080 and low <= port["value"] <= low + 9

        def body_text():
            try:
                return requests.get(f"http://127.0.0.1:{port['value']}/", timeout=2).text
            except requests.RequestException:
                return None

        assert wait_until(body_text, 60, what="httpd on the host port").strip() == "hello-0"
    finally:
        requests.delete(f"{server.url}/jobs/dk-ports", timeout=10)
        for a in allocs(server, "dk-ports", running_only=False):
            remove_containers(engine, a["allocation_id"])
        engine.close()
