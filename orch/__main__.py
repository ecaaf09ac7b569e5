"""The `orch` command: server, agent, dev cluster and client subcommands.

Over 400 lines on purpose: it is the flag table of every role; each add_* is one role's flags.

This is the only module that configures logging. The flags of server, agent
and dev, ``--address``, ``--token`` and ``--log-level`` fall back to an
``ORCH_*`` environment variable (``orch.config.env``); ``ORCH_META`` gives
pairs that ``--meta`` flags add to.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from orch import __version__
from orch.config import (
    DEFAULT_ADDRESS,
    AgentConfig,
    DevConfig,
    ServerConfig,
    clean_prefix,
    env,
)

LOG_FORMAT = "%(asctime)s %(levelname)s [{role} pid=%(process)d] %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LISTEN_ERRNOS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL)


# ---- argument types --------------------------------------------------------


def lazy(target: str):
    """A handler imported only when its command runs: the server, agent and
    dev launcher then never load the client's modules (start-up time, RSS)."""
    module, _, name = target.partition(":")

    def handler(args):
        return getattr(importlib.import_module(module), name)(args)

    handler.__name__ = handler.__qualname__ = name
    return handler


def log_level(value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_LEVELS)}")
    return level


def port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {number}")
    return number


def ui_prefix(value: str) -> str:
    try:
        return clean_prefix(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def port_range(value: str) -> str:
    """An agent's --port-range, "LOW-HIGH", checked as the server checks it."""
    from orch.errors import ValidationError
    from orch.validation.bodies import port_range as parse

    try:
        low, high = parse(value, "--port-range")
    except ValidationError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return f"{low}-{high}"


def seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return number


def duration(value: str) -> float:
    """A duration such as "90s", "1m30s" or a number of seconds, at least 0."""
    from orch.errors import ValidationError
    from orch.validation.fields import duration as parse

    try:
        raw: str | float = float(value)
    except ValueError:
        raw = value
    try:
        seconds = parse(raw, "duration")
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.message.removeprefix("duration: ")) from None
    if seconds < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return seconds


def non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0: {number}")
    return number


