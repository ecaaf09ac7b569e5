"""The waitress connection both orch HTTP servers (server and agent) use.

A little over 400 lines on purpose: the inline route path (whole request,
parsed request, held answers, parked answers) reads best in one place.

waitress (pinned in requirements.txt) has two costs that show at a few
requests per millisecond, fixed here by subclassing its channel and task:

- its I/O thread spins while a worker holds a connection's output lock (see
  ``_Channel.writable``): the cost of a request grew 5-8x with 3-12
  concurrent connections;
- it writes an answer's header and its body as two socket sends from the
  worker thread: two syscalls and two TCP segments, which the client reads as
  two wake-ups. Here the header is held back and goes out with the first part
  of the body, so an ordinary JSON answer is one send. Streams (UI events,
  log follows) are unchanged: each later part is still sent as it is written.

A third is optional: *inline routes* (``use_orch_channels(http, inline=...)``)
answer a request on the thread that parsed it, without a worker thread, a
WSGI environ or bottle, when their handler can (the server's heartbeat that
changes nothing durable: most of them; a job's or an allocation's read).
Handing a request to a worker and back cost more than such a request's own
work; a handler that cannot answer at once returns None and the request
takes the ordinary path, and a blocking query asked of one may answer
``Later`` (``orch.wsgipark``: it waits parked on the loop, holding no
thread). A whole plain request that arrives in one read
(orch's transport sends head and body together) is offered to its handler
straight from the bytes, before waitress builds a parser and a body buffer
for it (``_Channel.received``).

All rely on waitress 3.0's internals (``HTTPChannel.writable``,
``write_soon``, ``outbuf_lock``, ``WSGITask.write``, ``add_task``,
``requests``): re-check on an upgrade.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, Protocol

from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, MultiSocketServer
from waitress.task import ErrorTask, WSGITask
from waitress.utilities import build_http_date

from orch import fastjson
from orch.errors import OrchError
from orch.wsgiloop import Asyncore, EpollMap
from orch.wsgipark import Later, Response, park
from orch.wsgiparser import FastParser, plain_header

log = logging.getLogger(__name__)

# An inline answer: its JSON body (200), and the extra headers it carries.
InlineAnswer = tuple[bytes, Mapping[str, str]]
# An inline route's handler: the request's headers (waitress's names: upper
# case, ``_`` for ``-``), body and path parameter (the last segment of a
# path registered as ``/prefix/*``; "" for an exact path) in, an answer out,
# or None to leave the request to the WSGI app. It runs on waitress's I/O
# thread: it must never block (no I/O, no lock taken with waiting; the
# server's inline submit is the one bounded exception, orch.server.inline).
Inline = Callable[[Mapping[str, str], bytes, str], "InlineAnswer | None"]
# A route's handler for the same request with a query string (a blocking
# query: ``?index=&wait=``): the query instead of the body; it may also
# answer ``Later`` (``orch.wsgipark``: parked on the loop, no thread held).
Waiting = Callable[[Mapping[str, str], str, str], "InlineAnswer | Later | None"]
# Any other GET with a query (orch.server.parkedreads): its channel and
# waitress's request in, ``Later`` out to park it, None for its route.
ParkedReads = Callable[[Any, Any], "Later | None"]


class TurnWrites(Protocol):
    """Writes the inline routes of one I/O loop turn commit together
    (``orch.server.state.group``): the loop calls ``start`` before it handles
    a turn's events and ``end`` after; an answer given while ``pending()`` is
    held until ``end`` has committed, and becomes its error if that failed."""

    def start(self) -> None: ...

    def pending(self) -> bool: ...

    def end(self) -> OrchError | None: ...


# Inline bodies are small (a heartbeat that carries nothing); a larger one
# is parsed by a worker, off the I/O thread.
INLINE_MAX_BODY = 16 * 1024


# A peer's close or half close, a reset, an error (Linux: POLLRDHUP).
_HUNG_UP = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR


class _Channel(HTTPChannel):
    """A connection that does not spin, and whose task can hold its header
    for the body's first part."""

    _hold = False
    _held = b""
    _declined = False  # the request being read was declined by its handler
    parked = None  # the orch.wsgipark.Parked its first request waits as

    def writable(self):
        # While a worker writes (and flushes) under the outbuf lock, waitress
        # still says "writable" and its handle_write then finds the lock taken
        # and does nothing: the I/O thread spins, holding the GIL the worker
        # needs back, which waits out a switch interval each time (measured:
        # 165 handle_write calls and 1.2-1.8 ms of CPU per read at 3
        # connections, 0.24 ms without). A worker that leaves data unsent
        # pulls the trigger; the end of its request pulls it again with the
        # lock free, so what is left is sent then (a stream's chunk left in a
        # full socket buffer goes at the next write, or the loop's 1 s tick).
        if self.requests:
            if not self.outbuf_lock.acquire(False):
                return False
            self.outbuf_lock.release()
        # HTTPChannel.writable, inline: the loop asks every connection at
        # every turn.
        return self.total_outbufs_len or self.will_close or self.close_when_flushed

    def write_soon(self, data):
        if self._hold and data:
            # The header: kept until the body's first part joins it.
            self._hold = False
            self._held = bytes(data)
            return len(data)
        if self._held:
            held, self._held = self._held, b""
            if not isinstance(data, (bytes, bytearray, memoryview)):
                super().write_soon(held)  # a file (wsgi.file_wrapper) follows it
            else:
                data = held + bytes(data)
        return super().write_soon(data)

    def check_client_disconnected(self) -> bool:
        """environ's ``waitress.client_disconnected``: waitress knows only
        with lookahead, which orch's server turns off (``server/wsgi.py``),
        so a stream (a log follow, the UI's events) asks the socket itself,
        without reading from it: after its client's close (or half close,
        as Go's server takes it), or an error, the client is gone. Pipelined
        requests left unread do not hide it (POLLRDHUP, not a peek)."""
        if not self.connected:
            return True
        try:
            poller = select.poll()
            poller.register(self.socket.fileno(), _HUNG_UP)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True  # closed by the loop meanwhile

    def release(self) -> None:
        """Send a header still held (an answer without a body)."""
        self._hold = False
        if self._held:
            self.write_soon(b"")

    def received(self, data):
        # One whole plain request in one read, nothing before it: an inline
        # route may answer it straight from the bytes (no parser object, no
        # body buffer: most heartbeats). Anything else, or a declined
        # request, goes the way waitress reads it.
        tasks = self.server.add_task
        if self.request is None and isinstance(tasks, _InlineTasks):
            # Under the lock, as waitress reads: a worker may be ending the
            # connection (will_close) or finishing the request before it.
            with self.requests_lock:
                if (
                    not self.requests
                    and not (self.will_close or self.close_when_flushed)
                    and tasks.answer_whole(self, data)
                ):
                    return True
        return super().received(data)


