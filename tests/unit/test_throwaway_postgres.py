"""The throwaway PostgreSQL of dev mode and the tests: starts, serves, leaves nothing."""

from __future__ import annotations

import os

import psycopg
import pytest

from orch.dev.postgres import ThrowawayPostgres

# Skips, saying what to install, on a machine without PostgreSQL.
pytestmark = pytest.mark.usefixtures("postgres_programs")


def test_starts_as_unprivileged_user_and_cleans_up(tmp_path):
    server = ThrowawayPostgres()
    server.start()
    pid = server.proc.pid
    try:
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == "orch"
            running_as = conn.execute("SELECT current_setting('data_directory')").fetchone()[0]
            assert running_as == server.data_dir
        if os.geteuid() == 0:
            assert os.stat(f"/proc/{pid}").st_uid == server.user.pw_uid != 0
    finally:
        server.stop()
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert not os.path.exists(server.base_dir)


def test_fresh_database_per_test(postgres_url):
    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()[0]
        assert tables == 0
