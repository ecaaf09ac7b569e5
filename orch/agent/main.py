"""`orch agent` as a process: the agent's HTTP server, `serve()` and `run()`.

`run(config)` is the entry point: it serves until SIGTERM or SIGINT, then
stops every task. `serve()` is the same without signal handling; tests call
it from a thread.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Mapping

from waitress.server import create_server

from orch import collector
from orch.agent.agent import Agent
from orch.agent.api import make_app
from orch.agent.inline import inline_routes
from orch.config import AgentConfig
from orch.datadir import lock_data_dir
from orch.errors import DataDirError, DriverError
from orch.security import check_bind, warn_tls_skip_verify
from orch.wsgichannel import Inline, use_orch_channels
from orch.wsgiloop import socket_map, stop_serving

log = logging.getLogger(__name__)


class HttpServer:
    """waitress on our own socket, so that port 0 yields a known free port."""

    def __init__(
        self,
        app,
        bind: str,
        port: int,
        threads: int = 8,
        inline: Mapping[tuple[str, str], Inline] | None = None,
    ):
        family, kind, proto, _, addr = socket.getaddrinfo(
            bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self._sock = socket.socket(family, kind, proto)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind(addr)
        except OSError:
            self._sock.close()
            raise
        self.host, self.port = self._sock.getsockname()[:2]
        self._server = create_server(
            app, map=socket_map(), sockets=[self._sock], threads=threads, ident="orch-agent"
        )
        use_orch_channels(self._server, inline)
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        stop_serving(self._server, self._thread)


def endpoint_for(config: AgentConfig, server: HttpServer) -> str:
    """The URL the server uses to reach us: --advertise, else bind:port."""
    if config.advertise:
        return config.advertise.rstrip("/")
    host = config.bind
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{server.port}"


def serve(
    config: AgentConfig,
    stop: threading.Event,
    ready: threading.Event | None = None,
    info: dict | None = None,
    *,
    own_process: bool = False,
) -> int:
    """Run an agent until `stop` is set; tests call this from a thread.

    `own_process`: the process is the agent's alone (`orch agent`), so its
    collector is set for a long-lived daemon once the state is restored."""
    try:
        agent = Agent(config)
    except DriverError as exc:  # e.g. --task-user names no user
        log.error("cannot start the agent: %s", exc.message)
        return 1
    agent.restore()
    if own_process:
        collector.tune()
    try:
        server = HttpServer(
            make_app(agent), config.bind, config.port, config.http_threads, inline_routes(agent)
        )
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.bind, config.port, exc)
        agent.shutdown(stop_tasks=True)
        return 1
    server.start()
    endpoint = endpoint_for(config, server)
    log.info("agent listening on %s node_id=%s", server.url, agent.node_id)
    agent.start_loop(endpoint)
    if info is not None:
        info.update(agent=agent, url=server.url, endpoint=endpoint, port=server.port)
    if ready is not None:
        ready.set()
    while not stop.wait(1.0):
        pass
    log.info("agent stopping: killing tasks")
    started = time.monotonic()
    server.stop()  # no new allocations while we kill the old
    agent.shutdown(stop_tasks=True)
    log.info("agent stopped in %.2fs", time.monotonic() - started)
    return 0


def run(config: AgentConfig) -> int:
    """`orch agent`: serve until SIGTERM/SIGINT, then stop every task; returns 0."""
    check_bind("agent", config.bind, config.token, config.insecure)
    warn_tls_skip_verify("agent", config.server, config.tls_skip_verify)
    try:
        # Two agents on one data dir would run (and kill) each other's tasks.
        lock_data_dir(config.data_dir, "agent")
    except DataDirError as exc:
        log.error("%s", exc.message)
        return 1
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
    return serve(config, stop, own_process=True)
