"""Storage faults through the real server process: a corrupt or unreadable
state database stops the server with a clear message (the file untouched),
and a full disk answers 503 JSON without losing anything acknowledged."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest
import requests

from harness import Cluster, Proc, wait_until
from test_end_to_end import job_body, submit


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_server_expecting_refusal(cluster: Cluster, name: str) -> str:
    """Start the server; it must exit non-zero by itself. Returns its log."""
    proc = Proc(cluster.server_args(), cluster.tmp / f"{name}.log")
    try:
        rc = proc.popen.wait(timeout=30)
    finally:
        proc.cleanup()
    assert rc != 0, f"server started on a {name} database"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{cluster.url}/health", timeout=1)
    return proc.log()


@pytest.fixture
def cluster(tmp_path, pyz):
    c = Cluster(tmp_path)
    yield c
    c.stop_all()


def seeded_db(cluster: Cluster) -> Path:
    """A real state.db with a job in it, the server stopped cleanly."""
    cluster.start_server()
    submit(cluster, job_body("kept", "true"))
    assert cluster.server.terminate() == 0
    db = cluster.tmp / "server" / "state.db"
    assert db.stat().st_size > 0
    return db


def test_garbage_database_refuses_to_start_and_is_left_alone(cluster):
    db = seeded_db(cluster)
    db.write_bytes(b"this is not an sqlite database\n" * 300)
    before = digest(db)
    log = run_server_expecting_refusal(cluster, "garbage")
    assert "cannot open state database" in log and str(db) in log, log
    assert "refusing to start" in log, log
    assert digest(db) == before


def test_damaged_pages_refuse_to_start_and_are_left_alone(cluster):
    db = seeded_db(cluster)
    raw = bytearray(db.read_bytes())
    assert raw[:16] == b"SQLite format 3\x00" and len(raw) >= 3 * 4096
    # Keep the header (page 1) valid; smash every later page.
    for i in range(4096, len(raw)):
        raw[i] = (i * 131 + 7) & 0xFF
    db.write_bytes(bytes(raw))
    before = digest(db)
    log = run_server_expecting_refusal(cluster, "damaged")
    assert "cannot open state database" in log and "refusing to start" in log, log
    assert digest(db) == before


def test_unreadable_database_refuses_to_start(cluster):
    # Everything runs as root here, so permissions cannot make a file
    # unreadable; a directory where the file should be can.
    db = cluster.tmp / "server" / "state.db"
    db.mkdir(parents=True)
    (db / "keep").write_text("mine")
    log = run_server_expecting_refusal(cluster, "unreadable")
    assert "cannot open state database" in log and "refusing to start" in log, log
    assert (db / "keep").read_text() == "mine"


# ---- a full disk --------------------------------------------------------------

TMPFS_SIZE = 8 << 20


@pytest.fixture
def small_disk(tmp_path):
    """The server's data dir on an 8 MiB tmpfs, unmounted at teardown."""
    mnt = tmp_path / "server"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "orch-test-tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr}")
    try:
        yield mnt
    finally:
        # The server (and its open files) is gone by then: `cluster` is torn
        # down before this fixture. Lazy unmount as a last resort.
        for _ in range(50):
            if subprocess.run(["umount", str(mnt)]).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(mnt)])


