"""`orch dev`: a server (or several) and N agents as separate local processes.

Each child is this same program (the zipapp, or ``python -m orch``) in its own
session, forked from the launcher where that is safe (orch/dev/zygote.py:
the interpreter and the agents' imports paid once), else exec'ed; a Ctrl-C in
the terminal reaches only the launcher, which then
stops the children in order: agents first, so that they stop their tasks while
the server still listens, then the server. A child that dies on its own takes
the rest down, as dramatiq's supervisor does.

With ``--servers 3`` (or ``--database``) the servers share one PostgreSQL:
the one given, else a throwaway instance started here (orch/dev/postgres.py)
and stopped last; the agents are given every server's URL.

Over 400 lines on purpose: starting, watching and stopping the children
(servers, PostgreSQL, agents) follow one ordering rule, kept in one file.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orch.config import DEFAULT_ADDRESS, DevConfig
from orch.datadir import lock_data_dir
from orch.dev import zygote
from orch.dev.leftovers import kill_tasks_left
from orch.errors import DataDirError

if TYPE_CHECKING:
    from orch.transport import HttpClient

POLL_INTERVAL = 0.02  # readiness polling
WAIT_CHANGE = 0.5  # a blocking query's longest wait for the nodes to change
WATCH_INTERVAL = 0.1  # child liveness polling once ready
STOP_GRACE = 10.0  # SIGTERM -> SIGKILL
SERVER_GRACE = 2.0  # the server's least time to stop after the agents
SLOW_START = 15.0  # say so if the nodes are not healthy by then
ZIP_END = b"PK\x05\x06"  # a zip's end-of-central-directory signature
ZIP_TAIL = 22 + 0xFFFF  # the record and the longest comment it may carry


def program(argv0: str | None = None, executable: str | None = None) -> list[str]:
    """How to run orch again: the zipapp we are running from, else ``-m orch``.

    The zipapp carries every package it needs, so its children run with
    ``-S``: no site-packages of the host, whose ``.pth`` hooks would run (and
    stay in memory) in every server and agent, or shadow our dependencies.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = executable or sys.executable
    if argv0 and os.path.isfile(argv0) and is_zip(argv0):
        return [executable, "-S", os.path.abspath(argv0)]
    return [executable, "-m", "orch"]


def is_zip(path: str) -> bool:
    """Whether ``path`` ends with a zip's end-of-central-directory record.

    What zipfile.is_zipfile looks for, without importing zipfile (and
    pathlib under it) into a launcher whose children are forked from it."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - ZIP_TAIL))
            return ZIP_END in f.read()
    except OSError:
        return False


def connect_host(bind: str) -> str:
    """The host a local client dials for a server bound to ``bind``."""
    if bind in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bind == "::":
        return "[::1]"
    return f"[{bind}]" if ":" in bind else bind


def free_port(bind: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((bind, 0))
        return sock.getsockname()[1]


def port_taken(bind: str, port: int) -> str | None:
    """Why the server could not listen on ``bind:port``, None if it could.

    Checked before any child starts: a server that failed on a taken port
    would leave its agents registering with whatever holds the port (another
    `orch dev`, say). SO_REUSEADDR as the server sets it, so a port in
    TIME_WAIT is not called taken.
    """
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind, port))
        except OSError as exc:
            return (exc.strerror or str(exc)).lower()
    return None


def server_argv(
    config: DevConfig, port: int, data_dir: str, database: str | None = None
) -> list[str]:
    return [
        "server",
        "--bind",
        config.bind,
        "--port",
        str(port),
        "--data-dir",
        data_dir,
        "--node-ttl",
        f"{config.node_ttl:g}",
        "--log-level",
        config.log_level,
        # ORCH_* variables are not passed on to the children: the flag is.
        *(["--ui-prefix", config.ui_prefix] if config.ui_prefix else []),
        *(["--database", database] if database else []),
    ]


def dev_port_range(index: int, agents: int, low: int = 20000, high: int = 32000) -> str:
    """Agent ``index``'s slice of the dynamic port range: all dev agents share
    one host, so two nodes must never hand out the same host port."""
    size = (high - low + 1) // max(agents, 1)
    start = low + index * size
    end = high if index == agents - 1 else start + size - 1
    return f"{start}-{end}"


def agent_argv(config: DevConfig, server_url: str, index: int, data_dir: str) -> list[str]:
    return [
        "agent",
        "--port-range",
        dev_port_range(index, config.agents),
        "--server",
        server_url,
        "--bind",
        config.bind,
        "--port",
        "0",
        "--data-dir",
        data_dir,
        "--heartbeat-interval",
        f"{config.heartbeat_interval:g}",
        "--meta",
        f"dev_index={index}",
        "--log-level",
        config.log_level,
    ]


def child_env(environ: dict, token: str | None) -> dict:
    """The launcher passes every setting as a flag; inherited ORCH_* variables
    would give all agents one node id or one advertised URL, so drop them.
    The token travels in the environment, where `ps` does not show it."""
    env = {k: v for k, v in environ.items() if not k.startswith("ORCH_") or k == "ORCH_INSECURE"}
    if token:
        env["ORCH_TOKEN"] = token
    return env


def fresh_healthy_nodes(nodes: list[dict], since: float) -> list[dict]:
    """Healthy nodes heard from since the launch: with a kept --data-dir the
    server also remembers last run's nodes until their TTL runs out."""
    return [
        n
        for n in nodes
        if n.get("healthy") and (not n.get("last_heartbeat") or n["last_heartbeat"] >= since)
    ]


