"""GET /v1/client/fs/logs/<alloc>: a task's log relayed from its agent, as Nomad sends it.

``plain=true`` is the log's bytes; otherwise a stream of JSON frames
``{"Offset", "Data" (base64), "File"}``, one per chunk read, as Nomad's
StreamFrame. ``origin=end`` with ``offset=N`` starts N bytes before the end.
``follow=true`` keeps polling the agent until the task's allocation is
terminal and its log drained (Nomad's stream would stay open for good).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from orch import transport
from orch.errors import BadGateway, NotFound, OrchError, Unavailable, ValidationError
from orch.transport import HttpClient

if TYPE_CHECKING:
    from orch.server.server import Server
    from orch.structs import Allocation

log = logging.getLogger(__name__)

# (connect, read) seconds for each poll of the agent.
POLL_TIMEOUT = (2.0, 5.0)
POLL_INTERVAL = 0.25
# Following a quiet log: Nomad's empty heartbeat frame this often, which is
# also how a client that left is noticed.
HEARTBEAT = 10.0
# Follows open at once (each holds a waitress thread for its whole life).
MAX_FOLLOWS = 4
_follows = threading.BoundedSemaphore(MAX_FOLLOWS)
# origin=end reads the log forward to find its end: at most this many bytes.
MAX_SCAN = 64 << 20


@dataclass(frozen=True)
class LogRequest:
    task: str
    kind: str  # stdout | stderr
    origin: str  # start | end
    offset: int
    follow: bool
    plain: bool


def check(task: str | None, kind: str | None, origin: str | None) -> None:
    """Nomad's 400s for a missing task, a bad type or origin."""
    if not task:
        raise ValidationError("must include task name")
    if kind not in ("stdout", "stderr"):
        raise ValidationError("must provide a valid log type (stdout, stderr)")
    if origin not in ("start", "end"):
        raise ValidationError('origin must be "start" or "end"')


class LogReader:
    """Reads one task's log from the agent running its allocation."""

    def __init__(self, server: Server, alloc_id: str, req: LogRequest):
        self.server = server
        self.alloc_id = alloc_id
        self.req = req
        self.file = f"alloc/logs/{req.task}.{req.kind}.0"
        self.client = HttpClient(timeout=POLL_TIMEOUT, token=server.config.token)

    def alloc(self) -> Allocation:
        alloc = self.server.store.get_alloc(self.alloc_id)
        if alloc is None:
            raise NotFound(f"alloc not found: {self.alloc_id}")
        if self.req.task not in alloc.tasks:
            job = self.server.store.get_job(alloc.job_id)
            group = job.group(alloc.task_group) if job else None
            if group is None or all(t.name != self.req.task for t in group.tasks):
                raise NotFound(f'unknown task name "{self.req.task}"')
        return alloc

    def read(self, offset: int) -> tuple[bytes, int]:
        """One chunk from ``offset``: (data, the next offset)."""
        alloc = self.alloc()
        endpoint = self.server.endpoint_of(alloc.node_id)
        if endpoint is None:
            raise NotFound("the allocation's node is unknown")
        url = f"{endpoint}/allocations/{quote(self.alloc_id)}/logs/{quote(self.req.task)}"
        try:
            resp = self.client.get(url, params={"type": self.req.kind, "offset": offset})
        except (*transport.ERRORS, ValueError) as exc:
            raise BadGateway(f"node unreachable: {exc}") from exc
        if resp.status_code == 404:
            return b"", offset  # not started yet: no log file
        if resp.status_code != 200:
            raise BadGateway(f"agent answered {resp.status_code}")
        return resp.content, int(
            resp.headers.get("X-Orch-Next-Offset") or offset + len(resp.content)
        )

    def start(self) -> int:
        """The offset to read from: ``offset`` from the start or back from the end."""
        if self.req.origin == "start":
            return self.req.offset
        end = 0
        while end < MAX_SCAN:
            data, end_next = self.read(end)
            if not data:
                break
            end = end_next
        return max(0, end - self.req.offset)

    def chunks(self, offset: int, gone: Callable[[], bool]) -> Iterator[tuple[int, bytes]]:
        """(offset, data) of each chunk; while following a live task, polls on
        and yields an empty chunk after each HEARTBEAT s without data."""
        quiet_since = time.monotonic()
        try:
            while not self.server.store.changes.closed and not gone():
                terminal = self.alloc().terminal()
                data, nxt = self.read(offset)
                if data:
                    yield offset, data
                    offset, quiet_since = nxt, time.monotonic()
                    continue
                if terminal or not self.req.follow:
                    return
                if time.monotonic() - quiet_since >= HEARTBEAT:
                    yield offset, b""
                    quiet_since = time.monotonic()
                time.sleep(POLL_INTERVAL)
        finally:
            self.client.close()


def frame(offset: int, data: bytes, file: str) -> bytes:
    """One StreamFrame as Nomad encodes it (Data in base64); Offset is where it ends.

    An empty chunk is Nomad's heartbeat frame, ``{}``."""
    if not data:
        return b"{}"
    body = {"Offset": offset + len(data), "Data": base64.b64encode(data).decode(), "File": file}
    return json.dumps(body, separators=(",", ":")).encode()


def stream(reader: LogReader, gone: Callable[[], bool]) -> Iterator[bytes]:
    """The response body: plain bytes or frames.

    The allocation and task are checked here, before any byte is sent, so
    an unknown one is still a 4xx. A follow holds a waitress thread: at most
    MAX_FOLLOWS at once, over that Unavailable (503)."""
    try:
        reader.alloc()
        offset = reader.start()
    except Exception:
        reader.client.close()
        raise
    if reader.req.follow and not _follows.acquire(blocking=False):
        reader.client.close()
        raise Unavailable(f"too many log streams followed at once (at most {MAX_FOLLOWS})")

    def body() -> Iterator[bytes]:
        try:
            if reader.req.follow and not reader.req.plain:
                # bottle holds the headers until the first non-empty item: a
                # heartbeat frame sends them now, not with the log's next line.
                yield frame(offset, b"", reader.file)
            for off, data in reader.chunks(offset, gone):
                if data or not reader.req.plain:
                    yield data if reader.req.plain else frame(off, data, reader.file)
        except OrchError as exc:
            # Headers are sent: the stream can only end (the client sees it cut).
            log.warning("log stream of alloc %s ended: %s", reader.alloc_id, exc.message)
        finally:
            reader.client.close()
            if reader.req.follow:
                _follows.release()

    return body()
