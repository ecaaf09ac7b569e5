"""The routes waitress answers on its I/O thread (``orch.wsgichannel``'s
inline routes): today one, ``POST /heartbeat`` when the beat changes nothing
durable.

Such a beat - the node known and healthy, no allocation report, no repair
due - is most of what a server hears: 5,000 nodes every 10 s are 500 a
second. Through the WSGI app each one paid for a handover to a worker thread
and back, a WSGI environ, bottle's request and response objects and the
route's checks: about three quarters of its CPU (bench/README.md). Here it is
answered from memory by the thread that parsed it, after the same checks the
route makes (token, cross-origin, body size, leadership). Any beat this
declines takes the ordinary route, which answers it as before and reports
what is wrong with it.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orch.server.server import Server
    from orch.wsgichannel import Inline


def inline_routes(server: Server) -> dict[tuple[str, str], Inline]:
    """(method, path) -> the handler ``orch.wsgichannel`` calls inline."""
    token = server.config.token
    expected = f"Bearer {token}".encode() if token else None
    max_body = server.config.max_body_bytes

    def heartbeat(headers: Mapping[str, str], body: bytes) -> bytes | None:
        # The route's checks, in its order; a request that would fail one
        # goes to the route, which refuses it with the right error.
        if "ORIGIN" in headers or len(body) > max_body:
            return None
        if expected is not None and not hmac.compare_digest(
            headers.get("AUTHORIZATION", "").encode(), expected
        ):
            return None
        # A follower redirects beats to the leader: the route does that.
        if not server.leadership.is_leader():
            return None
        answer = server.quiet_heartbeat(body)
        if answer is None:
            return None
        return json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()

    return {("POST", "/heartbeat"): heartbeat}
