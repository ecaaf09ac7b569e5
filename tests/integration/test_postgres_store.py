"""orch.pyz servers on PostgreSQL: one store shared by two servers, schema checks, imports."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import requests

from tests.jobspec import exec_job

from harness import Cluster, clean_env, free_port, wait_until


def clusters(tmp: Path, **databases: str | None) -> list[Cluster]:
    """One Cluster per name, each in its own directory."""
    made = []
    for name, database in databases.items():
        (tmp / name).mkdir()
        made.append(Cluster(tmp / name, database=database))
    return made


def mapped_files(pid: int) -> str:
    """The shared objects a process has loaded (psycopg's binary part shows here)."""
    return Path(f"/proc/{pid}/maps").read_text()


def test_psycopg_is_loaded_only_by_a_server_on_postgresql(tmp_path, pyz, postgres_url):
    on_sqlite, on_postgres = clusters(tmp_path, sqlite=None, pg=postgres_url)
    try:
        on_sqlite.start_server()
        on_postgres.start_server()
        assert on_postgres.server is not None and on_sqlite.server is not None
        # psycopg's C part and the libpq it carries: loaded by the import.
        assert "psycopg_binary" in mapped_files(on_postgres.server.pid)
        assert "psycopg_binary" not in mapped_files(on_sqlite.server.pid)
        assert "libpq" not in mapped_files(on_sqlite.server.pid)
    finally:
        on_sqlite.stop_all()
        on_postgres.stop_all()


def run_server(pyz: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["server", "--port", str(free_port()), "--data-dir", str(tmp / "data"), *extra]
    return subprocess.run(
        [sys.executable, str(pyz), *args],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )  # fmt: skip


def test_a_database_newer_than_the_server_is_refused_on_both_engines(tmp_path, pyz, postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO schema_version VALUES (999)")
    done = run_server(pyz, tmp_path, "--database", postgres_url)
    assert done.returncode == 1, done.stderr
    assert "schema version 999, newer than this orch knows" in done.stderr
    (tmp_path / "data").mkdir()
    db = sqlite3.connect(tmp_path / "data" / "state.db")
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
    db.execute("INSERT INTO schema_version VALUES (999)")
    db.commit()
    db.close()
    done = run_server(pyz, tmp_path)
    assert done.returncode == 1, done.stderr
    assert "schema version 999, newer than this orch knows" in done.stderr


def test_two_servers_on_one_database_share_the_cluster(tmp_path, pyz, postgres_url):
    first, second = clusters(tmp_path, one=postgres_url, two=postgres_url)
    try:
        first.start_server()
        second.start_server()
        node_id = first.start_agent("a")
        # The node registered with the first server is known to the second.
        wait_until(lambda: second.node(node_id) is not None, 10, what="node on the second")
        body = exec_job("shared", "echo from the shared store", count=2)
        resp = second.post("/jobs", body)
        assert resp.status_code == 200, resp.text
        # The second server schedules; both answer with the same state.
        job = first.wait_job("shared", "complete")
        assert job["job_id"] == "shared"
        allocs = {a["allocation_id"] for a in job["allocations"]}
        assert len(allocs) == 2
        wait_until(
            lambda: second.job("shared")["status"] == "complete", 10, what="complete on both"
        )
        assert {a["allocation_id"] for a in second.job("shared")["allocations"]} == allocs
        alloc_id = sorted(allocs)[0]
        logs = requests.get(f"{second.url}/allocations/{alloc_id}/logs/t", timeout=10)
        assert logs.text == "from the shared store\n"
    finally:
        first.stop_all()
        second.stop_all()
