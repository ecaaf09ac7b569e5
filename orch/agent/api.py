"""The agent's HTTP API (seed routes + logs + stats + health): parse, call Agent, return.

Every answer is JSON except a log body; errors are `{"error": ...}` through
the shared orch.httpjson router. With a token set, only callers that present
it (the server) can create, read or stop allocations.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, BinaryIO

from bottle import Bottle, request, response

from orch import httpjson
from orch.agent import stats
from orch.agent.spec import parse_alloc
from orch.agent.state import LOG_TYPES
from orch.errors import OrchError, ValidationError
from orch.openapi import AGENT_SPEC
from orch.validation import fields

if TYPE_CHECKING:
    from orch.agent.agent import Agent

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
BATCH_MAX = 256  # allocations in one POST /allocations/batch
MAX_ID = 128  # characters of an allocation id in a batch stop
MAX_LOG_CHUNK = 1 << 20  # a log read returns at most this; the client pages


def make_app(agent: Agent) -> Bottle:
    """A bottle app serving `agent` (an orch.agent.agent.Agent)."""
    app = Bottle()
    route = httpjson.Router(app, token=agent.config.token, max_body=MAX_BODY)

    @route("POST", "/allocations")
    def create_allocation():
        spec = parse_alloc(httpjson.read_json())
        agent.submit(spec)
        return {"message": "Allocation accepted", "allocation_id": spec.allocation_id}

    @route("POST", "/allocations/batch")
    def create_allocations():
        """Several allocations in one call: each accepted or refused on its own."""
        return batch_answer(agent, _batch(httpjson.read_json()))

    @route("POST", "/allocations/stop")
    def stop_allocations():
        """Several stops in one call, carried out side by side: a result per allocation."""
        results = agent.stop_allocs(_alloc_ids(httpjson.read_json()))
        return {"message": "Allocations stopped and removed", "allocations": results}

    @route("POST", "/allocations/hurry")
    def hurry_allocations():
        """A client waits on these allocations (the server saw a blocking read
        of their batch job): their reports go at once, not batched."""
        return {"hurried": agent.hurry(_alloc_ids(httpjson.read_json()))}

    @route("GET", "/allocations/<alloc_id>")
    def get_allocation(alloc_id):
        return agent.get(alloc_id).to_dict()

    @route("DELETE", "/allocations/<alloc_id>")
    def delete_allocation(alloc_id):
        agent.stop_alloc(alloc_id)
        return {"message": f"Allocation {alloc_id} stopped and removed"}

    @route("GET", "/allocations/<alloc_id>/stats")
    def allocation_stats(alloc_id):
        return stats.alloc_stats(agent.get(alloc_id))

    @route("GET", "/allocations/<alloc_id>/logs/<task>", raw=True)
    def task_logs(alloc_id, task):
        kind = request.query.get("type") or "stdout"
        if kind not in LOG_TYPES:
            raise ValidationError("type: must be stdout or stderr")
        offset = fields.query_offset(request.query.get("offset"))
        path = agent.log_path(alloc_id, task, kind)
        data = _read_from(path, offset)
        response.content_type = "text/plain; charset=utf-8"
        response.set_header("X-Orch-Next-Offset", str(offset + len(data)))
        return data

    @route("GET", "/health", public=True)
    def health():
        return agent.health()

    @route("GET", "/openapi.json")
    def openapi():
        return AGENT_SPEC

    return app


def batch_answer(agent: Agent, items: list) -> dict:
    """Submit a batch's allocations, each accepted or refused on its own: the answer."""
    results: dict[str, object] = {}
    for i, item in enumerate(items):
        alloc_id = item.get("allocation_id") if isinstance(item, dict) else None
        key = alloc_id if isinstance(alloc_id, str) else f"#{i}"
        try:
            agent.submit(parse_alloc(item))
        except OrchError as exc:
            results[key] = {"error": str(exc)}
            continue
        results[key] = "accepted"
    refused = sum(1 for v in results.values() if v != "accepted")
    # At batch rates a push carries one or two allocations: an INFO line per
    # push cost the push thread as much as writing the allocation's file.
    # A refusal is worth a line; an acceptance is DEBUG, as submit's own.
    log.log(
        logging.INFO if refused else logging.DEBUG,
        "push accepted=%d refused=%d",
        len(results) - refused,
        refused,
    )
    return {"message": "Allocations accepted", "allocations": results}


def _batch(body) -> list:
    """The list of a POST /allocations/batch body, bounded."""
    items = fields.obj(body, "body").get("allocations")
    if not isinstance(items, list) or not 0 < len(items) <= BATCH_MAX:
        raise ValidationError(f"allocations: must be a list of 1 to {BATCH_MAX} allocations")
    return items


def _alloc_ids(body) -> list[str]:
    """The allocation ids of a POST /allocations/stop or /hurry body, bounded."""
    ids = fields.obj(body, "body").get("allocations")
    if not isinstance(ids, list) or not 0 < len(ids) <= BATCH_MAX:
        raise ValidationError(f"allocations: must be a list of 1 to {BATCH_MAX} allocation ids")
    for alloc_id in ids:
        if not isinstance(alloc_id, str) or not 0 < len(alloc_id) <= MAX_ID:
            raise ValidationError(f"allocations: each must be an id of 1 to {MAX_ID} characters")
    return ids


def _read_from(path: str, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return read_own(f, path, offset)
    except FileNotFoundError:
        return b""
    except IsADirectoryError:
        return b""
    except OSError as exc:
        raise OrchError(f"cannot read log: {os.path.basename(path)}: {exc.strerror}") from exc


def read_own(f: BinaryIO, path: str, offset: int) -> bytes:
    """Up to MAX_LOG_CHUNK bytes of the open log `f` from `offset`, if `path`
    still names it once read; else nothing.

    A log left empty goes on to the next allocation that reuses its dir
    (spare.py): a read racing its allocation's collection may have opened
    it before it moved, then read the next task's output. It moves before
    it is reused, so the path naming it still after the read means what was
    read is this allocation's own."""
    opened = os.fstat(f.fileno())
    # Past the end there is nothing yet; seeking there may be EINVAL.
    if offset >= opened.st_size:
        return b""
    f.seek(offset)
    data = f.read(MAX_LOG_CHUNK)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return b""
    return data if (now.st_ino, now.st_dev) == (opened.st_ino, opened.st_dev) else b""
