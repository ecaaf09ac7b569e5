"""Blocking queries on orch's own reads: ``GET /jobs/<id>?index=N&wait=30s``.

As Nomad's (and the /v1 face's, over the same ``ChangeFeed``): a read
answers with its index in ``X-Orch-Index``; the same read sent with
``?index=N`` is answered at once if the index is past N, otherwise when it
passes N or ``wait`` runs out (5 min unless given, at most 10), the answer
then unchanged with the same index. A job's index moves with every write to
the job, its allocations, evaluations, deployments or child jobs, and only
those wake a query on it; a list's moves with any write. The body is what
the read answers without ``index``: a client that sends none sees nothing
new but the header. An index above the server's own (one from before a
restart, or from another server) is answered at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bottle

from orch.errors import ValidationError
from orch.nomad.http import integer, parse_integer, parse_wait, wait_seconds
from orch.server.changes import ChangeFeed

HEADER = "X-Orch-Index"

Read = Callable[[], Any]


def answer(feed: ChangeFeed, settle: Callable[[], None], jobs: list[str] | None, read: Read):
    """``read()``'s answer with its index, blocking while ``?index=`` says so.

    ``jobs``: the jobs whose index is the answer's (a write to a child moves
    its parent's too); None for a list, whose index is the feed's.
    The index is taken before the read, and ``settle`` (the store's: no write
    half applied) between them, so an answer is never older than its index:
    a client asking past it cannot miss a change."""

    def index() -> int:
        if jobs is None:
            return feed.index
        return max(feed.job_index(job_id) for job_id in jobs)

    def indexed() -> tuple[Any, int]:
        at = index()
        settle()
        return read(), at

    at: int | None
    # wait is read only with index: without it the read is the seed's, as it was.
    if "index" not in bottle.request.query:
        payload, at = indexed()
    else:
        after = integer("index")
        wait = wait_seconds()
        after = after if after <= feed.index else 0  # from before a restart: at once
        if jobs is None:
            payload, at = feed.block(indexed, after, wait)
        else:
            payload, at = feed.block_on(jobs, indexed, after, wait)
    bottle.response.set_header(HEADER, str(at))
    return payload


def asked(query: str) -> tuple[int, float] | None:
    """(index, wait) of a raw query string as ``answer`` reads them from
    bottle's, index 0 if it asks no wait; None for anything else (another
    parameter, one given twice, an escape, a value the route refuses):
    the route reads that one itself. For the routes answered inline."""
    split = split_query(query)
    if split is None or split[2]:
        return None
    return split[0], split[1]


def split_query(query: str) -> tuple[int, float, str] | None:
    """(index, wait, the rest of the query) of a raw query string as the
    routes read them; (0, 0.0, rest) if it gives no index; None if the
    route must read it itself (index or wait given twice or escaped, or a
    value it refuses: its 400)."""
    given: dict[str, str] = {}
    kept: list[str] = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name not in ("index", "wait"):
            kept.append(part)
        elif name in given or "%" in value or "+" in value:
            return None
        else:
            given[name] = value
    if "index" not in given:
        return 0, 0.0, "&".join(kept)
    try:
        after = parse_integer(given["index"], "index")
        return after, parse_wait(given.get("wait")), "&".join(kept)
    except ValidationError:
        return None