def peek_exit(proc: subprocess.Popen | zygote.Forked) -> int | None:
    """The exit code (negative: killed by that signal) without reaping the child.

    An unreaped child keeps its pid, and so its process group id, from being
    reused: killing the group later can only reach our own processes.
    """
    if proc.returncode is not None:
        return proc.returncode
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return proc.poll()
    if info is None or info.si_pid == 0:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


@dataclass
class Child:
    name: str
    proc: subprocess.Popen | zygote.Forked

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def exit_code(self) -> int | None:
        return peek_exit(self.proc)


class Supervisor:
    """Owns the child processes: start, watch, stop in order, kill by group."""

    def __init__(
        self,
        base_argv: list[str],
        env: dict,
        *,
        fork: bool = False,
        now=time.monotonic,
        sleep=time.sleep,
    ):
        self.base_argv, self.env, self.fork = base_argv, env, fork
        self.now, self.sleep = now, sleep
        self.children: list[Child] = []
        self.signals = 0

    def on_signal(self, signum, frame) -> None:
        self.signals += 1

    def start(self, name: str, args: list[str]) -> Child:
        """``base_argv + args`` as a child: forked when asked and still safe."""
        proc: subprocess.Popen | zygote.Forked
        if self.fork and zygote.can_fork():
            proc = zygote.fork_child(self.base_argv, args, self.env)
        else:
            preexec = zygote.die_with_parent if sys.platform.startswith("linux") else None
            proc = subprocess.Popen(
                self.base_argv + args,
                env=self.env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=preexec,
            )
        child = Child(name, proc)
        self.children.append(child)
        return child

    def first_dead(self) -> Child | None:
        for child in self.children:
            if child.exit_code is not None:
                return child
        return None

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Agents first, then the server; SIGKILL whatever is left by the deadline.

        A signal that arrives meanwhile (a second Ctrl-C) cuts the waiting short.
        """
        deadline = self.now() + grace
        signals_before = self.signals
        agents = [c for c in self.children if not c.name.startswith("server")]
        servers = [c for c in self.children if c.name.startswith("server")]
        for group, until in ((agents, deadline), (servers, None)):
            for child in group:
                self._signal(child, signal.SIGTERM)
            # The server gets a moment of its own even when the agents were slow.
            until = until or max(deadline, self.now() + SERVER_GRACE)
            while any(c.exit_code is None for c in group):
                if self.now() >= until or self.signals > signals_before:
                    break
                self.sleep(POLL_INTERVAL)
        for child in self.children:
            self._kill_group(child)
        for child in self.children:
            child.proc.wait()

    @staticmethod
    def _signal(child: Child, signum: int) -> None:
        if child.exit_code is None:
            try:
                child.proc.send_signal(signum)
            except ProcessLookupError:
                pass

    @staticmethod
    def _kill_group(child: Child) -> None:
        """The child's session may hold processes it started; its group id is its pid."""
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class DevCluster:
    """One `orch dev` run: start, report readiness, watch, stop."""

    def __init__(
        self,
        config: DevConfig,
        supervisor: Supervisor,
        data_dir: str,
        port: int,
        out=None,
        *,
        database: str | None = None,
    ):
        self.config, self.sup, self.data_dir = config, supervisor, data_dir
        self.database = database
        host = connect_host(config.bind)
        self.ports = [port] + [free_port(config.bind) for _ in range(config.servers - 1)]
        self.urls = [f"http://{host}:{p}" for p in self.ports]
        self.url = ",".join(self.urls)
        self.port = port
        self.out = out or sys.stdout
        self._http: HttpClient | None = None  # made once the children are started
        self._mourned: set[str] = set()  # servers whose death was told (several servers)

    def say(self, line: str) -> None:
        print(f"orch dev: {line}", file=self.out, flush=True)

    def run(self) -> int:
        started, since = self.sup.now(), time.time() - 1.0
        if self.sup.fork:
            zygote.preload(zygote.SHARED_MODULES)
        servers = [
            self.sup.start(
                "server" if i == 0 else f"server {i + 1}",
                server_argv(
                    self.config,
                    port,
                    os.path.join(self.data_dir, "server" if i == 0 else f"server-{i + 1}"),
                    self.database,
                ),
            )
            for i, port in enumerate(self.ports)
        ]
        # Agents start beside the server, not after it: their start-up (imports,
        # fingerprinting) overlaps the server's, and they retry registering
        # within 50 ms of the server answering. Forked, they share one import
        # of their modules, made here while the server imports its own.
        if self.sup.fork:
            zygote.preload(zygote.AGENT_MODULES)
        for i in range(self.config.agents):
            self.sup.start(
                f"agent {i + 1}",
                agent_argv(self.config, self.url, i, os.path.join(self.data_dir, f"agent-{i + 1}")),
            )
        # The launcher's HTTP client is imported only now: the children's
        # start-up (interpreters, imports) overlaps it instead of waiting for it.
        self.http()
        if not self.wait_for_server():
            return self.finish()
        for url, server in zip(self.urls, servers, strict=True):
            self.say(f"server {url} (pid {server.pid})")
        if self.database:
            self.say(f"state in PostgreSQL {self.database}")
        if self.url != DEFAULT_ADDRESS:
            self.say(f"export ORCH_ADDR={self.url}")
        if not self.wait_for_nodes(started, since):
            return self.finish()
        self.say(f"{self.config.agents} nodes healthy in {self.sup.now() - started:.2f}s")
        self.say(f"data in {self.data_dir}; Ctrl-C stops the cluster and its tasks")
        while not self.sup.signals and not self.fatal_death():
            self.sup.sleep(WATCH_INTERVAL)
        return self.finish()

    def fatal_death(self) -> Child | None:
        """The first child whose death stops the cluster: any agent, or a
        server that was the last one alive. With several servers the others
        carry on (said once): losing one is what they are there for."""
        alive_servers = [
            c for c in self.sup.children if c.name.startswith("server") and c.exit_code is None
        ]
        for child in self.sup.children:
            if child.exit_code is None:
                continue
            if child.name.startswith("server") and alive_servers:
                if child.name not in self._mourned:
                    self._mourned.add(child.name)
                    self.say(
                        f"{child.name} (pid {child.pid}) exited with code {child.exit_code}; "
                        f"{len(alive_servers)} servers carry on"
                    )
                continue
            return child
        return None

    def interrupted(self) -> bool:
        return bool(self.sup.signals) or self.fatal_death() is not None

    def http(self) -> HttpClient:
        """The client for the server (orch.transport: requests would cost the
        launcher ~0.1 s of imports before its children start)."""
        if self._http is None:
            from orch.transport import HttpClient

            self._http = HttpClient(token=self.config.token, timeout=1.0)
        return self._http

    def wait_for_server(self) -> bool:
        from orch.transport import ERRORS

        while not self.interrupted():
            try:
                self.http().get(self.urls[0] + "/health", timeout=0.5)
                return True  # it answers, if not with 200: it is up
            except ERRORS:
                pass
            self.sup.sleep(POLL_INTERVAL)
        return False

    def healthy_nodes(self, since: float) -> list[dict]:
        """The fresh healthy nodes the server lists; none while it cannot say."""
        from orch.transport import ERRORS

        try:
            # Any server lists the nodes (followers read the shared state).
            resp = self.http().get(self.urls[0] + "/nodes", timeout=1.0)
            listed = resp.json().get("nodes", []) if resp.status_code == 200 else []
        except (*ERRORS, ValueError, AttributeError):
            return []
        return fresh_healthy_nodes(listed, since)

    def wait_for_nodes(self, started: float, since: float) -> bool:
        from orch.cli.format import short  # the launcher's alone: after the forks

        shown: set[str] = set()
        warned = False
        index = self.wait_for_change(0)  # at once: the index the list below is at least at
        while not self.interrupted():
            nodes = self.healthy_nodes(since)
            for node in nodes:
                node_id = str(node.get("node_id"))
                if node_id not in shown:
                    shown.add(node_id)
                    self.say(f"agent {node.get('endpoint')} node {short(node.get('node_id'))}")
            if len(nodes) >= self.config.agents:
                return True
            if not warned and self.sup.now() - started > SLOW_START:
                warned = True
                self.say(f"still waiting: {len(nodes)} of {self.config.agents} nodes healthy")
            index = self.wait_for_change(index)
        return False

    def wait_for_change(self, index: int) -> int:
        """Until the state moves past ``index`` (a node registering is a write)
        or WAIT_CHANGE passes: the new index. A Nomad blocking query on
        /v1/nodes instead of a poll every POLL_INTERVAL, each poll a request
        the starting server had to answer. Polls with several servers (a
        follower's wake-ups follow the database) or when the query fails."""
        from orch.transport import ERRORS

        if len(self.urls) == 1:
            params = {"index": str(index), "wait": f"{WAIT_CHANGE:g}s"}
            try:
                resp = self.http().get(
                    self.urls[0] + "/v1/nodes", params=params, timeout=WAIT_CHANGE + 1.0
                )
                if resp.status_code == 200:
                    return int(resp.headers.get("X-Nomad-Index") or index)
            except (*ERRORS, ValueError):
                pass
        self.sup.sleep(POLL_INTERVAL)
        return index

    def finish(self) -> int:
        """Stop everything; exit 1 if a child died on its own."""
        dead = None if self.sup.signals else self.fatal_death()
        if dead is not None:
            self.say(
                f"{dead.name} (pid {dead.pid}) exited with code "
                f"{dead.exit_code}; stopping the others"
            )
        else:
            self.say("stopping agents, then the server")
        self.sup.stop()
        if self._http is not None:
            self._http.close()
        return 1 if dead is not None else 0


