"""The UI's streams: state changes and a task's live log, as server-sent events.

Both are read by the page's JavaScript with fetch() (the token goes in a
header, never in a URL). Each open stream holds a waitress thread, so they
are capped (``ServerConfig.ui_max_streams``; the server adds that many
threads); one over the cap gets a 503. A stream ends when its client goes
away (the connection's socket says so when asked, a write fails) and on
shutdown (the change feed is closed).

- ``GET <base>/events``: ``hello`` with the change index, then ``change``
  within ~0.2 s of a committed write (a burst makes one event), and a
  keepalive comment every 15 s.
- ``GET <base>/logs/<alloc_id>/<task>``: ``log`` chunks relayed from the
  agent's log route, polled with offsets; ``end`` once drained (and the
  allocation terminal, when following); ``error`` on failure.
"""

from __future__ import annotations

import codecs
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import quote

import bottle

from orch import httpjson, transport
from orch.errors import NotFound, Unavailable, ValidationError
from orch.slots import Slots
from orch.transport import HttpClient
from orch.validation import fields

if TYPE_CHECKING:
    from orch.server.server import Server

log = logging.getLogger(__name__)

KEEPALIVE = 15.0  # seconds between keepalive comments on an idle stream
COALESCE = 0.2  # at most one change event per this many seconds
WAKE = 1.0  # an idle stream checks for its client this often
LOG_POLL = 0.25  # seconds between log polls while following
# (connect, read) seconds per log poll of an agent.
LOG_TIMEOUT = (2.0, 5.0)
LOG_TYPES = ("stdout", "stderr")


class StreamSlots(Slots):
    """The open UI streams, capped; over the cap, Unavailable (503)."""

    def acquire(self) -> None:
        if not self.try_take():
            raise Unavailable(f"too many open UI streams (at most {self.cap}); try again later")

    def release(self) -> None:
        self.give()


def sse(event: str, data: dict) -> bytes:
    """One server-sent event; JSON data is one line, so one ``data:`` field."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


def _stream_headers() -> None:
    bottle.response.content_type = "text/event-stream; charset=utf-8"
    bottle.response.set_header("Cache-Control", "no-cache")
    # A proxy in front (X-Forwarded-Prefix) must not buffer the stream.
    bottle.response.set_header("X-Accel-Buffering", "no")


def _gone_check() -> Callable[[], bool]:
    """Whether the client went away (waitress tells, when it can)."""
    check = bottle.request.environ.get("waitress.client_disconnected")
    return check if callable(check) else (lambda: False)


def register_stream_routes(app_or_router, server: Server, base: str) -> StreamSlots:
    """Add ``<base>/events`` and ``<base>/logs/<alloc_id>/<task>``; returns the slots
    (the server's ``ui_streams``: one cap however many times routes are added).

    Takes the server's httpjson.Router, or a bottle app (a Router with the
    server's token is made for it)."""
    route = app_or_router
    if isinstance(app_or_router, bottle.Bottle):
        config = server.config
        route = httpjson.Router(app_or_router, token=config.token, max_body=config.max_body_bytes)
    slots = server.ui_streams
    base = base.rstrip("/")

    @route("GET", f"{base}/events", raw=True)
    def events():
        slots.acquire()
        _stream_headers()
        return _guarded(event_stream(server, _gone_check()), slots)

    @route("GET", f"{base}/logs/<alloc_id>/<task>", raw=True)
    def logs(alloc_id, task):
        query = bottle.request.query
        kind = query.get("type") or "stdout"
        if kind not in LOG_TYPES:
            raise ValidationError("type: must be stdout or stderr")
        offset = fields.query_offset(query.get("offset"))
        follow = query.get("follow", "1") not in ("0", "false", "no")
        if server.store.get_alloc(alloc_id) is None:
            raise NotFound("Allocation not found")
        slots.acquire()
        _stream_headers()
        relay = LogRelay(server, alloc_id, task, kind, _gone_check())
        return _guarded(relay.stream(offset, follow), slots)

    return slots


def _guarded(stream: Iterator[bytes], slots: StreamSlots) -> Iterator[bytes]:
    """The stream, its slot given back however it ends (closed, failed, drained)."""
    try:
        yield from stream
    finally:
        slots.release()


def event_stream(server: Server, gone: Callable[[], bool]) -> Iterator[bytes]:
    """hello, then a change event per burst of writes, keepalives between."""
    store = server.store
    feed = store.changes
    index = feed.index
    yield sse("hello", {"index": index})
    last_event = last_sent = time.monotonic()
    while not feed.closed and not gone():
        if feed.wait(index, WAKE) > index:
            # A burst of writes (a plan placing 100 allocations) is one event.
            time.sleep(max(0.0, COALESCE - (time.monotonic() - last_event)))
            store.settle()  # memory has caught up with the commits announced
            index = feed.index
            yield sse("change", {"index": index})
            last_event = last_sent = time.monotonic()
        elif time.monotonic() - last_sent >= KEEPALIVE:
            yield b": keepalive\n\n"
            last_sent = time.monotonic()


class LogRelay:
    """Polls one task's log on its agent and yields it as ``log`` events."""

    def __init__(self, server: Server, alloc_id: str, task: str, kind: str, gone):
        self.server = server
        self.alloc_id = alloc_id
        self.task = task
        self.kind = kind
        self.gone = gone
        # A UTF-8 character split across two polls is held back, not mangled.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def stream(self, offset: int, follow: bool) -> Iterator[bytes]:
        # One kept connection per relay: it polls its agent 4 times a second.
        client = HttpClient(timeout=LOG_TIMEOUT, token=self.server.config.token)
        try:
            yield from self._relay(client, offset, follow)
        except (*transport.ERRORS, ValueError) as exc:
            yield sse("error", {"error": f"node unreachable: {exc}"})
        finally:
            client.close()

    def _relay(self, client: HttpClient, offset: int, follow: bool) -> Iterator[bytes]:
        feed = self.server.store.changes
        last_sent = time.monotonic()
        while not feed.closed and not self.gone():
            alloc = self.server.store.get_alloc(self.alloc_id)
            if alloc is None:
                yield sse("error", {"error": "Allocation not found"})
                return
            # Read before the poll: terminal then, an empty poll means drained.
            terminal = alloc.terminal()
            endpoint = self.server.endpoint_of(alloc.node_id)
            if endpoint is None:
                yield sse("error", {"error": "the allocation's node is unknown"})
                return
            resp = client.get(
                f"{endpoint}/allocations/{quote(self.alloc_id)}/logs/{quote(self.task)}",
                params={"type": self.kind, "offset": offset},
            )
            if resp.status_code != 200:
                yield sse("error", {"error": _agent_error(resp)})
                return
            if resp.content:
                offset = int(resp.headers.get("X-Orch-Next-Offset") or offset + len(resp.content))
                text = self._decoder.decode(resp.content)
                held = len(self._decoder.getstate()[0])
                yield sse("log", {"offset": offset - held, "text": text})
                last_sent = time.monotonic()
                continue  # more may be waiting: read on at once
            if terminal or not follow:
                yield sse("end", {"offset": offset})
                return
            if time.monotonic() - last_sent >= KEEPALIVE:
                # As the events': a write is how a server without a way to
                # ask its socket (plain waitress) learns its client went.
                yield b": keepalive\n\n"
                last_sent = time.monotonic()
            time.sleep(LOG_POLL)


def _agent_error(resp: transport.Response) -> str:
    try:
        return str(resp.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"agent answered {resp.status_code}"
