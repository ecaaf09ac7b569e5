"""The routes waitress answers on its I/O thread (``orch.wsgichannel``'s
inline routes): ``POST /heartbeat`` when the beat changes nothing durable,
the plain reads ``GET /jobs/<id>`` and ``GET /allocations/<id>``, and
``POST /jobs`` on SQLite while no write holds the store.

Such a beat - the node known and healthy, no allocation report, no repair
due - is most of what a server hears: 5,000 nodes every 10 s are 500 a
second. A job's read is the other request every job costs (its submitter
asking how it went). Through the WSGI app each one paid for a handover to a
worker thread and back, a WSGI environ, bottle's request and response
objects and the route's checks: more than the request's own work
(bench/README.md). Here it is answered from memory by the thread that parsed
it, after the same checks the route makes (token, cross-origin, body size,
leadership for beats), with the route's body and ``X-Orch-Index``. Anything
this declines - an unknown id (the route's 404), a query string (a blocking
query), a write holding the store - takes the ordinary route, which answers
it as before and reports what is wrong with it.

A submit is the one write answered here. Through a worker it cost two
thread hand-offs (the I/O thread wakes a worker, the worker's answer wakes
the I/O thread) on top of its own work, and the worker then mostly waited
for the GIL the I/O thread held; here the thread that parsed it validates
it and commits it under the store's lock, taken if it comes free within
SUBMIT_LOCK_WAIT (else the submit goes to a worker, which waits for the
lock as before). Only waiting for it pays: the I/O thread most often runs
because a writer let go of the GIL to commit, still holding the lock; not
waiting, 95% of a batch's submits went to a worker all the same. The
answer still goes out after the commit: an acknowledged job survives
kill -9 as before. SQLite only: its commit is a local write of a
few pages (no fsync in WAL with synchronous=NORMAL); PostgreSQL's is a
round trip to the database, which must not stall the I/O thread.

A beat that reports allocation changes (a task running, finished) is the
other write answered here, on SQLite: the
running report a submitter waits for paid the same two hand-offs on its way
(``NodeOps.inline_heartbeat``; it waits for the store's lock as a submit
does, and leaves a suspect node, a node coming back and a full beat to the
route).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from orch import fastjson
from orch.errors import OrchError
from orch.server.api import SUBMITTED, alloc_detail, job_detail
from orch.server.blocking import HEADER, asked
from orch.validation import document
from orch.wsgipark import Declined, Later

if TYPE_CHECKING:
    from orch.server.server import Server
    from orch.wsgichannel import Inline, InlineAnswer, Waiting

_NO_HEADERS: Mapping[str, str] = {}
# How long a submit answered inline waits for the store's lock, at most,
# before it goes to a worker (the I/O thread serves nobody meanwhile).
SUBMIT_LOCK_WAIT = 0.002


def inline_routes(server: Server) -> dict[tuple[str, str], Inline]:
    """(method, path) -> the handler ``orch.wsgichannel`` calls inline."""
    return server_routes(server)[0]


def server_routes(
    server: Server,
) -> tuple[dict[tuple[str, str], Inline], dict[tuple[str, str], Waiting]]:
    """The inline routes, and the handlers of their reads asked as blocking
    queries ((method, path) -> handler, both)."""
    token = server.config.token
    expected = f"Bearer {token}".encode() if token else None
    max_body = server.config.max_body_bytes

    def allowed(headers: Mapping[str, str]) -> bool:
        """The route's checks would pass: no Origin (a browser's request goes
        the whole way), the token if one is set."""
        if "ORIGIN" in headers:
            return False
        return expected is None or hmac.compare_digest(
            headers.get("AUTHORIZATION", "").encode(), expected
        )

    # Reports are committed here on SQLite only, as a submit is (below).
    report_wait = None if server.store.backend.shared else SUBMIT_LOCK_WAIT

    def heartbeat(headers: Mapping[str, str], body: bytes, _param: str) -> InlineAnswer | None:
        # The route's checks, in its order; a request that would fail one
        # goes to the route, which refuses it with the right error.
        if len(body) > server.config.node_max_body_bytes or not allowed(headers):
            return None
        # A follower redirects beats to the leader: the route does that.
        if not server.leadership.is_leader():
            return None
        try:
            answer = server.inline_heartbeat(body, report_wait)
        except OrchError:
            return None  # the route folds in what is left and reports the error
        if answer is None:
            return None
        return fastjson.dumps(answer), _NO_HEADERS

    store = server.store

    def submit(headers: Mapping[str, str], body: bytes, _param: str) -> InlineAnswer | None:
        if len(body) > max_body or not allowed(headers):
            return None
        # The lock first, so that a submit that must wait is parsed once,
        # by the worker that waits. A short wait: the I/O thread most often
        # gets the GIL from a writer that let go of it to commit, still
        # holding the lock for a few more microseconds.
        with store.settled_now(SUBMIT_LOCK_WAIT) as free:
            if not free or not server.leadership.is_leader():
                return None
            try:
                job, ev = server.submit_job(document.loads(body))
            except OrchError:
                # Refused before anything was written (a 400, a full disk):
                # the route does it again and answers with the error.
                return None
        answer = {"job_id": job.job_id, "evaluation_id": ev.eval_id, "message": SUBMITTED}
        return fastjson.dumps(answer), _NO_HEADERS

    read_job, wait_job = _reader(server, allowed, store.get_job, lambda job: job.job_id, job_detail)
    read_alloc, wait_alloc = _reader(
        server, allowed, store.get_alloc, lambda alloc: alloc.job_id, alloc_detail
    )
    routes: dict[tuple[str, str], Inline] = {
        ("POST", "/heartbeat"): heartbeat,
        ("GET", "/jobs/*"): read_job,
        ("GET", "/allocations/*"): read_alloc,
    }
    if not store.backend.shared:
        routes[("POST", "/jobs")] = submit
    waiting: dict[tuple[str, str], Waiting] = {
        ("GET", "/jobs/*"): wait_job,
        ("GET", "/allocations/*"): wait_alloc,
    }
    return routes, waiting


def _reader(
    server: Server,
    allowed: Callable[[Mapping[str, str]], bool],
    find: Callable[[str], Any],
    job_of: Callable[[Any], str],
    detail: Callable[[Server, Any], dict],
) -> tuple[Inline, Waiting]:
    """A read answered as its route answers it: the body ``detail`` builds
    and the index of the job it belongs to; and the same read asked with
    ``?index=&wait=``, which waits for the job's next change parked on the
    I/O loop (``orch.wsgipark``) rather than on a worker thread."""
    store = server.store
    feed = store.changes

    def lookup(param: str) -> InlineAnswer | None | Literal[False]:
        """The answer; None if the store is busy; False if nothing is found."""
        # The route takes its index, settles (no write half applied), reads:
        # here the store's lock, taken only if free, holds writes off for both.
        with store.settled_now() as settled:
            if not settled:
                return None
            found = find(param)
            if found is None:
                return False
            at = feed.job_index(job_of(found))
            payload = detail(server, found)
        return fastjson.dumps(payload), {HEADER: str(at)}

    def read(headers: Mapping[str, str], _body: bytes, param: str) -> InlineAnswer | None:
        # bottle decodes the path as UTF-8, waitress as Latin-1: only an
        # ASCII id is the same id to both.
        if not param.isascii() or not allowed(headers):
            return None
        return lookup(param) or None

    def wait(headers: Mapping[str, str], query: str, param: str) -> InlineAnswer | Later | None:
        query_asks = asked(query)
        if query_asks is None or not param.isascii() or not allowed(headers):
            return None
        after, wait_s = query_asks
        if after <= 0 or after > feed.index or feed.closed:
            return lookup(param) or None  # at once, as the route answers it
        found = find(param)  # a dict read: its job's id needs no lock
        if found is None:
            return None  # the route's 404
        jobs = [job_of(found)]
        if feed.job_index(jobs[0]) > after:
            return lookup(param) or None

        def watch(waker) -> None:
            feed.watch(jobs, waker)
            # Registered before this look: a change in between woke it too.
            if feed.job_index(jobs[0]) > after or feed.closed:
                waker.set()
            else:
                feed.tell_waiting(jobs)

        def answer() -> InlineAnswer | None:
            found = lookup(param)
            if found is False:
                raise Declined  # gone meanwhile: the route's 404
            return found

        return Later(time.monotonic() + wait_s, watch, lambda w: feed.unwatch(jobs, w), answer)

    return read, wait