def version_number(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a version number: {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {number}")
    return number


def count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {number}")
    return number


def url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    return value.rstrip("/")


def urls(value: str) -> str:
    """One server URL or several, comma-separated (``URL1,URL2,URL3``)."""
    from orch.transport import server_list

    try:
        return ",".join(server_list(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def database_url(value: str) -> str:
    if value and not value.startswith(("postgresql://", "postgres://")):
        raise argparse.ArgumentTypeError(f"not a postgresql:// URL: {value!r}")
    return value


def datacenter(value: str) -> str:
    """A name job files can match: glob characters would make it unmatchable alone."""
    if not value or len(value) > 128 or not value.isprintable() or any(c in value for c in " *?["):
        raise argparse.ArgumentTypeError(
            f"must be 1-128 printable characters without spaces or * ? [: {value!r}"
        )
    return value


def meta_pair(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key.strip(), val


def env_meta() -> list[tuple[str, str]]:
    """ORCH_META: ``KEY=VALUE`` pairs separated by commas (``rack=r1,zone=a``)."""
    raw = env("META", "")
    try:
        return [meta_pair(item.strip()) for item in raw.split(",") if item.strip()]
    except argparse.ArgumentTypeError as exc:
        sys.exit(f"orch: ORCH_META: {exc}")


# ---- parser ----------------------------------------------------------------


ROLES = ("server", "agent", "dev")  # the long-running commands


def first_command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is neither an option
    nor the top-level ``--log-level``'s value (build/pyz_main.py has a copy)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(roles_only: bool = False) -> argparse.ArgumentParser:
    """The whole command tree; defaults are read from the environment now.

    ``roles_only``: server, agent, dev and version alone. The client commands
    are three quarters of the tree's ~15 ms, paid by every server and agent
    started; a role's own parse does not depend on them."""
    parser = argparse.ArgumentParser(
        prog="orch", description="orch: a small Nomad-like cluster orchestrator."
    )
    parser.add_argument(
        "--log-level",
        type=log_level,
        default=env("LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR (ORCH_LOG_LEVEL; default %(default)s)",
    )
    # Repeated on every subcommand so `orch server --log-level DEBUG` works too;
    # SUPPRESS keeps the top-level value when the subcommand does not set it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level", type=log_level, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    cmd = sub.add_parser("version", parents=[common], help="print the version")
    cmd.set_defaults(handler=cmd_version, role="orch")
    add_server(sub, common)
    add_agent(sub, common)
    add_dev(sub, common)
    if not roles_only:
        add_client_commands(sub, common)
    return parser


def add_server(sub, common) -> None:
    d = ServerConfig
    cmd = sub.add_parser("server", parents=[common], help="run the control plane")
    cmd.add_argument(
        "--bind", default=env("BIND", d.bind), help="address to listen on (default %(default)s)"
    )
    cmd.add_argument(
        "--port",
        type=port,
        default=env("PORT", d.port),
        help="port to listen on (default %(default)s)",
    )
    cmd.add_argument(
        "--data-dir",
        default=env("DATA_DIR", d.data_dir),
        help="state directory (default %(default)s)",
    )
    cmd.add_argument(
        "--database",
        type=database_url,
        default=env("DATABASE", ""),
        help="postgresql://user@host:port/db to keep the state in PostgreSQL, shared by "
        "several servers (ORCH_DATABASE; default: SQLite in --data-dir)",
    )
    cmd.add_argument(
        "--node-ttl",
        type=seconds,
        default=env("NODE_TTL", d.node_ttl),
        help="seconds without heartbeat before a node is lost (default %(default)s)",
    )
    cmd.add_argument(
        "--token",
        default=env("TOKEN", d.token),
        help="bearer token required on the API (ORCH_TOKEN)",
    )
    cmd.add_argument(
        "--insecure",
        action="store_true",
        default=env("INSECURE", d.insecure),
        help="allow a non-loopback --bind without --token (ORCH_INSECURE)",
    )
    cmd.add_argument(
        "--job-versions",
        type=count,
        default=env("JOB_VERSIONS", d.job_versions),
        help="versions kept per job (ORCH_JOB_VERSIONS; default %(default)s)",
    )
    cmd.add_argument(
        "--ui-max-streams",
        type=count,
        default=env("UI_MAX_STREAMS", d.ui_max_streams),
        help="UI event and log streams open at once (ORCH_UI_MAX_STREAMS; default %(default)s)",
    )
    cmd.add_argument(
        "--ui-prefix",
        type=ui_prefix,
        default=env("UI_PREFIX", d.ui_prefix),
        help="path prefix a reverse proxy serves orch under, e.g. /orch (ORCH_UI_PREFIX)",
    )
    cmd.add_argument(
        "--advertise",
        type=url,
        default=env("ADVERTISE", d.advertise),
        help="URL agents reach this server at when it leads (default http://<bind>:<port>)",
    )
    cmd.add_argument(
        "--lease",
        type=seconds,
        default=env("LEASE", d.lease),
        help="the leader's lease on PostgreSQL, renewed every third of it (default %(default)s)",
    )
    cmd.set_defaults(handler=cmd_server, role="server")


def add_agent(sub, common) -> None:
    d = AgentConfig
    cmd = sub.add_parser("agent", parents=[common], help="run a node agent")
    cmd.add_argument(
        "--server",
        type=urls,
        default=env("SERVER", d.server),
        help="server URL, or several: URL1,URL2,URL3 (ORCH_SERVER; default %(default)s)",
    )
    cmd.add_argument(
        "--bind", default=env("BIND", d.bind), help="address to listen on (default %(default)s)"
    )
    cmd.add_argument(
        "--port",
        type=port,
        default=env("PORT", d.port),
        help="port to listen on; 0 picks a free one (default %(default)s)",
    )
    cmd.add_argument(
        "--advertise",
        type=url,
        default=env("ADVERTISE", d.advertise),
        help="URL the server uses to reach this agent",
    )
    cmd.add_argument(
        "--region",
        default=env("REGION", d.region),
        help="region of this node (default %(default)s)",
    )
    cmd.add_argument(
        "--datacenter",
        type=datacenter,
        default=env("DATACENTER", d.datacenter),
        help="datacenter of this node, which job files' datacenters name (default %(default)s)",
    )
    cmd.add_argument(
        "--node-id",
        default=env("NODE_ID", d.node_id),
        help="node id (default: kept in the data dir)",
    )
    # --meta adds to (and overrides keys of) ORCH_META's pairs.
    cmd.add_argument(
        "--meta",
        type=meta_pair,
        action="append",
        default=env_meta(),
        metavar="KEY=VALUE",
        help="node metadata for constraints (repeatable; ORCH_META=k=v,k2=v2)",
    )
    cmd.add_argument(
        "--data-dir",
        default=env("DATA_DIR", d.data_dir),
        help="state directory (default %(default)s)",
    )
    cmd.add_argument(
        "--heartbeat-interval",
        type=seconds,
        default=env("HEARTBEAT_INTERVAL", d.heartbeat_interval),
        help="seconds between heartbeats (default %(default)s)",
    )
    cmd.add_argument(
        "--port-range",
        type=port_range,
        default=env("PORT_RANGE", d.port_range),
        metavar="LOW-HIGH",
        help="host ports for dynamic task ports (default %(default)s)",
    )
    cmd.add_argument(
        "--token",
        default=env("TOKEN", d.token),
        help="bearer token for the server and this agent's API (ORCH_TOKEN)",
    )
    cmd.add_argument(
        "--task-user",
        default=env("TASK_USER", d.task_user),
        help="run exec tasks as this user (the agent runs as root)",
    )
    cmd.add_argument(
        "--gc-keep",
        type=non_negative,
        default=env("GC_KEEP", d.gc_keep),
        help="finished allocations whose files (logs) are kept (default %(default)s)",
    )
    cmd.add_argument(
        "--insecure",
        action="store_true",
        default=env("INSECURE", d.insecure),
        help="allow a non-loopback --bind without --token (ORCH_INSECURE); "
        "certificates are still checked",
    )
    cmd.add_argument(
        "--tls-skip-verify",
        action="store_true",
        default=env("TLS_SKIP_VERIFY", d.tls_skip_verify),
        help="DANGEROUS: do not check the https:// server's certificate (ORCH_TLS_SKIP_VERIFY)",
    )
    cmd.set_defaults(handler=cmd_agent, role="agent")


def add_dev(sub, common) -> None:
    d = DevConfig
    cmd = sub.add_parser("dev", parents=[common], help="run a server and N agents locally")
    cmd.add_argument(
        "--agents",
        type=count,
        default=env("AGENTS", d.agents),
        help="number of agents (default %(default)s)",
    )
    cmd.add_argument(
        "--port", type=port, default=env("PORT", d.port), help="server port (default %(default)s)"
    )
    cmd.add_argument(
        "--bind", default=env("BIND", d.bind), help="address to listen on (default %(default)s)"
    )
    cmd.add_argument(
        "--data-dir",
        default=env("DATA_DIR", d.data_dir),
        help="keep state here (default: a temporary dir removed at exit)",
    )
    cmd.add_argument(
        "--node-ttl",
        type=seconds,
        default=env("NODE_TTL", d.node_ttl),
        help="server node TTL (default %(default)s)",
    )
    cmd.add_argument(
        "--heartbeat-interval",
        type=seconds,
        default=env("HEARTBEAT_INTERVAL", d.heartbeat_interval),
        help="agent heartbeat interval (default %(default)s)",
    )
    cmd.add_argument(
        "--token", default=env("TOKEN", d.token), help="bearer token for the cluster (ORCH_TOKEN)"
    )
    cmd.add_argument(
        "--ui-prefix",
        type=ui_prefix,
        default=env("UI_PREFIX", d.ui_prefix),
        help="the server's --ui-prefix (ORCH_UI_PREFIX)",
    )
    cmd.add_argument(
        "--servers",
        type=count,
        default=d.servers,
        help="servers sharing one PostgreSQL (default %(default)s: one, on SQLite); "
        "without --database dev mode starts a throwaway PostgreSQL",
    )
    cmd.add_argument(
        "--database",
        type=database_url,
        default=env("DATABASE", ""),
        help="postgresql://... the servers share (ORCH_DATABASE; default: SQLite for one "
        "server, a throwaway PostgreSQL for several)",
    )
    cmd.set_defaults(handler=cmd_dev, role="dev")


def add_client_commands(sub, common) -> None:

    client = argparse.ArgumentParser(add_help=False, parents=[common])
    client.add_argument(
        "--address",
        type=urls,
        default=env("ADDR", DEFAULT_ADDRESS),
        help="server URL, or several: URL1,URL2 (ORCH_ADDR; default %(default)s)",
    )
    client.add_argument("--token", default=env("TOKEN", None), help="bearer token (ORCH_TOKEN)")
    client.set_defaults(role="client")
    reads = argparse.ArgumentParser(add_help=False, parents=[client])
    reads.add_argument("--json", action="store_true", help="print the server's JSON")
    add_job_commands(sub, client, reads)

    node = sub.add_parser("node", help="inspect nodes").add_subparsers(
        dest="node_command", metavar="COMMAND", required=True
    )
    node.add_parser("status", parents=[reads], help="list nodes").set_defaults(
        handler=lazy("orch.cli.commands:node_status")
    )
    add_node_commands(node, reads)

    alloc = sub.add_parser("alloc", help="inspect allocations").add_subparsers(
        dest="alloc_command", metavar="COMMAND", required=True
    )
    cmd = alloc.add_parser("status", parents=[reads], help="show an allocation and its tasks")
    cmd.add_argument("id", metavar="ID", help="allocation id or a unique prefix")
    cmd.set_defaults(handler=lazy("orch.cli.commands:alloc_status_cmd"))
    cmd = alloc.add_parser("logs", parents=[client], help="print a task's log")
    cmd.add_argument("id", metavar="ID", help="allocation id or a unique prefix")
    cmd.add_argument(
        "task",
        metavar="TASK",
        nargs="?",
        help="the task; may be left out when the allocation has only one",
    )
    cmd.add_argument("--stderr", action="store_true", help="the task's stderr instead of stdout")
    cmd.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the allocation ends"
    )
    cmd.set_defaults(handler=lazy("orch.cli.commands:alloc_logs"))
    add_service_commands(sub, reads)


def add_service_commands(sub, reads) -> None:
    """`orch service list|info`: the built-in service catalog."""
    service = sub.add_parser("service", help="discover services").add_subparsers(
        dest="service_command", metavar="COMMAND", required=True
    )
    cmd = service.add_parser("list", parents=[reads], help="list services and instance counts")
    cmd.set_defaults(handler=lazy("orch.cli.service:service_list"))
    cmd = service.add_parser("info", parents=[reads], help="list a service's instances")
    cmd.add_argument("name", metavar="NAME", help="the service name")
    cmd.add_argument("--healthy", action="store_true", help="only the healthy instances")
    cmd.set_defaults(handler=lazy("orch.cli.service:service_info"))


def add_node_commands(node, reads) -> None:
    cmd = node.add_parser(
        "drain", parents=[reads], help="move a node's allocations off it, leaving it ineligible"
    )
    cmd.add_argument("id", metavar="ID", help="node id or a unique prefix")
    cmd.add_argument(
        "--deadline",
        type=duration,
        default=None,
        help='time allowed before what is left is stopped, e.g. "1m" (default 1h; 0: at once)',
    )
    cmd.add_argument("--cancel", action="store_true", help="end the drain; the node is eligible")
    cmd.add_argument(
        "--ignore-system", action="store_true", help="leave system jobs' allocations running"
    )
    cmd.set_defaults(handler=lazy("orch.cli.node:node_drain"))
    cmd = node.add_parser(
        "eligibility", parents=[reads], help="allow or refuse new placements on a node"
    )
    cmd.add_argument("id", metavar="ID", help="node id or a unique prefix")
    which = cmd.add_mutually_exclusive_group(required=True)
    which.add_argument("--enable", action="store_true", help="new placements allowed")
    which.add_argument("--disable", action="store_true", help="no new placements")
    cmd.set_defaults(handler=lazy("orch.cli.node:node_eligibility"))


JOB_FILE_HELP = "job file: orch JSON, Nomad HCL (.hcl, .nomad) or Nomad job JSON; - for stdin"


def add_job_commands(sub, client, reads) -> None:

    job = sub.add_parser("job", help="submit and manage jobs").add_subparsers(
        dest="job_command", metavar="COMMAND", required=True
    )
    cmd = job.add_parser("run", parents=[client], help="submit a job file and follow its placement")
    cmd.add_argument("file", metavar="FILE", help=JOB_FILE_HELP)
    cmd.add_argument("--detach", action="store_true", help="return once submitted")
    cmd.add_argument(
        "--timeout",
        type=seconds,
        default=120.0,
        help="give up following after this many seconds (default %(default)s)",
    )
    cmd.set_defaults(handler=lazy("orch.cli.job:job_run"))
    cmd = job.add_parser(
        "plan", parents=[reads], help="dry run: what `job run FILE` would change; changes nothing"
    )
    cmd.add_argument("file", metavar="FILE", help=JOB_FILE_HELP)
    cmd.set_defaults(handler=lazy("orch.cli.job:job_plan"))
    cmd = job.add_parser(
        "convert", help="print the orch JSON job a Nomad job file (HCL or JSON) translates to"
    )
    cmd.add_argument("file", metavar="FILE", help=JOB_FILE_HELP)
    cmd.set_defaults(handler=lazy("orch.cli.job:job_convert"), role="client")
    cmd = job.add_parser("inspect", parents=[reads], help="print a job's stored spec as JSON")
    cmd.add_argument("id", metavar="ID")
    cmd.set_defaults(handler=lazy("orch.cli.job:job_inspect"))
    cmd = job.add_parser("status", parents=[reads], help="list jobs, or show one")
    cmd.add_argument("id", metavar="ID", nargs="?")
    cmd.set_defaults(handler=lazy("orch.cli.job:job_status"))
    for name, handler, text in (
        ("stop", lazy("orch.cli.job:job_stop"), "stop a job's allocations"),
        ("restart", lazy("orch.cli.job:job_restart"), "run a stopped job again"),
        ("delete", lazy("orch.cli.job:job_delete"), "delete a job and its allocations"),
    ):
        cmd = job.add_parser(name, parents=[client], help=text)
        cmd.add_argument("id", metavar="ID")
        cmd.set_defaults(handler=handler)
    cmd = job.add_parser("history", parents=[reads], help="a job's versions and their diffs")
    cmd.add_argument("id", metavar="ID")
    cmd.set_defaults(handler=lazy("orch.cli.history:job_history"))
    cmd = job.add_parser("revert", parents=[client], help="submit a job's earlier version again")
    cmd.add_argument("id", metavar="ID")
    cmd.add_argument("version", metavar="VERSION", type=version_number)
    cmd.set_defaults(handler=lazy("orch.cli.history:job_revert"))
    add_deployment_commands(sub, job, client, reads)
    add_launch_commands(job, client)


def add_deployment_commands(sub, job, client, reads) -> None:
    """`orch job promote|rollout` and `orch deployment status|fail`: rolling updates."""
    cmd = job.add_parser("promote", parents=[client], help="promote a deployment's canaries")
    cmd.add_argument("id", metavar="ID")
    cmd.set_defaults(handler=lazy("orch.cli.deployment:job_promote"))
    cmd = job.add_parser(
        "rollout", parents=[client], help="replace every allocation under the update rules"
    )
    cmd.add_argument("id", metavar="ID")
    cmd.add_argument("--detach", action="store_true", help="return once started")
    cmd.add_argument(
        "--timeout",
        type=seconds,
        default=600.0,
        help="give up following after this many seconds (default %(default)s)",
    )
    cmd.set_defaults(handler=lazy("orch.cli.deployment:job_rollout"))
    deployment = sub.add_parser("deployment", help="inspect rolling updates").add_subparsers(
        dest="deployment_command", metavar="COMMAND", required=True
    )
    cmd = deployment.add_parser(
        "status", parents=[reads], help="show a deployment (by its id or its job's id)"
    )
    cmd.add_argument("id", metavar="ID")
    cmd.set_defaults(handler=lazy("orch.cli.deployment:deployment_status"))
    cmd = deployment.add_parser("fail", parents=[client], help="fail a running deployment")
    cmd.add_argument("id", metavar="ID")
    cmd.set_defaults(handler=lazy("orch.cli.deployment:deployment_fail"))


def add_launch_commands(job, client) -> None:
    """`job dispatch` and `job periodic force`: children of parent jobs."""
    cmd = job.add_parser("dispatch", parents=[client], help="dispatch a parameterized job")
    cmd.add_argument("id", metavar="ID")
    # argparse cannot give an optional positional its value once options came
    # between (`ID -meta k=v FILE`): what follows ID is split by hand.
    cmd.add_argument(
        "rest", nargs=argparse.REMAINDER, metavar="[PAYLOAD]", help="payload file, or - for stdin"
    )
    cmd.add_argument(
        "-meta", "--meta", action="append", metavar="KEY=VALUE", help="dispatch meta (repeatable)"
    )
    cmd.set_defaults(handler=lazy("orch.cli.launch:job_dispatch"))
    periodic = job.add_parser("periodic", help="periodic jobs").add_subparsers(
        dest="periodic_command", metavar="COMMAND", required=True
    )
    cmd = periodic.add_parser("force", parents=[client], help="launch a periodic job's child now")
    cmd.add_argument("id", metavar="ID")
    cmd.set_defaults(handler=lazy("orch.cli.launch:job_periodic_force"))


# ---- configs and handlers --------------------------------------------------


def server_config(args) -> ServerConfig:
    return ServerConfig(
        bind=args.bind,
        port=args.port,
        data_dir=args.data_dir,
        database=args.database or None,
        node_ttl=args.node_ttl,
        token=args.token or None,
        insecure=args.insecure,
        job_versions=args.job_versions,
        ui_max_streams=args.ui_max_streams,
        ui_prefix=args.ui_prefix,
        advertise=args.advertise,
        lease=args.lease,
    )


def agent_config(args) -> AgentConfig:
    return AgentConfig(
        server=args.server,
        bind=args.bind,
        port=args.port,
        advertise=args.advertise,
        region=args.region,
        datacenter=args.datacenter,
        node_id=args.node_id or None,
        meta=dict(args.meta),
        data_dir=args.data_dir,
        heartbeat_interval=args.heartbeat_interval,
        token=args.token or None,
        task_user=args.task_user or None,
        gc_keep=args.gc_keep,
        port_range=args.port_range,
        insecure=args.insecure,
        tls_skip_verify=args.tls_skip_verify,
    )


def dev_config(args) -> DevConfig:
    return DevConfig(
        agents=args.agents,
        port=args.port,
        bind=args.bind,
        data_dir=args.data_dir or None,
        node_ttl=args.node_ttl,
        heartbeat_interval=args.heartbeat_interval,
        token=args.token or None,
        log_level=args.log_level,
        ui_prefix=args.ui_prefix,
        servers=args.servers,
        database=args.database or None,
    )


def cmd_version(args) -> int:
    print(f"orch {__version__}")
    return 0


def cmd_server(args) -> int:
    from orch.server.server import run

    return run(server_config(args))


def cmd_agent(args) -> int:
    from orch.agent.main import run

    return run(agent_config(args))


def cmd_dev(args) -> int:
    from orch.dev.launcher import run

    return run(dev_config(args))


def configure_logging(role: str, level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        stream=sys.stderr,
        format=LOG_FORMAT.format(role=role),
        force=True,
    )


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(roles_only=first_command(words) in ROLES)
    except ValueError as exc:  # an ORCH_* variable that is not a number
        sys.exit(f"orch: {exc}")
    args = parser.parse_args(words)
    configure_logging(args.role, args.log_level)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `orch job status | head`: the reader left; exit quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.errno not in LISTEN_ERRNOS or not hasattr(args, "port"):
            raise
        # A taken port is a usage error, not a crash: one line, no traceback.
        logging.getLogger("orch").error(
            "cannot listen on %s:%s: %s", args.bind, args.port, exc.strerror or exc
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
