"""The CLI's argument parsing, environment fallbacks and logging format."""

import pytest
from cli_helpers import parse

from orch import __main__ as entry
from orch import __version__
from orch.config import DEFAULT_ADDRESS, AgentConfig, ServerConfig

pytestmark = pytest.mark.usefixtures("clean_env")


def test_server_defaults_come_from_server_config():
    args = parse("server")
    config = entry.server_config(args)
    assert config == ServerConfig(insecure=False)
    assert args.role == "server" and args.handler is entry.cmd_server


def test_server_flags():
    args = parse(
        "server",
        "--bind",
        "0.0.0.0",
        "--port",
        "5000",
        "--data-dir",
        "/d",
        "--node-ttl",
        "2.5",
        "--token",
        "s3cret",
    )
    config = entry.server_config(args)
    assert (config.bind, config.port, config.data_dir, config.node_ttl, config.token) == (
        "0.0.0.0",
        5000,
        "/d",
        2.5,
        "s3cret",
    )


def test_agent_flags_and_repeated_meta():
    args = parse(
        "agent",
        "--server",
        "http://10.0.0.1:4646/",
        "--port",
        "0",
        "--advertise",
        "http://10.0.0.2:9000",
        "--region",
        "eu",
        "--node-id",
        "n1",
        "--meta",
        "rack=r1",
        "--meta",
        "gpu=yes",
        "--meta",
        "note=a=b",
        "--data-dir",
        "/a",
        "--heartbeat-interval",
        "0.5",
        "--token",
        "t",
    )
    config = entry.agent_config(args)
    assert config.server == "http://10.0.0.1:4646"
    assert config.meta == {"rack": "r1", "gpu": "yes", "note": "a=b"}
    assert (config.port, config.advertise, config.region, config.node_id) == (
        0,
        "http://10.0.0.2:9000",
        "eu",
        "n1",
    )
    assert (config.data_dir, config.heartbeat_interval, config.token) == ("/a", 0.5, "t")
    assert args.role == "agent"


def test_agent_defaults_come_from_agent_config():
    assert entry.agent_config(parse("agent")) == AgentConfig(meta={})


def test_dev_flags():
    args = parse(
        "dev",
        "--agents",
        "5",
        "--port",
        "0",
        "--node-ttl",
        "3",
        "--heartbeat-interval",
        "0.2",
        "--data-dir",
        "/x",
        "--token",
        "t",
    )
    config = entry.dev_config(args)
    assert (
        config.agents,
        config.port,
        config.node_ttl,
        config.heartbeat_interval,
        config.data_dir,
        config.token,
        config.log_level,
    ) == (5, 0, 3.0, 0.2, "/x", "t", "INFO")
    assert entry.dev_config(parse("dev")).data_dir is None