def start_database(config: DevConfig, data_dir: str):
    """The servers' PostgreSQL: (url, a throwaway instance to stop, or None).

    None for the url when there is one server and no --database (SQLite)."""
    if config.database or config.servers <= 1:
        return config.database, None
    from orch.dev.postgres import PostgresUnavailable, ThrowawayPostgres

    try:
        pg = ThrowawayPostgres(os.path.join(data_dir, "postgres"))
    except PostgresUnavailable as exc:
        raise SystemExit(f"orch dev: --servers {config.servers} needs PostgreSQL: {exc}") from None
    print("orch dev: starting PostgreSQL for the servers", flush=True)
    return pg.start(), pg


def run(config: DevConfig) -> int:
    if config.port:
        why = port_taken(config.bind, config.port)
        if why:
            print(
                f"orch dev: cannot listen on {config.bind}:{config.port}: {why}; "
                f"pick another --port (or 0 for a free one)",
                file=sys.stderr,
                flush=True,
            )
            return 1
    ephemeral = config.data_dir is None
    data_dir = (
        config.data_dir if config.data_dir is not None else tempfile.mkdtemp(prefix="orch-dev-")
    )
    try:
        # Its servers and agents lock their own dirs; this lock refuses a
        # second `orch dev` before it touches the first one's PostgreSQL.
        lock_data_dir(data_dir, "orch dev")
    except DataDirError as exc:
        print(f"orch dev: {exc.message}", file=sys.stderr, flush=True)
        return 1
    port = config.port or free_port(config.bind)
    sup = Supervisor(program(), child_env(dict(os.environ), config.token), fork=zygote.can_fork())
    previous = {s: signal.signal(s, sup.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    pg = None
    try:
        database, pg = start_database(config, os.path.abspath(data_dir))
        cluster = DevCluster(config, sup, os.path.abspath(data_dir), port, database=database)
        return cluster.run()
    finally:
        if any(c.proc.returncode is None for c in sup.children):
            sup.stop()
        # Ctrl-C stops tasks too: those that outlived their agents' grace.
        killed = kill_tasks_left(data_dir)
        if killed:
            print(
                f"orch dev: killed {killed} task processes that outlived their agents", flush=True
            )
        if pg is not None:
            pg.stop()  # after the servers: they would log its loss at length
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if ephemeral:
            shutil.rmtree(data_dir, ignore_errors=True)
