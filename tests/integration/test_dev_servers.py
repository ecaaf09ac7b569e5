"""`orch dev --servers 3`: three servers on a PostgreSQL dev mode starts itself.

The launcher prints every server's URL; they agree on one leader; a job
submitted to a follower runs; Ctrl-C (SIGINT) stops agents, servers and
PostgreSQL (its postmaster.pid goes with a clean shutdown) and exits 0.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests

from harness import clean_env, free_port, pid_alive, wait_until

pytestmark = [
    pytest.mark.usefixtures("postgres_programs"),
    pytest.mark.slow,
    pytest.mark.timeout(240),
]


def test_dev_three_servers_on_their_own_postgres(tmp_path, pyz):
    data = tmp_path / "dev"
    log_path = tmp_path / "dev.log"
    pid_file = tmp_path / "task.pid"
    with open(log_path, "wb") as log:
        dev = subprocess.Popen(
            [sys.executable, str(pyz), "dev", "--servers", "3", "--agents", "2",
             "--port", str(free_port()), "--data-dir", str(data),
             "--heartbeat-interval", "0.5"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=clean_env(),
        )  # fmt: skip
    try:
        wait_until(
            lambda: dev.poll() is None and "2 nodes healthy" in log_path.read_text(),
            90,
            what="orch dev ready",
        )
        text = log_path.read_text()
        urls = re.findall(r"orch dev: server (http://\S+) \(pid", text)
        assert len(set(urls)) == 3, text
        # "nodes healthy" needs only the leader: a follower may still be
        # loading its state, not yet listening.
        wait_until(lambda: all(answers(u) for u in urls), 60, what="every server answering")
        leaders = {requests.get(f"{u}/status/leader", timeout=5).json()["leader"] for u in urls}
        assert len(leaders) == 1 and leaders <= set(urls)
        follower = next(u for u in urls if u not in leaders)
        job = {
            "job_id": "dev-ha",
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
        assert requests.post(f"{follower}/jobs", json=job, timeout=5).status_code == 200
        wait_until(
            lambda: (
                requests.get(f"{follower}/jobs/dev-ha", timeout=2).json()["status"] == "running"
            ),
            60,
            what="job running",
        )
        task_pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text()))
        follower_wakes_on_the_leaders_write(follower, next(iter(leaders)))
        postmaster = data / "postgres" / "pgdata" / "postmaster.pid"
        pg_pid = int(postmaster.read_text().split()[0])
        assert psutil.pid_exists(pg_pid)

        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=90) == 0
        assert not postmaster.exists(), "PostgreSQL was not shut down cleanly"
        wait_until(lambda: not pid_alive(pg_pid), 10, what="postgres gone")
        wait_until(lambda: not pid_alive(task_pid), 10, what="task stopped")
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()


def answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/status/leader", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def follower_wakes_on_the_leaders_write(follower: str, leader: str) -> None:
    """Blocking queries on a follower (the job's, the job list's, the /v1
    job's: each parked its own way) wake when the leader stops the job (the
    change log), and both servers answer the job with the same index."""
    reads = [
        ("/jobs/dev-ha", "X-Orch-Index"),
        ("/jobs", "X-Orch-Index"),
        ("/v1/job/dev-ha", "X-Nomad-Index"),
    ]
    woke: dict[str, tuple[int, requests.Response]] = {}

    def blocking_read(path: str, header: str) -> None:
        index = int(requests.get(f"{follower}{path}", timeout=5).headers[header])
        answer = requests.get(f"{follower}{path}?index={index}&wait=60s", timeout=90)
        woke[path] = (index, answer)

    readers = [threading.Thread(target=blocking_read, args=read) for read in reads]
    for reader in readers:
        reader.start()
    time.sleep(0.5)  # their first reads done: they wait
    try:
        assert requests.delete(f"{leader}/jobs/dev-ha", timeout=5).status_code == 200
    finally:
        for reader in readers:
            reader.join(90)
    for path, header in reads:
        index, answer = woke[path]
        assert answer.status_code == 200, path
        assert int(answer.headers[header]) > index, path
    wait_until(
        lambda: (
            requests.get(f"{follower}/jobs/dev-ha", timeout=5).headers["X-Orch-Index"]
            == requests.get(f"{leader}/jobs/dev-ha", timeout=5).headers["X-Orch-Index"]
        ),
        30,
        what="the same index on leader and follower",
    )
