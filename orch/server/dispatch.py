"""Dispatching a parameterized job: a child job with the caller's meta and payload.

As Nomad's Job.Dispatch: the child ``<id>-dispatch-<unix time>-<4 hex>`` is
the parent's spec without ``parameterized``, with the dispatch meta merged
over the job meta and the payload (base64, at most 16 KiB decoded) stored with
it; the agent writes the payload into the task dir of every task that has a
``dispatch_payload`` block.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os

from orch.errors import AlreadyDispatched, Conflict, ValidationError
from orch.server.planner import new_eval
from orch.structs import Evaluation, Job, JobStatus, TriggeredBy, replace
from orch.validation import fields
from orch.validation.meta import meta

log = logging.getLogger(__name__)

MAX_PAYLOAD = 16 * 1024  # decoded bytes, Nomad's DispatchPayloadSizeLimit
TOKEN_MAX = 256
ID_ATTEMPTS = 16


def dispatch_request(parent: Job, body) -> tuple[dict[str, str], str, str]:
    """Validate a dispatch body against the parent; returns (meta, payload
    base64, idempotency token)."""
    if parent.parameterized is None:
        raise ValidationError(f"job {parent.job_id} is not parameterized: it cannot be dispatched")
    if parent.stopped:
        raise Conflict(f"job {parent.job_id} is stopped")
    body = {} if body is None else fields.obj(body, "body")
    unknown = sorted(set(body) - {"meta", "payload", "idempotency_token"})
    if unknown:
        raise ValidationError(
            f"{unknown[0]}: unknown field (known: meta, payload, idempotency_token)"
        )
    token = body.get("idempotency_token") or ""
    if token:
        fields.text(token, "idempotency_token", max_len=TOKEN_MAX)
    given = meta(body.get("meta"), "meta")
    rules = parent.parameterized
    missing = [k for k in rules["meta_required"] if k not in given]
    if missing:
        raise ValidationError(f"meta: missing required keys: {', '.join(missing)}")
    allowed = set(rules["meta_required"]) | set(rules["meta_optional"])
    extra = sorted(k for k in given if k not in allowed)
    if extra:
        raise ValidationError(
            f"meta: keys not allowed by the job: {', '.join(extra)} "
            f"(allowed: {', '.join(sorted(allowed)) or 'none'})"
        )
    return given, _payload(body.get("payload"), rules["payload"]), token


def _payload(value, mode: str) -> str:
    if value in (None, ""):
        if mode == "required":
            raise ValidationError("payload: required by the job")
        return ""
    if mode == "forbidden":
        raise ValidationError("payload: forbidden by the job")
    if not isinstance(value, str):
        raise ValidationError("payload: must be a base64 string")
    # Line breaks are skipped, as Go's decoder (Nomad's) skips them: what
    # base64.encodebytes and `base64` (76-column lines) write.
    value = value.replace("\r", "").replace("\n", "")
    if len(value) > (MAX_PAYLOAD + 2) // 3 * 4 + 4:
        raise ValidationError(f"payload: at most {MAX_PAYLOAD} bytes")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("payload: not valid base64") from None
    if len(raw) > MAX_PAYLOAD:
        raise ValidationError(f"payload: at most {MAX_PAYLOAD} bytes")
    # Stored in its canonical form, whatever padding the client sent.
    return base64.b64encode(raw).decode("ascii")


def dispatch(store, parent_id: str, body, enqueue, *, now: float) -> tuple[Job, Evaluation | None]:
    """Store a dispatched child and its evaluation; returns (child, evaluation).

    A dispatch with the idempotency token of a child the parent launched
    before answers with that child and no new evaluation (None)."""
    parent = store.require_job(parent_id)
    given, payload, token = dispatch_request(parent, body)
    child = replace(
        parent,
        parameterized=None,
        parent_id=parent.job_id,
        meta={**parent.meta, **given},
        payload=payload,
        dispatch_token=token,
        version=0,
        stopped=False,
        submit_time=now,
        status=JobStatus.PENDING,
    )
    # 4 random hex digits per second collide now and then under a burst of
    # dispatches: the store refuses a taken id, and another is drawn.
    for _ in range(ID_ATTEMPTS):
        child = replace(child, job_id=f"{parent.job_id}-dispatch-{int(now)}-{os.urandom(2).hex()}")
        ev = new_eval(child.job_id, TriggeredBy.JOB_REGISTER, now)
        try:
            # The store checks again, under its lock, that the parent still
            # runs, and that no child has this idempotency token.
            store.launch_child(child, ev, on_commit=enqueue)
        except AlreadyDispatched as exc:
            # As Nomad: a retry with the token gets the child it launched.
            log.info("job %s: dispatch token matches %s", parent_id, exc.child.job_id)
            return exc.child, None
        except Conflict:
            if store.get_job(child.job_id) is None:
                raise  # the parent was stopped meanwhile
            continue
        log.info("job %s dispatched as %s", parent_id, child.job_id)
        return child, ev
    raise Conflict("no free dispatch id this second; try again")
