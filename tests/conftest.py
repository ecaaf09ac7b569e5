"""Markers from where a test lives and what it uses, so `-m` can select whole layers.

tests/integration is `integration`, tests/bench `bench`; a test that uses the
`engine` fixture (a Docker client) is `docker`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MARK_BY_DIR = {HERE / "integration": "integration", HERE / "bench": "bench"}


def pytest_collection_modifyitems(items) -> None:
    """Add the markers a test's directory and fixtures imply."""
    for item in items:
        path = Path(str(item.fspath)).resolve()
        for directory, mark in MARK_BY_DIR.items():
            if directory in path.parents:
                item.add_marker(getattr(pytest.mark, mark))
        if "engine" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def postgres_programs() -> str:
    """PostgreSQL's server programs' directory; the test skips, saying what to
    install, on a machine without them (as the Docker and browser tests do)."""
    from orch.dev.postgres import PostgresUnavailable, find_bindir

    try:
        return find_bindir()
    except PostgresUnavailable as exc:
        pytest.skip(f"{exc} (.ci/install-postgres.sh installs them)")


@pytest.fixture(scope="session")
def postgres_server(postgres_programs):
    """One throwaway PostgreSQL for the test session (initdb, free port, unprivileged)."""
    from orch.dev.postgres import ThrowawayPostgres

    server = ThrowawayPostgres()
    server.start()
    yield server
    server.stop()


_db_serial = iter(range(1, 1_000_000))


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's PostgreSQL; dropped afterwards."""
    import psycopg

    name = f"t{next(_db_serial)}"
    admin = postgres_server.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
