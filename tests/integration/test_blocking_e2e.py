"""Blocking queries on a real `orch dev` cluster: a client waits on X-Orch-Index."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from harness import wait_until

JOB = {
    "job_id": "blocking",
    "type": "service",
    "task_groups": [
        {
            "name": "g",
            "count": 1,
            "tasks": [{"name": "t", "driver": "exec", "config": {"command": "exec sleep 300"}}],
        }
    ],
}


def read(url: str, index: int = 0, wait: str = "30s") -> tuple[dict, int, float]:
    query = f"?index={index}&wait={wait}" if index else ""
    start = time.monotonic()
    resp = requests.get(f"{url}/jobs/blocking{query}", timeout=90)
    assert resp.status_code == 200, resp.text
    return resp.json(), int(resp.headers["X-Orch-Index"]), time.monotonic() - start


def test_a_client_follows_a_job_to_running_without_polling(dev_cluster):
    url = dev_cluster.url
    assert requests.post(f"{url}/jobs", json=JOB, timeout=10).status_code == 200
    job, index, _ = read(url)
    reads = 1
    while job["status"] != "running":
        job, newer, _ = read(url, index)
        reads += 1
        # Woken by a change (or the 30 s wait, never reached here).
        assert newer > index, job
        index = newer
        assert reads < 20, "a blocking client polls"
    # Running and nothing changing: the same index waits out its wait.
    same, again, took = read(url, index, "700ms")
    assert again == index and took >= 0.65 and same["status"] == "running"

    woke: list = []
    reader = threading.Thread(target=lambda: woke.append(read(url, index, "60s")))
    reader.start()
    time.sleep(0.2)  # the reader is waiting (if not, it is answered at once all the same)
    assert requests.delete(f"{url}/jobs/blocking", timeout=10).status_code == 200
    reader.join(90)
    assert woke and woke[0][1] > index and woke[0][2] < 30
    wait_until(lambda: read(url)[0]["status"] == "dead", 30, what="the job dead")


def test_bad_values_are_400_and_plain_reads_unchanged(dev_cluster):
    url = dev_cluster.url
    for query in ("index=-1", "index=x", "index=1&wait=soon"):
        resp = requests.get(f"{url}/jobs?{query}", timeout=10)
        assert resp.status_code == 400 and "error" in resp.json(), (query, resp.text)
    plain = requests.get(f"{url}/jobs", timeout=10)
    assert plain.status_code == 200 and set(plain.json()) == {"jobs", "count"}
    assert int(plain.headers["X-Orch-Index"]) > 0


def hurries(url: str) -> int:
    """orch_hurry_total{result="sent"} from /metrics."""
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith('orch_hurry_total{result="sent"}'):
            return int(float(line.split()[-1]))
    raise AssertionError("no orch_hurry_total in /metrics")


def test_a_client_waiting_on_a_batch_job_hurries_its_node(dev_cluster):
    """A blocking read that waits on a batch job asks the job's node to
    report at once (POST /allocations/hurry); the agent answers it, and the
    job's end reaches the waiting client."""
    url = dev_cluster.url
    before = hurries(url)
    body = {
        "job_id": "waited",
        "type": "batch",
        "task_groups": [
            {
                "name": "g",
                "count": 1,
                "tasks": [{"name": "t", "driver": "exec", "config": {"command": "sleep 1"}}],
            }
        ],
    }
    assert requests.post(f"{url}/jobs", json=body, timeout=10).status_code == 200
    resp = requests.get(f"{url}/jobs/waited", timeout=10)
    job, index = resp.json(), int(resp.headers["X-Orch-Index"])
    while job["status"] != "complete":
        assert job["status"] in ("pending", "running"), job
        resp = requests.get(f"{url}/jobs/waited?index={index}&wait=30s", timeout=60)
        job, index = resp.json(), int(resp.headers["X-Orch-Index"])
    wait_until(lambda: hurries(url) > before, 10, what="a hurry answered by the agent")


@pytest.mark.parametrize(
    "path, header",
    [
        ("/jobs/watched", "X-Orch-Index"),
        ("/jobs", "X-Orch-Index"),  # a list: computed again by its route
        ("/v1/job/watched", "X-Nomad-Index"),
    ],
)
def test_many_waiting_clients_wait_instead_of_spinning(dev_cluster, path, header):
    """More blocking readers than the server has threads for them: each one
    waits out its wait (parked on the server's I/O loop), none is answered
    at once over and over; a change still wakes them all. Before, past 4
    of a list's or a /v1 read's, each was answered at once: hundreds each."""
    url = dev_cluster.url
    body = dict(JOB, job_id="watched")
    assert requests.post(f"{url}/jobs", json=body, timeout=10).status_code == 200
    wait_until(
        lambda: requests.get(f"{url}/jobs/watched", timeout=10).json()["status"] == "running",
        30,
        what="the watched job running",
    )
    index = int(requests.get(f"{url}{path}", timeout=10).headers[header])
    watchers, stop_at = 12, time.monotonic() + 2.0
    reads = [0] * watchers
    woken: list = []

    def watch(i: int) -> None:
        session = requests.Session()
        seen = index
        while time.monotonic() < stop_at:
            resp = session.get(f"{url}{path}?index={seen}&wait=1s", timeout=30)
            assert resp.status_code == 200, resp.text
            reads[i] += 1
            seen = int(resp.headers[header])
        resp = session.get(f"{url}{path}?index={seen}&wait=60s", timeout=90)
        woken.append(int(resp.headers[header]) > seen)

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(watchers)]
    for thread in threads:
        thread.start()
    # Each read waits its 1 s: two or three in the 2 s, not hundreds.
    assert max(reads) <= 4, reads
    time.sleep(2.5)
    assert max(reads) <= 4, reads
    assert requests.delete(f"{url}/jobs/watched", timeout=10).status_code == 200
    for thread in threads:
        thread.join(90)
    assert woken == [True] * watchers
