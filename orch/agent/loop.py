"""Register with the server, then heartbeat: every interval and on task changes.

A task state change wakes the loop, which waits ~5 ms so that a burst of
changes (an allocation's tasks starting together) goes out as one heartbeat.
A 404 means the server does not know us (it lost its state, or we were
garbage-collected): register again, then heartbeat at once.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import requests

from orch.agent.fingerprint import Fingerprint
from orch.config import AgentConfig
from orch.structs import TERMINAL_ALLOC

log = logging.getLogger(__name__)

TERMINAL = frozenset(status.value for status in TERMINAL_ALLOC)
COALESCE = 0.005              # seconds: changes this close share one heartbeat
# The connection to the server is kept only while heartbeats come close
# together (a burst of task changes); a node quiet this long lets it go. A
# server holding one idle keep-alive connection per node stops answering past
# waitress's connection limit (1,000) and slows with every connection it holds
# (bench/E2E_HEARTBEATS.md).
KEEPALIVE_IDLE = 0.1
BACKOFF_START = 0.05          # register retry: 50 ms doubling up to 1 s
BACKOFF_MAX = 1.0
REGISTER_TIMEOUT = (1.0, 5.0)     # (connect, read) seconds
HEARTBEAT_TIMEOUT = (1.0, 5.0)


class NodeLoop:
    """The agent's one conversation with the server, in its own thread."""

    def __init__(self, config: AgentConfig, node_id: str, endpoint: str,
                 fp: Fingerprint, allocations: Callable[[], dict],
                 used: Callable[[], tuple[int, int]],
                 session: requests.Session | None = None):
        self.config = config
        self.node_id = node_id
        self.endpoint = endpoint
        self.fingerprint = fp
        self._allocations = allocations
        self._acked: set[str] = set()       # finished allocations the server has
        self._used = used
        self._session = session or requests.Session()
        self._server = config.server.rstrip("/")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._registered = threading.Event()
        self._reregister = threading.Event()     # registered, but attributes changed
        self._thread = threading.Thread(target=self._run, name="node-loop", daemon=True)
        self._last_error = ""

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._session.close()

    def notify(self) -> None:
        """A task changed state: heartbeat now (coalesced)."""
        self._wake.set()

    def update_fingerprint(self, fp: Fingerprint) -> None:
        """Attributes changed (a driver came or went): register again with them."""
        self.fingerprint = fp
        self._reregister.set()
        self._wake.set()

    def wait_registered(self, timeout: float | None = None) -> bool:
        return self._registered.wait(timeout)

    # -- bodies -----------------------------------------------------------

    def register_body(self) -> dict:
        res = self.fingerprint.resources
        return {"node_id": self.node_id, "region": self.config.region,
                "resources": {"cpu": res.cpu, "memory": res.memory},
                "healthy": True, "endpoint": self.endpoint,
                "attributes": self.fingerprint.attributes,
                "meta": dict(self.config.meta)}

    def heartbeat_body(self) -> dict:
        total = self.fingerprint.resources
        cpu_used, memory_used = self._used()
        return {"node_id": self.node_id,
                "resources": {"cpu": max(total.cpu - cpu_used, 0),
                              "memory": max(total.memory - memory_used, 0),
                              "cpu_used": cpu_used, "memory_used": memory_used},
                "healthy": True, "timestamp": time.time(),
                "allocations": self._unacknowledged(self._allocations())}

    def _unacknowledged(self, allocations: dict) -> dict:
        """Finished allocations are sent until the server has taken them once:
        repeating them would grow every heartbeat of a busy node without end."""
        self._acked &= allocations.keys()
        return {alloc_id: entry for alloc_id, entry in allocations.items()
                if alloc_id not in self._acked}

    def _acknowledge(self, sent: dict) -> None:
        self._acked |= {alloc_id for alloc_id, entry in sent.items()
                        if getattr(entry.get("status"), "value", entry.get("status"))
                        in TERMINAL}

    # -- the thread -----------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._reregister.is_set() or not self._registered.is_set():
                    self._reregister.clear()
                    if not self._register():
                        return
                self._heartbeat()
            except Exception:               # a bug must not silence the node
                log.exception("heartbeat loop error")
            self._idle_wait(self.config.heartbeat_interval)
            if self._stop.is_set():
                return
            if self._wake.is_set():
                self._stop.wait(COALESCE)
                self._wake.clear()

    def _idle_wait(self, interval: float) -> None:
        """Wait for a change or the next interval; drop the connection meanwhile."""
        idle = min(KEEPALIVE_IDLE, interval)
        if self._wake.wait(idle):
            return
        self._session.close()           # its pools reopen on the next request
        self._wake.wait(interval - idle)

    def _register(self) -> bool:
        """Retry until registered; False if stopped first."""
        delay = BACKOFF_START
        started = time.monotonic()
        while not self._stop.is_set():
            try:
                resp = self._post("/register", self.register_body(), REGISTER_TIMEOUT)
                if resp.status_code == 200:
                    self._registered.set()
                    self._last_error = ""
                    log.info("registered node %s server=%s endpoint=%s",
                             self.node_id, self._server, self.endpoint)
                    return True
                self._warn(f"register answered {resp.status_code}: {_error(resp)}")
            except requests.RequestException as exc:
                # Quiet while a dev cluster starts; loud if the server stays away.
                self._warn(f"register failed, retrying: {exc.__class__.__name__}",
                           debug=time.monotonic() - started < 5.0)
            self._stop.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX)
        return False

    def _heartbeat(self) -> None:
        body = self.heartbeat_body()
        try:
            resp = self._post("/heartbeat", body, HEARTBEAT_TIMEOUT)
        except requests.RequestException as exc:
            self._warn(f"heartbeat failed: {exc.__class__.__name__}: {exc}")
            return
        if resp.status_code == 404:
            log.info("server does not know node %s: registering again", self.node_id)
            self._registered.clear()
            self._acked.clear()             # a server that forgot us learns everything
            self._wake.set()                # heartbeat right after registering
        elif resp.status_code != 200:
            self._warn(f"heartbeat answered {resp.status_code}: {_error(resp)}")
        else:
            self._last_error = ""
            self._acknowledge(body["allocations"])

    def _post(self, path: str, body: dict, timeout) -> requests.Response:
        headers = {}
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        return self._session.post(self._server + path, json=body, headers=headers,
                                  timeout=timeout, verify=not self.config.insecure)

    def _warn(self, message: str, debug: bool = False) -> None:
        """Log a problem once, not on every retry."""
        if message != self._last_error:
            log.log(logging.DEBUG if debug else logging.WARNING, "%s", message)
            self._last_error = message


def _error(resp: requests.Response) -> str:
    try:
        return str(resp.json().get("error"))
    except (ValueError, AttributeError):
        return resp.text[:200]
