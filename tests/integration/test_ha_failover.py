"""Failover: 3 servers on a real PostgreSQL, 3 agents, the leader killed mid-burst.

8 client threads submit 300 jobs spread over every server (each thread's
``orch.client.Client`` lists the servers from a different first one, and
fails over as the CLI does). After 100 acknowledged submits the leader is
killed with SIGKILL. Then: every acknowledged job is stored and reaches
running (services) or complete (batch); each job was placed once (its task
appends its PID to a file named after its allocation: a second placement
shows as a second file; a second line must be one of the allocation's
counted restarts); a new leader placed work within 5 s of the kill;
no node was ever seen unhealthy (the new leader re-arms heartbeat deadlines).
"""

from __future__ import annotations

import queue
import threading
import time

import pytest

from orch.client import Client, ClientError, OrchError

from ha_cluster import HaCluster, batch_job, placed_more_than_once, service_job
from harness import GiveUp, wait_until

JOBS = 300
THREADS = 8
KILL_AFTER = 100
SERVICE_EVERY = 5
FAILOVER_LIMIT_S = 5.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


class Burst:
    """The client threads and what their submits answered."""

    def __init__(self, cluster: HaCluster):
        self.cluster = cluster
        self.todo: queue.Queue[str] = queue.Queue()
        for i in range(JOBS):
            self.todo.put(f"{'svc' if i % SERVICE_EVERY == 0 else 'bat'}-{i:03d}")
        self.acked: set[str] = set()
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(THREADS)
        ]

    def body(self, job_id: str) -> dict:
        runs = self.cluster.pid_dir
        if job_id.startswith("svc"):
            return service_job(job_id, f"echo $$ >> {runs}/{job_id}.$ORCH_ALLOC_ID; exec sleep 600")
        return batch_job(job_id, f"echo $$ >> {runs}/{job_id}.$ORCH_ALLOC_ID")

    def _client(self, n: int) -> None:
        urls = self.cluster.urls[n % 3 :] + self.cluster.urls[: n % 3]
        with Client(",".join(urls), timeout=10) as client:
            while True:
                try:
                    job_id = self.todo.get_nowait()
                except queue.Empty:
                    return
                self._submit(client, job_id)

    def _submit(self, client: Client, job_id: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                client.jobs.submit(self.body(job_id))
            except (ClientError, OrchError) as exc:
                if getattr(exc, "status", 0) in (0, 503):  # unreachable, or no database
                    time.sleep(0.1)
                    continue
                with self.lock:
                    self.errors.append(f"{job_id}: {exc}")
                return
            with self.lock:
                self.acked.add(job_id)
            return
        with self.lock:
            self.errors.append(f"{job_id}: not acknowledged within 60 s")


class NodeWatch(threading.Thread):
    """Polls /nodes on live servers; remembers any node seen unhealthy."""

    def __init__(self, cluster: HaCluster):
        super().__init__(daemon=True)
        self.cluster, self.unhealthy, self.done = cluster, [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            try:
                nodes = self.cluster.get("/nodes").json()["nodes"]
            except Exception:  # noqa: BLE001 - a server going away mid-poll
                continue
            self.unhealthy += [(n["node_id"], time.time()) for n in nodes if not n["healthy"]]


@pytest.fixture
def ha(tmp_path, postgres_url, pyz):
    cluster = HaCluster(tmp_path, postgres_url, servers=3, node_ttl=6.0, lease=3.0)
    yield cluster
    cluster.stop_all()


def test_leader_killed_mid_burst(ha: HaCluster):
    ha.start_servers()
    for name in ("a", "b", "c"):
        ha.start_agent(name)
    old = ha.wait_leader()
    watch = NodeWatch(ha)
    watch.start()
    burst = Burst(ha)
    for t in burst.threads:
        t.start()
    wait_until(lambda: len(burst.acked) >= KILL_AFTER, 120, what=f"{KILL_AFTER} acks")
    killed_at = time.time()
    ha.servers[old].kill9()
    for t in burst.threads:
        t.join(timeout=240)
    assert not burst.errors, burst.errors[:5]
    assert len(burst.acked) == JOBS
    new = ha.wait_leader(other_than=old)

    def settled(job_id: str) -> bool:
        job = ha.job(job_id)
        want = "running" if job_id.startswith("svc") else "complete"
        if job is not None and job["status"] in ("failed", "dead"):
            events = [(a["client_status"], a["tasks"]) for a in job["allocations"]]
            raise GiveUp(f"{job_id} {job['status']}: {events}")
        return job is not None and job["status"] == want

    for job_id in sorted(burst.acked):
        wait_until(lambda j=job_id: settled(j), 120, what=f"{job_id} settled")
    watch.done.set()
    watch.join()

    allocs = [a for j in burst.acked for a in ha.job(j)["allocations"]]
    after = [a["create_time"] for a in allocs if a["create_time"] > killed_at]
    assert after, "no placement after the kill"
    failover = min(after) - killed_at
    print(f"\nfailover: new leader {new} placed its first allocation {failover:.2f}s after kill -9")
    assert failover <= FAILOVER_LIMIT_S

    twice = placed_more_than_once(ha, sorted(burst.acked))
    assert not twice, f"placed more than once: {list(twice.items())[:5]}"
    assert {p.name.split(".")[0] for p in ha.pid_dir.iterdir()} == burst.acked
    assert not watch.unhealthy, f"nodes seen unhealthy: {watch.unhealthy[:5]}"