class _Task(WSGITask):
    """Sends the header together with the first part of the body."""

    channel: _Channel

    def write(self, data):
        if self.wrote_header or not data:
            return super().write(data)
        channel = self.channel
        channel._hold = True
        try:
            return super().write(data)
        finally:
            channel.release()


class _ErrorTask(ErrorTask):
    """waitress's own answer to a request it cannot read (a bad request
    line, a bad Content-Length, a header too large), as orch's JSON error.
    The Nomad face keeps waitress's plain text: Nomad's errors are text."""

    def execute(self):
        path = getattr(self.request, "path", "") or ""
        if path.startswith("/v1/"):
            return super().execute()
        failed = self.request.error
        body = fastjson.dumps({"error": f"{failed.reason}: {failed.body}"})
        self.status = f"{failed.code} {failed.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


_Channel.task_class = _Task
_Channel.error_task_class = _ErrorTask
_Channel.parser_class = FastParser


class _InlineTasks:
    """A listener's ``add_task``: inline routes answered on the spot, the rest
    handed to the worker threads as before.

    waitress calls it with the channel's ``requests_lock`` held, its first
    request complete and no worker serving the channel (from the I/O thread
    when a request arrives, from a worker when one request follows another).
    """

    def __init__(
        self,
        add_task,
        routes: Mapping[tuple[str, str], Inline],
        held: _HeldAnswers | None = None,
        waiting: Mapping[tuple[str, str], Waiting] | None = None,
        parked_reads: ParkedReads | None = None,
    ):
        self._add_task = add_task
        self._parked_reads = parked_reads
        self._routes = dict(routes)
        self._waiting = dict(waiting or {})
        self._date = (0, b"")  # (second, its HTTP date): one format a second
        self._held = held
        self.whole = 0  # requests answered by answer_whole (tests)

    def __call__(self, channel) -> None:
        if channel._declined:
            # Its handler declined it in answer_whole: not asked twice.
            channel._declined = False
            self._add_task(channel)
            return
        while channel.requests:
            answer = self._answer(channel, channel.requests[0])
            if isinstance(answer, Later) and park(self, channel, answer):
                return  # answered by unpark
            if answer is None or isinstance(answer, Later):
                self._add_task(channel)
                return
            if not self._reply(channel, answer):
                return

    def unpark(self, channel, answer: InlineAnswer | Response | None) -> None:
        """On the loop's thread: the parked first request's answer (None:
        the route's, on a worker), then the requests behind it."""
        with channel.requests_lock:
            if not channel.requests:
                return
            if answer is None:
                self._add_task(channel)
            elif self._reply(channel, answer) and channel.requests:
                self(channel)

    def _reply(self, channel, answer: InlineAnswer | Response) -> bool:
        """Send the first request's answer; False if the connection closes."""
        request = channel.requests.pop(0)
        close = request.headers.get("CONNECTION", "").lower() == "close"
        if isinstance(answer, Response):
            # A worker's answer, read like any other worker's: not held for
            # the loop turn's writes.
            self._send_now(
                channel, answer.body, answer.headers, close, answer.status, answer.content_type
            )
        else:
            self._send(channel, answer[0], answer[1], close)
        request.close()
        if close:
            for later in channel.requests:
                later.close()
            channel.requests = []
            channel.close_when_flushed = True
        return not close

    def answer_whole(self, channel, data: bytes) -> bool:
        """Answer ``data`` if it is exactly one plain request (header kept by
        FastParser) for an inline route that the handler answers; False
        leaves it to waitress's reading (``channel._declined`` set if the
        handler was asked and declined)."""
        end = data.find(b"\r\n\r\n") + 4
        fields = plain_header(data[:end]) if end > 3 else None
        if fields is None:
            return False
        _, headers, (_, command, version, path, query), close, expect, length = fields
        handler, param = self._route(command, path)
        if (
            handler is None
            or query
            or version != "1.1"
            or close
            or expect
            or length > INLINE_MAX_BODY
            or length != len(data) - end  # a part, or requests pipelined behind
        ):
            return False
        try:
            answer = handler(headers, data[end:], param)
        except Exception:
            log.exception("inline %s %s failed", command, path)
            answer = None
        if answer is None:
            channel._declined = True
            return False
        self.whole += 1
        self._send(channel, answer[0], answer[1], False)
        return True

    def _route(self, command: str, path: str, routes: Mapping | None = None) -> tuple[Any, str]:
        """The handler of ``path`` in ``routes`` (the inline ones unless
        given) and its parameter: an exact route first, then ``/prefix/*``
        for the path's last segment."""
        routes = self._routes if routes is None else routes
        handler = routes.get((command, path))
        if handler is not None:
            return handler, ""
        head, _, tail = path.rpartition("/")
        return routes.get((command, head + "/*")), tail

    def _answer(self, channel, request) -> InlineAnswer | Later | None:
        """The inline answer, or None: the WSGI app serves the request. A
        request with a query string is its route's waiting handler's; a GET
        with one and no such handler, ``parked_reads``'."""
        if request.error:
            # waitress's error answer (a 400 of its own): the request line
            # may not have been read, so it has no path or query.
            return None
        routes = self._waiting if request.query else self._routes
        handler, param = self._route(request.command, request.path, routes)
        if handler is None and request.query and self._parked_reads is not None:
            try:
                return self._parked_reads(channel, request)
            except Exception:
                log.exception("parked read of %s failed", request.path)
                return None
        if (
            handler is None
            or request.version != "1.1"
            or request.chunked
            or request.content_length > INLINE_MAX_BODY
        ):
            return None
        try:
            if request.query:
                return handler(request.headers, request.query, param)
            # get() leaves the buffer as it was: the WSGI app reads it again
            # if the handler declines.
            body = request.body_rcv.getbuf().get() if request.body_rcv is not None else b""
            return handler(request.headers, body, param)
        except Exception:
            # The ordinary path answers it (and reports what is wrong).
            log.exception("inline %s %s failed", request.command, request.path)
            return None

    def _http_date(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, build_http_date(now).encode("latin-1"))
        return self._date[1]

    def _send(
        self,
        channel,
        body: bytes,
        headers: Mapping[str, str],
        close: bool,
        status: bytes = b"200 OK",
    ) -> None:
        held = self._held
        if held is not None and held.hold(self, channel, body, headers, close):
            return
        self._send_now(channel, body, headers, close, status)

    def _send_now(
        self,
        channel,
        body: bytes,
        headers: Mapping[str, str],
        close: bool,
        status: bytes = b"200 OK",
        content_type: bytes = b"application/json",
    ) -> None:
        ident = channel.server.adj.ident
        data = b"HTTP/1.1 %s\r\nContent-Length: %d\r\n" % (status, len(body))
        data += b"Content-Type: %s\r\nDate: %s\r\n" % (content_type, self._http_date())
        for name, value in headers.items():
            data += b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
        if ident:
            data += b"Server: %s\r\n" % ident.encode("latin-1")
        if close:
            data += b"Connection: close\r\n"
        data += b"\r\n" + body
        with channel.outbuf_lock:
            if not channel.total_outbufs_len:
                # Nothing queued before it: straight to the socket (0 when
                # it would block); waitress's buffers take what is left.
                try:
                    data = data[channel.send(data) :]
                except OSError:
                    pass  # the buffered send below meets it again and closes
            if data and channel.connected:  # a send that found it gone closed it
                channel.outbufs[-1].append(data)
                channel.current_outbuf_count += len(data)
                channel.total_outbufs_len += len(data)
                channel._flush_exception(channel._flush_some)
        channel.last_activity = time.time()


