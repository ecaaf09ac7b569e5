"""GET /v1/client/fs/logs/<alloc>: a task's log relayed from its agent, as Nomad sends it.

``plain=true`` is the log's bytes; otherwise a stream of JSON frames
``{"Offset", "Data" (base64), "File"}``, one per chunk read, as Nomad's
StreamFrame. ``origin=end`` with ``offset=N`` starts N bytes before the end.
``follow=true`` keeps polling the agent until the task's allocation is
terminal and its log drained (Nomad's stream would stay open for good).
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from orch import transport
from orch.errors import BadGateway, NotFound, ValidationError
from orch.transport import HttpClient

if TYPE_CHECKING:
    from orch.server.server import Server
    from orch.structs import Allocation

# (connect, read) seconds for each poll of the agent.
POLL_TIMEOUT = (2.0, 5.0)
POLL_INTERVAL = 0.25
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

    def chunks(self, offset: int) -> Iterator[tuple[int, bytes]]:
        """(offset, data) of each chunk; polls on while following a live task."""
        try:
            while not self.server.store.changes.closed:
                terminal = self.alloc().terminal()
                data, nxt = self.read(offset)
                if data:
                    yield offset, data
                    offset = nxt
                    continue
                if terminal or not self.req.follow:
                    return
                time.sleep(POLL_INTERVAL)
        finally:
            self.client.close()


def frame(offset: int, data: bytes, file: str) -> bytes:
    """One StreamFrame as Nomad encodes it (Data in base64); Offset is where it ends."""
    body = {"Offset": offset + len(data), "Data": base64.b64encode(data).decode(), "File": file}
    return json.dumps(body, separators=(",", ":")).encode()


def stream(reader: LogReader) -> Iterator[bytes]:
    """The response body: plain bytes or frames. The first read happens here,
    before any byte is sent, so an unknown allocation is still a 4xx."""
    try:
        chunks = reader.chunks(reader.start())
        first = next(chunks, None)
    except Exception:
        reader.client.close()
        raise

    def body() -> Iterator[bytes]:
        if first is None:
            return
        for off, data in itertools.chain([first], chunks):
            yield data if reader.req.plain else frame(off, data, reader.file)

    return body()
