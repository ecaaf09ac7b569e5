"""The routes waitress answers on its I/O thread (``orch.wsgichannel``'s
inline routes): ``POST /heartbeat`` when the beat changes nothing durable,
and the plain reads ``GET /jobs/<id>`` and ``GET /allocations/<id>``.

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
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from orch.httpjson import dumps
from orch.server.api import alloc_detail, job_detail
from orch.server.blocking import HEADER

if TYPE_CHECKING:
    from orch.server.server import Server
    from orch.wsgichannel import Inline, InlineAnswer

_NO_HEADERS: Mapping[str, str] = {}


def inline_routes(server: Server) -> dict[tuple[str, str], Inline]:
    """(method, path) -> the handler ``orch.wsgichannel`` calls inline."""
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

    def heartbeat(headers: Mapping[str, str], body: bytes, _param: str) -> InlineAnswer | None:
        # The route's checks, in its order; a request that would fail one
        # goes to the route, which refuses it with the right error.
        if len(body) > max_body or not allowed(headers):
            return None
        # A follower redirects beats to the leader: the route does that.
        if not server.leadership.is_leader():
            return None
        answer = server.quiet_heartbeat(body)
        if answer is None:
            return None
        return dumps(answer).encode(), _NO_HEADERS

    store = server.store
    read_job = _reader(server, allowed, store.get_job, lambda job: job.job_id, job_detail)
    read_alloc = _reader(server, allowed, store.get_alloc, lambda alloc: alloc.job_id, alloc_detail)
    return {
        ("POST", "/heartbeat"): heartbeat,
        ("GET", "/jobs/*"): read_job,
        ("GET", "/allocations/*"): read_alloc,
    }


def _reader(
    server: Server,
    allowed: Callable[[Mapping[str, str]], bool],
    find: Callable[[str], Any],
    job_of: Callable[[Any], str],
    detail: Callable[[Server, Any], dict],
) -> Inline:
    """A read answered as its route answers it without ``?index=``: the body
    ``detail`` builds and the index of the job it belongs to."""
    store = server.store

    def read(headers: Mapping[str, str], _body: bytes, param: str) -> InlineAnswer | None:
        # bottle decodes the path as UTF-8, waitress as Latin-1: only an
        # ASCII id is the same id to both.
        if not param.isascii() or not allowed(headers):
            return None
        # The route takes its index, settles (no write half applied), reads:
        # here the store's lock, taken only if free, holds writes off for both.
        with store.settled_now() as settled:
            found = find(param) if settled else None
            if found is None:
                return None
            at = store.changes.job_index(job_of(found))
            payload = detail(server, found)
        return dumps(payload).encode(), {HEADER: str(at)}

    return read
