"""`orch dev` from the zipapp copied alone into an empty directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import requests

from harness import free_port, pid_alive, wait_until


def test_dev_cluster_from_a_lone_zipapp_runs_jobs_and_stops_everything(tmp_path, pyz):
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(pyz, alone / "orch.pyz")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "dev.log", "wb")
    started = time.monotonic()
    dev = subprocess.Popen(
        [
            sys.executable,
            "orch.pyz",
            "dev",
            "--agents",
            "3",
            "--port",
            str(port),
            "--heartbeat-interval",
            "0.5",
        ],
        cwd=alone,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, DOCKER_HOST="unix:///nonexistent.sock"),
    )
    try:

        def healthy():
            nodes = requests.get(f"{url}/nodes", timeout=1).json()["nodes"]
            return len(nodes) == 3 and all(n["healthy"] for n in nodes)

        wait_until(healthy, timeout=20, what="3 healthy nodes")
        print(f"dev cluster healthy after {time.monotonic() - started:.2f}s")
        children = psutil.Process(dev.pid).children(recursive=True)
        assert len(children) >= 4  # server + 3 agents

        pid_file = tmp_path / "task.pid"
        job = {
            "job_id": "dev-job",
            "type": "service",
            "task_groups": [
                {
                    "name": "g",
                    "count": 1,
                    "tasks": [
                        {
                            "name": "t",
                            "config": {"command": f"echo $$ > {pid_file}; exec sleep 300"},
                        }
                    ],
                }
            ],
        }
        assert requests.post(f"{url}/jobs", json=job, timeout=5).ok
        wait_until(
            lambda: requests.get(f"{url}/jobs/dev-job", timeout=1).json()["status"] == "running",
            what="job running",
        )
        task_pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text()))
        assert pid_alive(task_pid)

        # No engine answers (DOCKER_HOST points nowhere): a docker task with
        # a command falls back to exec and says so in its events.
        boxed = {
            "job_id": "boxed",
            "task_groups": [
                {
                    "name": "g",
                    "tasks": [
                        {
                            "name": "t",
                            "driver": "docker",
                            "config": {"image": "busybox:latest", "command": "echo fell back"},
                        }
                    ],
                }
            ],
        }
        assert requests.post(f"{url}/jobs", json=boxed, timeout=5).ok
        wait_until(
            lambda: requests.get(f"{url}/jobs/boxed", timeout=1).json()["status"] == "complete",
            what="fallback job complete",
        )
        alloc = requests.get(f"{url}/jobs/boxed", timeout=5).json()["allocations"][0]
        events = " ".join(e["message"] for e in alloc["tasks"]["t"]["events"])
        assert "fallback" in events
        logs = requests.get(f"{url}/allocations/{alloc['allocation_id']}/logs/t", timeout=5)
        assert logs.text == "fell back\n"

        dev.send_signal(signal.SIGTERM)
        assert dev.wait(timeout=30) == 0
        assert not pid_alive(task_pid)
        assert not any(pid_alive(c.pid) for c in children)
        text = (tmp_path / "dev.log").read_text()
        assert url in text
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
        log.close()