class _HeldAnswers:
    """The inline answers of one loop turn, held while its writes are not
    committed (``TurnWrites``); the loop's turn hooks."""

    def __init__(self, writes: TurnWrites):
        self._writes = writes
        self._answers: list[tuple[_InlineTasks, object, bytes, Mapping[str, str], bool]] = []

    def start(self) -> None:
        self._writes.start()

    def hold(self, tasks: _InlineTasks, channel, body: bytes, headers, close: bool) -> bool:
        if not self._writes.pending():
            return False
        self._answers.append((tasks, channel, body, headers, close))
        return True

    def end(self) -> None:
        failed = self._writes.end()
        answers, self._answers = self._answers, []
        if failed is None:
            for tasks, channel, body, headers, close in answers:
                tasks._send(channel, body, headers, close)
            return
        # Computed on writes that are not in the database: each gets their
        # error, as the routes render one (orch.httpjson.Router).
        status = HTTPStatus(failed.status)
        line = b"%d %s" % (status.value, status.phrase.encode())
        error = fastjson.dumps(failed.to_dict())
        for tasks, channel, _body, _headers, close in answers:
            tasks._send(channel, error, _NO_HEADERS, close, line)


_NO_HEADERS: Mapping[str, str] = {}


def use_orch_channels(
    http,
    inline: Mapping[tuple[str, str], Inline] | None = None,
    writes: TurnWrites | None = None,
    waiting: Mapping[tuple[str, str], Waiting] | None = None,
    parked_reads: ParkedReads | None = None,
) -> None:
    """Make every listener of a waitress server (``create_server``'s result)
    open its connections as ``_Channel``, and loop with epoll if it was made
    with ``orch.wsgiloop.socket_map()``; ``inline`` maps (method, path) to
    handlers answered without a worker thread (a path ending ``/*``: any one
    last segment, which the handler gets). ``writes``: the inline routes'
    writes of one epoll turn are committed together (``TurnWrites``);
    ``waiting``: handlers of the same inline routes asked with a query string;
    ``parked_reads``: any other GET with one (blocking queries parked)."""
    # One listening server per address (a name may resolve to several).
    listeners = http.map if isinstance(http, MultiSocketServer) else http._map
    held = None
    if isinstance(listeners, EpollMap):
        # waitress's run() loops through this attribute: epoll, not select.
        http.asyncore = Asyncore
        if writes is not None and inline:
            held = listeners.turns = _HeldAnswers(writes)
    for dispatcher in list(listeners.values()):
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = _Channel
            if inline:
                dispatcher.add_task = _InlineTasks(
                    dispatcher.add_task, inline, held, waiting, parked_reads
                )
