"""The agent's routes waitress answers on its I/O thread (``orch.wsgichannel``'s
inline routes): the server's pushes, ``POST /allocations`` and
``POST /allocations/batch``.

A push is what every job costs the agent: through the WSGI app it paid for
a handover to a worker thread and back, a WSGI environ and bottle's request
and response objects, around work that takes less (the allocation written,
its task's start sent to the supervisor without waiting for it). Here the
thread that parsed it accepts it, after the route's checks (no Origin, the
token, the body size), and answers with the route's body. What the route
would refuse (a bad body, a bad allocation, a batch out of bounds) is
declined and takes the route, which answers it as before. The work done
here is the route's: a file write, a task dir, a line to the supervisor
(no waiting on a task, a lock held for long, or the network); a supervisor
not yet started (the first start after the agent's own start) is started
first, once.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING

from orch import fastjson
from orch.agent.api import BATCH_MAX, MAX_BODY, batch_answer
from orch.agent.spec import parse_alloc
from orch.errors import OrchError
from orch.validation import document

if TYPE_CHECKING:
    from orch.agent.agent import Agent
    from orch.wsgichannel import Inline, InlineAnswer

_NO_HEADERS: Mapping[str, str] = {}


def inline_routes(agent: Agent) -> dict[tuple[str, str], Inline]:
    """(method, path) -> the handler ``orch.wsgichannel`` calls inline."""
    token = agent.config.token
    expected = f"Bearer {token}".encode() if token else None

    def body_of(headers: Mapping[str, str], body: bytes) -> object | None:
        """The parsed body if the route's checks would pass, else None."""
        if "ORIGIN" in headers or len(body) > MAX_BODY or not body.strip():
            return None
        if expected is not None and not hmac.compare_digest(
            headers.get("AUTHORIZATION", "").encode(), expected
        ):
            return None
        try:
            return document.loads(body)
        except OrchError:
            return None

    def push(headers: Mapping[str, str], body: bytes, _param: str) -> InlineAnswer | None:
        doc = body_of(headers, body)
        if doc is None:
            return None
        try:
            spec = parse_alloc(doc)
        except OrchError:
            return None  # the route says what is wrong with it
        agent.submit(spec)
        answer = {"message": "Allocation accepted", "allocation_id": spec.allocation_id}
        return fastjson.dumps(answer), _NO_HEADERS

    def push_batch(headers: Mapping[str, str], body: bytes, _param: str) -> InlineAnswer | None:
        doc = body_of(headers, body)
        items = doc.get("allocations") if isinstance(doc, dict) else None
        if not isinstance(items, list) or not 0 < len(items) <= BATCH_MAX:
            return None
        return fastjson.dumps(batch_answer(agent, items)), _NO_HEADERS

    return {
        ("POST", "/allocations"): push,
        ("POST", "/allocations/batch"): push_batch,
    }
