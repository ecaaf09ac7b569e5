"""Pushes allocations to agents (seed agent API) from a bounded thread pool.

Placement never waits on an agent: the scheduler commits, then hands the
allocations here. A push that still fails after its retries is reported back
(``on_failed``) so the allocation can be failed and placed elsewhere.
"""
from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from orch.structs import Allocation, Job

log = logging.getLogger(__name__)

# Keep-alive connections each push thread keeps open (least recently used
# closed first), as a requests.Session keeps ten host pools.
CONNECTIONS_PER_THREAD = 10


@dataclass(frozen=True)
class PushFailure:
    """Why a call to an agent failed; ``refused`` when it surely did nothing
    (a 4xx answer, no endpoint), as opposed to no answer at all."""
    message: str
    refused: bool


def alloc_payload(alloc: Allocation, job: Job) -> dict:
    """The agent's POST /allocations body (seed fields plus driver, job_type)."""
    group = job.group(alloc.task_group)
    tasks = [{"name": t.name, "driver": t.driver, "config": t.config,
              "resources": t.resources.to_dict()} for t in group.tasks]
    payload = {"name": group.name, "tasks": tasks}
    if group.stop_after is not None:
        payload["disconnect"] = {"stop_after": group.stop_after}
    return {"allocation_id": alloc.allocation_id, "job_id": alloc.job_id,
            "job_type": job.type.value, "task_group": payload}


class Pusher:
    """Sends POST/DELETE /allocations to agents in the background."""

    def __init__(self, *, endpoint_of, on_failed, workers: int = 16,
                 timeout: float = 5.0, retries: int = 3, token: str | None = None,
                 backoff: float = 0.2):
        self._endpoint_of = endpoint_of      # node_id -> URL or None
        self._on_failed = on_failed          # (alloc, PushFailure) -> None
        self._pool = ThreadPoolExecutor(max_workers=workers,
                                        thread_name_prefix="push")
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()
        self._lock = threading.Lock()
        self._inflight: set[str] = set()     # alloc ids being placed or stopped
        self.stats = {"placed": 0, "stopped": 0, "failed": 0}

    def _connections(self) -> OrderedDict:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = OrderedDict()
        return conns

    def _request(self, method: str, url: str, payload: bytes | None) -> tuple[int, bytes]:
        """One HTTP exchange over this thread's keep-alive connection to the
        agent (plain http.client: the server needs no HTTP client library)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        key = (parts.scheme, parts.netloc)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        headers = dict(self._headers)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        conns = self._connections()
        for fresh in (False, True):
            conn = conns.pop(key, None)
            if conn is None or fresh:
                if conn is not None:
                    conn.close()
                fresh = True
                kind = http.client.HTTPSConnection if parts.scheme == "https" \
                    else http.client.HTTPConnection
                conn = kind(parts.hostname, parts.port, timeout=self._timeout)
            try:
                conn.request(method, target, body=payload, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError):
                conn.close()
                if fresh:
                    raise
                continue            # the agent closed an idle connection: redial once
            except BaseException:
                conn.close()
                raise
            if resp.will_close:
                conn.close()
            else:
                conns[key] = conn
                while len(conns) > CONNECTIONS_PER_THREAD:
                    conns.popitem(last=False)[1].close()
            return resp.status, data
        raise AssertionError("unreachable")

    def busy(self, alloc_id: str) -> bool:
        with self._lock:
            return alloc_id in self._inflight

    def _claim(self, alloc_id: str) -> bool:
        with self._lock:
            if alloc_id in self._inflight:
                return False
            self._inflight.add(alloc_id)
            return True

    def _release(self, alloc_id: str) -> None:
        with self._lock:
            self._inflight.discard(alloc_id)

    def place(self, allocs: list[Allocation], job: Job) -> None:
        for alloc in allocs:
            if self._claim(alloc.allocation_id):
                self._pool.submit(self._place_one, alloc, alloc_payload(alloc, job))

    def stop(self, allocs: list[Allocation]) -> None:
        for alloc in allocs:
            if self._claim(alloc.allocation_id):
                self._pool.submit(self._stop_one, alloc)

    def _place_one(self, alloc: Allocation, payload: dict) -> None:
        try:
            failure = self._call("POST", alloc.node_id, "/allocations", payload)
            if failure is None:
                self.stats["placed"] += 1
            else:
                self.stats["failed"] += 1
                log.warning("push failed alloc=%s node=%s: %s",
                            alloc.allocation_id[:8], alloc.node_id[:8], failure.message)
                self._on_failed(alloc, failure)
        except Exception:
            log.exception("push crashed alloc=%s", alloc.allocation_id)
        finally:
            self._release(alloc.allocation_id)

    def _stop_one(self, alloc: Allocation) -> None:
        try:
            path = f"/allocations/{alloc.allocation_id}"
            failure = self._call("DELETE", alloc.node_id, path, None, ok=(200, 404))
            if failure is None:
                self.stats["stopped"] += 1
            else:
                log.warning("stop failed alloc=%s node=%s: %s",
                            alloc.allocation_id[:8], alloc.node_id[:8], failure.message)
        except Exception:
            log.exception("stop crashed alloc=%s", alloc.allocation_id)
        finally:
            self._release(alloc.allocation_id)

    def _call(self, method: str, node_id: str, path: str, body,
              ok=(200,)) -> PushFailure | None:
        """One call with retries; returns None on success, else the last failure."""
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        failure = PushFailure("node has no endpoint", refused=True)
        for attempt in range(self._retries):
            endpoint = self._endpoint_of(node_id)
            if not endpoint:
                return failure
            try:
                status, data = self._request(method, endpoint + path, payload)
                if status in ok:
                    return None
                message = f"agent answered {status}: {data[:200].decode(errors='replace')}"
                if 400 <= status < 500:
                    # The agent refused it: retrying won't help.
                    return PushFailure(message, refused=True)
                failure = PushFailure(message, refused=False)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                failure = PushFailure(f"{type(exc).__name__}: {exc}", refused=False)
            time.sleep(self._backoff * (2 ** attempt))
        return failure

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
