"""Blocking queries of every other read, parked: orch's lists, the /v1 face.

orch's job and allocation reads wait parked on the I/O loop with their
answer read there (``orch.server.inline``). Every other blocking read
(``GET /jobs?index=``, ``GET /v1/...?index=``) held a worker thread while it
waited, 4 at once (``changes.MAX_BLOCKING``); past that each was answered
at once, unchanged, and a client that loops spun.

Here such a GET waits parked too (``orch.wsgipark``), if its route is a
blocking read (registered ``blocking=True``: orch's ``GET /jobs``, every
/v1 JSON read; never a stream, whose answer would not end). Its answer is its
route's, computed by the WSGI app on a thread of this module's own, asked
without ``index`` and ``wait`` (so the route answers at once, with the
index it has now). The answer is sent when its index passes the client's,
when it is not a 200 with an index (an error, a read that does not block),
or when ``wait`` runs out. Otherwise the request waits for the next change
it may see, and the route is asked again: a change to its job, for a route
of one job or of an allocation or evaluation of one (its index moves with
nothing else); any change for the others (a list's index moves with every
write). A change while it computes asks it once more after.

Reads of one shape (path, query and headers) share a computation: one made
since the last change answers every such read that asks (64 clients of a
list woken by one write cost one read of it, not 64). The computations of
all parked reads share ``THREADS`` threads: a busy cluster's changes make
them read as often as the threads can, as the thread-held waits did, but no
waiter is answered unchanged before its time.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import bottle

from orch.server.blocking import HEADER as ORCH_INDEX
from orch.server.blocking import split_query
from orch.server.changes import ChangeFeed
from orch.wsgipark import PENDING, Declined, Later, Response

if TYPE_CHECKING:
    from orch.server.state import StateStore

log = logging.getLogger(__name__)

# Threads that compute parked reads' answers (started when first needed).
THREADS = 2
NOMAD_INDEX = "X-Nomad-Index"
# Headers the connection writes itself.
_OWN_HEADERS = frozenset(("content-type", "content-length", "connection", "date", "server"))


def split_blocking(query: str) -> tuple[int, float, str] | None:
    """(index, wait, the query without them) of a blocking GET; None when it
    does not block (no index, or 0) or the route must read it (a value
    given twice, escaped, or one the route refuses: its 400)."""
    split = split_query(query)
    return split if split is not None and split[0] > 0 else None


JobOf = Callable[[dict[str, str]], "str | None"]


def job_of_route(store: StateStore) -> JobOf:
    """The job a route's URL arguments name (its own, or its allocation's or
    evaluation's), None for any other: a dict read, no lock."""

    def job_of(args: dict[str, str]) -> str | None:
        if "job_id" in args:
            return args["job_id"]
        if "alloc_id" in args:
            alloc = store.get_alloc(args["alloc_id"])
            return alloc.job_id if alloc is not None else None
        if "eval_id" in args:
            ev = store.get_eval(args["eval_id"])
            return ev.job_id if ev is not None else None
        return None

    return job_of


