"""One frozen config per role; defaults live here, ORCH_* variables override.

Configs are passed explicitly: no module-level mutable state anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_PORT = 4646
DEFAULT_ADDRESS = f"http://127.0.0.1:{DEFAULT_PORT}"
# A node's datacenter when its agent names none: Nomad's (`nomad agent -dev`'s).
DEFAULT_DATACENTER = "dc1"


def env(name: str, default):
    """Read ORCH_<NAME>, cast to the default's type."""
    raw = os.environ.get(f"ORCH_{name}")
    if raw is None or raw == "":
        return default
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    cast = float if isinstance(default, float) else int if isinstance(default, int) else None
    if cast is None:
        return raw
    try:
        return cast(raw)
    except ValueError:
        # Named, so that `orch` can say which variable is wrong in one line.
        raise ValueError(f"ORCH_{name}: not a number: {raw!r}") from None


_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/-._~")


def clean_prefix(raw: str) -> str:
    """A URL path prefix as "/a/b" ("" for none); ValueError if it is not one.

    Only unreserved characters: the prefix goes into every link the UI
    renders, so nothing in it may need escaping."""
    prefix = (raw or "").strip().rstrip("/")
    if not prefix:
        return ""
    if not prefix.startswith("/") or "//" in prefix or not set(prefix) <= _PREFIX_CHARS:
        raise ValueError(f"not a path prefix such as /orch: {raw!r}")
    if any(part in (".", "..") for part in prefix.split("/")):
        raise ValueError(f"not a path prefix such as /orch: {raw!r}")
    return prefix


@dataclass(frozen=True)
class ServerConfig:
    bind: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: str = "./orch-data/server"
    # postgresql://... to share the state with other servers; None: SQLite in data_dir.
    database: str | None = None
    node_ttl: float = 10.0  # seconds without heartbeat before a node is lost
    token: str | None = None
    insecure: bool = False
    scheduler_workers: int = 1
    push_workers: int = 4  # per node: each node has its own queue
    push_timeout: float = 5.0  # per HTTP call to an agent
    push_retries: int = 3
    max_count: int = 10_000  # cap on a task group's count
    max_body_bytes: int = 1 << 20
    # An agent's register and heartbeat: a full beat carries every task of
    # every allocation on its node, which a 1 MiB cap could not hold (one
    # refused beat after another, then the node declared down).
    node_max_body_bytes: int = 64 << 20
    # waitress worker threads. Handlers are short and share one GIL: more
    # threads cost CPU in hand-offs (server CPU per heartbeat at 500/s: 16
    # threads 0.49 ms, 8 0.43, 4 0.40), fewer leave less room for slow ones
    # (a log relay waits up to 5 s on an unreachable agent).
    http_threads: int = 8
    # Versions kept per job (GET /jobs/<id>/versions, revert), as Nomad keeps
    # a job's history; kept small: each is a full job body on disk.
    job_versions: int = 10
    # UI streams (events, logs) open at once. Each holds a waitress thread,
    # so `run` adds this many threads on top of http_threads: a page left
    # open never takes a thread from the API.
    ui_max_streams: int = 32
    # The web UI's path prefix when a reverse proxy serves orch under one
    # ("/orch" -> links to /orch/ui/...); X-Forwarded-Prefix overrides it.
    ui_prefix: str = ""
    # Several servers on one PostgreSQL: the URL agents are redirected to
    # when this server leads (default: http://<bind>:<port>), and the
    # leader's lease in seconds (renewed every third of it).
    advertise: str | None = None
    lease: float = 3.0


@dataclass(frozen=True)
class AgentConfig:
    server: str = DEFAULT_ADDRESS
    bind: str = "127.0.0.1"
    port: int = 0
    advertise: str | None = None  # URL the server uses to reach us
    region: str = "global"
    # Nomad's datacenter, below the region: job files' `datacenters` name it.
    datacenter: str = DEFAULT_DATACENTER
    node_id: str | None = None
    meta: dict = field(default_factory=dict)
    data_dir: str = "./orch-data/agent"
    heartbeat_interval: float = 2.0
    token: str | None = None
    insecure: bool = False  # a non-loopback bind without a token, nothing else
    tls_skip_verify: bool = False  # no certificate checks towards an https:// server
    # Restart policy for service tasks (Nomad's defaults are 2 in 30m, delay 15s;
    # ours are shorter so that a dev cluster reacts within seconds).
    restart_attempts: int = 2
    restart_interval: float = 60.0
    restart_delay: float = 1.0
    kill_timeout: float = 5.0  # SIGTERM -> SIGKILL grace
    http_threads: int = 8
    task_user: str | None = None  # exec tasks run as this user (agent as root)
    # Finished allocations the server has taken that keep their files (logs);
    # older ones are removed, so a busy node's disk and memory stay flat.
    gc_keep: int = 50
    # Host ports the scheduler may give this node's allocations ("LOW-HIGH").
    port_range: str = "20000-32000"


@dataclass(frozen=True)
class DevConfig:
    agents: int = 3
    port: int = DEFAULT_PORT
    bind: str = "127.0.0.1"
    data_dir: str | None = None  # ephemeral when None
    node_ttl: float = 10.0
    heartbeat_interval: float = 2.0
    token: str | None = None
    log_level: str = "INFO"  # passed on to the server and the agents
    ui_prefix: str = ""  # passed on to the server (--ui-prefix)
    # Servers on one PostgreSQL (--database, else one dev mode starts itself
    # when there are several); 1 without a database: SQLite, as before.
    servers: int = 1
    database: str | None = None
