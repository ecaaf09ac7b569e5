"""Blocking queries on orch's own reads: ``GET /jobs/<id>?index=N&wait=30s``.

As Nomad's (and the /v1 face's, over the same ``ChangeFeed.block``): a read
answers with its index in ``X-Orch-Index``; the same read sent with
``?index=N`` is answered at once if the index is past N, otherwise when it
passes N or ``wait`` runs out (5 min unless given, at most 10), the answer
then unchanged with the same index. A job's index moves with every write to
the job, its allocations or evaluations; a list's with any write. The body
is what the read answers without ``index``: a client that sends none sees
nothing new but the header. An index above the server's own (one from before
a restart, or from another server) is answered at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bottle

from orch.nomad.http import integer, wait_seconds
from orch.server.changes import ChangeFeed

HEADER = "X-Orch-Index"

Read = Callable[[], Any]


def answer(feed: ChangeFeed, settle: Callable[[], None], index: Callable[[], int], read: Read):
    """``read()``'s answer with its index, blocking while ``?index=`` says so.

    The index is taken before the read, and ``settle`` (the store's: no write
    half applied) between them, so an answer is never older than its index:
    a client asking past it cannot miss a change."""

    def indexed() -> tuple[Any, int]:
        at = index()
        settle()
        return read(), at

    after = integer("index")
    # wait is read only with index: without it the read is the seed's, as it was.
    if "index" in bottle.request.query:
        wait = wait_seconds()
        payload, at = feed.block(indexed, after if after <= feed.index else 0, wait)
    else:
        payload, at = indexed()
    bottle.response.set_header(HEADER, str(at))
    return payload