class ParkedReads:
    """The ``parked_reads`` of the server's connections (``orch.wsgichannel``)."""

    def __init__(self, app, feed: ChangeFeed, job_of: JobOf | None = None, threads: int = THREADS):
        self._app = app
        self._feed = feed
        self._job_of = job_of
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="parked-read")
        # A read's shape -> its computation at the feed's index (only the
        # current index's are kept: no other can answer a read).
        self._shared: dict[tuple, _Shared] = {}
        self._lock = threading.Lock()

    def __call__(self, channel, request) -> Later | None:
        """Park ``request`` (a GET with a query, on ``channel``), or None:
        its route answers it on a worker, as before."""
        if request.command != "GET" or request.content_length or self._feed.closed:
            return None
        asked = split_blocking(request.query)
        if asked is None:
            return None
        after, wait_s, rest = asked
        # waitress's own WSGI environ for it, asked without index and wait.
        environ = channel.task_class(channel, request).get_environment()
        args = self._blocking(environ)
        if args is None:
            return None
        job = self._job_of(args) if self._job_of is not None else None
        environ["QUERY_STRING"] = rest
        headers = tuple(sorted((k, v) for k, v in environ.items() if k.startswith("HTTP_")))
        shape = (environ["PATH_INFO"], rest, headers)
        return _Read(self, environ, shape, after, time.monotonic() + wait_s, job).later()

    def _blocking(self, environ: dict) -> dict[str, str] | None:
        """The URL arguments of the request's route if it is a blocking read
        (its config says so), else None: only those are computed here, never
        a stream, which would not end."""
        if not environ["PATH_INFO"].isascii():
            return None  # bottle decodes it otherwise: its route reads it
        try:
            route, args = self._app.router.match(environ)
        except bottle.HTTPError:
            return None
        return args if route.config.get("blocking") else None

    def compute(self, environ: dict) -> Response:
        """The app's answer to a copy of ``environ`` (on a pool thread)."""
        environ = dict(environ)
        environ["wsgi.input"] = io.BytesIO()
        started: list[Any] = []

        def start_response(status, headers, exc_info=None):
            started[:] = [status, headers]

        chunks = self._app(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        status, headers = started
        content_type = "application/json"
        kept: dict[str, str] = {}
        for name, value in headers:
            lower = name.lower()
            if lower == "content-type":
                content_type = value
            elif lower not in _OWN_HEADERS:
                kept[name] = value
        return Response(status.encode("latin-1"), content_type.encode("latin-1"), body, kept)

    def ask(self, read: _Read) -> bool:
        """On the loop's thread: ``read``'s answer as of the feed's index
        now. True if one is ready (set on it); else it is told when its
        computation (maybe another read's) is done."""
        index = self._feed.index
        with self._lock:
            shared = self._shared.get(read.shape)
            if shared is not None and shared.index == index:
                if shared.done:
                    read.computed(shared.result, tell=False)
                    return True
                shared.readers.append(read)
                return False
            shared = _Shared(index, [read])
            self._shared = {
                shape: kept
                for shape, kept in self._shared.items()
                if kept.index == index or not kept.done
            }
            self._shared[read.shape] = shared
        self._pool.submit(self._compute, read.environ, shared)
        return False

    def _compute(self, environ: dict, shared: _Shared) -> None:
        result: Response | None = None
        try:
            result = self.compute(environ)
        except Exception:
            log.exception("a parked read's answer failed")
        with self._lock:
            shared.result, shared.done = result, True
            readers, shared.readers = shared.readers, []
        for read in readers:
            read.computed(result)

    @property
    def feed(self) -> ChangeFeed:
        return self._feed

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Shared:
    """One computation of a read's shape at one feed index, and the reads
    that wait for it."""

    __slots__ = ("index", "readers", "result", "done")

    def __init__(self, index: int, readers: list[_Read]):
        self.index = index
        self.readers = readers
        self.result: Response | None = None  # None when done: it failed
        self.done = False


class _Read:
    """One parked read: its last answer, and whether one is being computed
    or the state changed since it was (the loop's thread decides; a pool
    thread computes)."""

    def __init__(
        self,
        reads: ParkedReads,
        environ: dict,
        shape: tuple,
        after: int,
        deadline: float,
        job: str | None,
    ):
        self._reads = reads
        self._jobs = [job] if job is not None else None  # None: any change
        self.environ = environ
        self.shape = shape
        self._after = after
        self._deadline = deadline
        self._waker: Any = None
        self._computing = False
        self._changed = True  # nothing computed yet
        self._failed = False
        self._result: Response | None = None
        self._lock = threading.Lock()  # _changed: set by writers, read by the loop

    def later(self) -> Later:
        return Later(self._deadline, self._watch, self._unwatch, self._answer)

    def set(self) -> None:
        """A state change (the writer's thread, under the feed's lock)."""
        with self._lock:
            self._changed = True
        waker = self._waker
        if waker is not None:
            waker.set()

    def _watch(self, waker) -> None:
        self._waker = waker
        if self._jobs is None:
            self._reads.feed.watch_any(self)
        else:
            self._reads.feed.watch(self._jobs, self)
        waker.set()  # the first computation

    def _unwatch(self, _waker) -> None:
        if self._jobs is None:
            self._reads.feed.unwatch_any(self)
        else:
            self._reads.feed.unwatch(self._jobs, self)

    def _answer(self) -> Response | None:
        """On the loop's thread: the answer to send, or PENDING."""
        if self._failed:
            raise Declined  # the route answers it (and logs what failed)
        if self._computing:
            return PENDING
        result = self._result
        late = time.monotonic() >= self._deadline or self._reads.feed.closed
        if result is not None and (late or self._settled(result)):
            return result
        with self._lock:
            changed, self._changed = self._changed, False
        if not changed:
            return PENDING
        self._computing = True
        if self._reads.ask(self):
            return self._answer()  # one computed since the last change
        return PENDING

    def _settled(self, result: Response) -> bool:
        """Whether ``result`` answers the query before its wait is out."""
        if not result.status.startswith(b"200"):
            return True
        headers = result.headers
        index = headers.get(ORCH_INDEX)
        if index is not None and self._after > self._reads.feed.index:
            return True  # an orch index from before a restart: at once, as the route
        if index is None:
            index = headers.get(NOMAD_INDEX)
        if index is None or not index.isdigit():
            return True  # a read that does not block
        return int(index) > self._after

    def computed(self, result: Response | None, tell: bool = True) -> None:
        """Its answer (None: the computation failed), from the thread that
        computed it (``tell``: the loop is told) or the loop's own."""
        if result is None:
            self._failed = True
        else:
            self._result = result
        self._computing = False
        waker = self._waker
        if tell and waker is not None:
            waker.set()