def fill(path: Path) -> int:
    """Write to `path` until the disk is full; returns bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while written < TMPFS_SIZE * 2:
            try:
                written += f.write(chunk)
            except OSError:
                break
        # Top up the last partial block, byte by byte in small pieces.
        for size in (4096, 512, 1):
            while True:
                try:
                    written += f.write(b"\0" * size)
                except OSError:
                    break
    return written


def test_full_disk_answers_503_and_loses_nothing(small_disk, tmp_path, pyz):
    cluster = Cluster(tmp_path, node_ttl=3.0, heartbeat_interval=0.3)
    try:
        _full_disk_scenario(cluster, small_disk)
    finally:
        cluster.stop_all()


def _full_disk_scenario(cluster: Cluster, mnt: Path) -> None:
    cluster.start_server()
    # Agents' data dirs are off the small disk. "b" first: the service lands there.
    node_b = cluster.start_agent("b")
    submit(cluster, job_body("svc", cluster.pid_command("svc"), type_="service"))
    cluster.wait_job("svc", "running")
    cluster.start_agent("a")
    acked = ["svc"]
    for i in range(10):
        submit(cluster, job_body(f"before-{i}", "true"))
        acked.append(f"before-{i}")
    for job_id in acked[1:]:
        cluster.wait_job(job_id, "complete")
    # A service that keeps failing: its rescheduling evaluations (delayed, no
    # request behind them) reach the scheduler while the disk is full.
    submit(cluster, job_body("flappy", "sleep 0.3; exit 1", type_="service"))
    wait_until(
        lambda: any(a["status"] == "failed" for a in cluster.job("flappy")["allocations"]),
        timeout=20,
        what="flappy failed once",
    )

    filler = mnt / "filler"
    filled = fill(filler)
    assert filled > 0
    print(f"filled {filled} bytes")

    refused = None
    for i in range(2000):
        body = job_body(f"full-{i}", "true # " + "x" * 2000)
        resp = cluster.post("/jobs", body)
        if resp.status_code == 200:
            acked.append(f"full-{i}")  # a WAL page happened to be free
            continue
        refused = resp
        break
    assert refused is not None, "the disk never filled up"
    print(f"first refusal after {len(acked) - 11} more acknowledged submits")
    assert refused.status_code == 503, refused.text
    assert refused.headers["Content-Type"].startswith("application/json")
    error = refused.json()["error"]
    assert "full" in error, error  # the real cause, not a follow-up error
    refused_id = f"full-{i}"
    # The refused job was not half-stored.
    assert cluster.get(f"/jobs/{refused_id}").status_code == 404
    # Reads keep working while the disk is full, and the server stays up.
    assert cluster.get("/jobs").status_code == 200
    assert cluster.get("/health").status_code == 200
    for job_id in acked:
        assert cluster.get(f"/jobs/{job_id}").status_code == 200, job_id

    # A node lost while the disk is full: its verdict cannot be written yet.
    svc_alloc = cluster.live_allocs("svc")[0]
    assert svc_alloc["node_id"] == node_b
    cluster.agents["b"].kill9()
    # Node b's TTL runs out and its verdict hits the full disk, twice (the
    # first try and a retry): the server must live through both.
    failed = f"node expiry failed node={node_b}"
    wait_until(
        lambda: cluster.server.log().count(failed) >= 2,
        timeout=cluster.node_ttl + 20,
        what="two failed expiries of node b",
    )
    assert cluster.server.alive(), "server died on a full disk"
    assert cluster.node(node_b)["healthy"], "node b down though nothing was written"

    filler.unlink()
    # Once there is room: node b is declared down, the service replaced on a.
    wait_until(
        lambda: not cluster.node(node_b)["healthy"],
        timeout=15,
        what="node b down after the disk has room again",
    )
    wait_until(
        lambda: (
            cluster.get(f"/allocations/{svc_alloc['allocation_id']}").json()["status"] == "lost"
        ),
        timeout=5,
        what="svc allocation lost",
    )

    def replaced():
        live = cluster.live_allocs("svc")
        return len(live) == 1 and live[0]["node_id"] != node_b and live[0]["status"] == "running"

    wait_until(replaced, timeout=30, what="svc replaced on node a")
    assert cluster.job("flappy")["status"] != "dead"
    assert cluster.delete("/jobs/flappy").status_code == 200
    for i in range(5):
        submit(cluster, job_body(f"after-{i}", "true"))
        acked.append(f"after-{i}")
    for job_id in acked:
        assert cluster.get(f"/jobs/{job_id}").status_code == 200, job_id
    # The scheduler recovers too: every acknowledged job runs to completion
    # (the ones it could not place while the disk was full included).
    for job_id in acked:
        cluster.wait_job(job_id, "running" if job_id == "svc" else "complete", timeout=30)

    cluster.server.kill9()
    cluster.start_server()
    for job_id in acked:
        job = cluster.job(job_id)
        assert job["status"] == ("running" if job_id == "svc" else "complete"), job
    assert cluster.get(f"/jobs/{refused_id}").status_code == 404
    submit(cluster, job_body("after-restart", "true"))
    cluster.wait_job("after-restart", "complete")
