"""`orch dev --servers N`: which database, each server's port, the agents' list."""

import pytest

from orch.config import DevConfig
from orch.dev import postgres
from orch.dev.launcher import DevCluster, Supervisor, agent_argv, server_argv, start_database


def test_one_server_without_database_stays_on_sqlite(tmp_path):
    assert start_database(DevConfig(servers=1), str(tmp_path)) == (None, None)


def test_a_given_database_is_used_as_is(tmp_path):
    url = "postgresql://orch@db:5432/orch"
    assert start_database(DevConfig(servers=3, database=url), str(tmp_path)) == (url, None)


def test_several_servers_without_postgres_say_what_to_install(tmp_path, monkeypatch):
    def missing():
        raise postgres.PostgresUnavailable(postgres.INSTALL_HINT)

    monkeypatch.setattr(postgres, "find_bindir", missing)
    with pytest.raises(SystemExit) as exc:
        start_database(DevConfig(servers=3), str(tmp_path))
    assert "--servers 3 needs PostgreSQL" in str(exc.value)
    assert "apt-get install postgresql" in str(exc.value)


def test_each_server_gets_a_port_and_the_agents_all_urls(tmp_path):
    config = DevConfig(servers=3, agents=2)
    cluster = DevCluster(config, Supervisor([], {}), str(tmp_path), 4646, database="postgresql://x")
    assert len(set(cluster.ports)) == 3 and cluster.ports[0] == 4646
    assert cluster.url == ",".join(f"http://127.0.0.1:{p}" for p in cluster.ports)
    argv = agent_argv(config, cluster.url, 0, str(tmp_path / "a"))
    assert argv[argv.index("--server") + 1] == cluster.url
    argv = server_argv(config, 4646, str(tmp_path / "s"), "postgresql://x")
    assert argv[argv.index("--database") + 1] == "postgresql://x"
    assert "--database" not in server_argv(config, 4646, str(tmp_path / "s"))