@pytest.mark.parametrize(
    "argv, bad",
    [
        (["agent", "--meta", "novalue"], "KEY=VALUE"),
        (["agent", "--server", "10.0.0.1:4646"], "URL"),
        (["server", "--port", "70000"], "range"),
        (["server", "--node-ttl", "0"], "positive"),
        (["dev", "--agents", "0"], "at least 1"),
        (["--log-level", "loud", "version"], "one of"),
        (["job"], "required"),
        (["alloc", "logs"], "required"),
    ],
)
def test_bad_arguments_exit_2_with_a_reason(argv, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert bad in capsys.readouterr().err


def test_client_commands():
    args = parse("job", "run", "job.json", "--detach", "--address", "http://h:1", "--token", "t")
    assert (args.file, args.detach, args.address, args.token, args.role) == (
        "job.json",
        True,
        "http://h:1",
        "t",
        "client",
    )
    assert parse("job", "run", "j.json").detach is False
    assert parse("job", "status").id is None
    status = parse("job", "status", "web", "--json")
    assert (status.id, status.json) == ("web", True)
    for verb in ("stop", "restart", "delete"):
        args = parse("job", verb, "web")
        assert args.id == "web" and args.handler.__name__ == f"job_{verb}"
    assert parse("node", "status", "--json").json is True
    assert parse("alloc", "status", "1a2b").id == "1a2b"
    logs = parse("alloc", "logs", "1a2b", "main", "--stderr", "-f")
    assert (logs.id, logs.task, logs.stderr, logs.follow) == ("1a2b", "main", True, True)
    assert parse("alloc", "logs", "1a2b", "main").follow is False


def test_address_and_token_fall_back_to_environment(monkeypatch):
    assert parse("node", "status").address == DEFAULT_ADDRESS
    monkeypatch.setenv("ORCH_ADDR", "http://10.1.1.1:4646")
    monkeypatch.setenv("ORCH_TOKEN", "from-env")
    args = parse("node", "status")
    assert (args.address, args.token) == ("http://10.1.1.1:4646", "from-env")
    assert parse("node", "status", "--address", "http://x:1").address == "http://x:1"


def test_config_flags_fall_back_to_environment(monkeypatch):
    monkeypatch.setenv("ORCH_PORT", "7000")
    monkeypatch.setenv("ORCH_NODE_TTL", "4")
    monkeypatch.setenv("ORCH_HEARTBEAT_INTERVAL", "0.25")
    assert entry.server_config(parse("server")).port == 7000
    assert entry.server_config(parse("server")).node_ttl == 4.0
    assert entry.agent_config(parse("agent")).heartbeat_interval == 0.25


def test_meta_falls_back_to_orch_meta_too(monkeypatch, capsys):
    monkeypatch.setenv("ORCH_META", "rack=r1, zone=a")
    assert entry.agent_config(parse("agent")).meta == {"rack": "r1", "zone": "a"}
    assert entry.agent_config(parse("agent", "--meta", "rack=r2", "--meta", "x=1")).meta == {
        "rack": "r2",
        "zone": "a",
        "x": "1",
    }
    monkeypatch.setenv("ORCH_META", "rack")
    with pytest.raises(SystemExit) as exc:
        parse("agent")
    assert exc.value.code == "orch: ORCH_META: expected KEY=VALUE, got 'rack'"


def test_a_bad_number_in_the_environment_is_one_line(monkeypatch):
    monkeypatch.setenv("ORCH_PORT", "http")
    with pytest.raises(SystemExit) as exc:
        entry.main(["version"])
    assert exc.value.code == "orch: ORCH_PORT: not a number: 'http'"


def test_log_level_on_top_level_subcommand_or_environment(monkeypatch):
    assert parse("version").log_level == "INFO"
    assert parse("--log-level", "debug", "server").log_level == "DEBUG"
    assert parse("server", "--log-level", "warning").log_level == "WARNING"
    assert parse("--log-level", "debug", "server", "--log-level", "error").log_level == "ERROR"
    monkeypatch.setenv("ORCH_LOG_LEVEL", "debug")
    assert parse("job", "status").log_level == "DEBUG"


def test_version_and_help(capsys):
    assert entry.main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"orch {__version__}"
    with pytest.raises(SystemExit) as exc:
        entry.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("server", "agent", "dev", "job", "node", "alloc", "version"):
        assert command in out


def test_logging_format_names_role_and_pid():
    import logging
    import os

    entry.configure_logging("agent", "DEBUG")
    root = logging.getLogger()
    record = logging.LogRecord("orch.x", logging.INFO, __file__, 1, "hello %s", ("w",), None)
    line = root.handlers[0].format(record)
    assert f"INFO [agent pid={os.getpid()}] orch.x: hello w" in line
    assert root.level == logging.DEBUG


def test_server_database_flag_environment_and_bad_url(monkeypatch, capsys):
    url = "postgresql://orch@db.internal:5432/orch"
    assert entry.server_config(parse("server", "--database", url)).database == url
    assert entry.server_config(parse("server")).database is None
    monkeypatch.setenv("ORCH_DATABASE", url)
    assert entry.server_config(parse("server")).database == url
    with pytest.raises(SystemExit) as exc:
        parse("server", "--database", "mysql://db/orch")
    assert exc.value.code == 2 and "not a postgresql:// URL" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["server", "--port", "5000", "--data-dir", "/d", "--node-ttl", "2.5"],
        ["--log-level", "DEBUG", "agent", "--server", "http://h:1", "--meta", "a=b", "--port", "0"],
        ["dev", "--agents", "2", "--log-level", "WARNING"],
    ],
)
def test_a_role_parses_the_same_without_the_client_commands(argv):
    assert entry.first_command(argv) in entry.ROLES
    lean = entry.build_parser(roles_only=True).parse_args(argv)
    assert vars(lean) == vars(entry.build_parser().parse_args(argv))


def test_first_command_skips_options_and_the_log_level_value():
    assert entry.first_command(["--log-level", "agent", "server"]) == "server"
    assert entry.first_command(["-h"]) is None
    assert entry.first_command(["job", "run", "x.json"]) == "job"
