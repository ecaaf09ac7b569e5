"""Node drain and eligibility bodies, and a task group's ``migrate`` block."""

from __future__ import annotations

from dataclasses import dataclass

from orch.validation import fields
from orch.validation.fields import fail

DEFAULT_DEADLINE_S = 3600.0  # Nomad's default drain deadline: one hour
MAX_DEADLINE_S = 30 * 86400.0
MAX_MIGRATE_PARALLEL = 10_000


@dataclass(frozen=True)
class DrainRequest:
    """POST /nodes/<id>/drain: start (or replace) a drain, or cancel it."""

    cancel: bool = False
    deadline_s: float = DEFAULT_DEADLINE_S
    ignore_system_jobs: bool = False
    # A cancel that leaves the node ineligible (Nomad's MarkEligible false,
    # `nomad node drain -disable -keep-ineligible`).
    keep_ineligible: bool = False


def _known(body: dict, path: str, known: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        fail(f"{path}.{unknown[0]}", f"unknown field (known: {', '.join(known)})")


def _flag(body: dict, key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        fail(key, "must be a boolean")
    return value


def eligibility(body) -> bool:
    """`{"eligible": true|false}` -> the eligibility asked for."""
    body = fields.obj(body, "body")
    _known(body, "body", ("eligible",))
    if "eligible" not in body:
        fail("eligible", "is required (true or false)")
    return _flag(body, "eligible", True)


def drain(body) -> DrainRequest:
    """`{"deadline_s": 60, "ignore_system_jobs": false}` or `{"cancel": true}`.

    The deadline is a number of seconds or a duration ("1m"); 0 stops
    everything on the node at once (Nomad's -force)."""
    body = fields.obj(body, "body")
    _known(body, "body", ("deadline_s", "ignore_system_jobs", "cancel"))
    cancel = _flag(body, "cancel", False)
    ignore = _flag(body, "ignore_system_jobs", False)
    deadline = DEFAULT_DEADLINE_S
    if body.get("deadline_s") is not None:
        deadline = fields.duration(body["deadline_s"], "deadline_s")
        if not 0 <= deadline <= MAX_DEADLINE_S:
            fail("deadline_s", "must be between 0 and 30 days")
    return DrainRequest(cancel=cancel, deadline_s=deadline, ignore_system_jobs=ignore)


def migrate(value, path: str) -> int:
    """A group's `migrate: {"max_parallel": n}` -> n (default 1)."""
    if value is None:
        return 1
    value = fields.obj(value, path)
    _known(value, path, ("max_parallel",))
    raw = value.get("max_parallel", 1)
    if not fields.is_int(raw) or not 1 <= raw <= MAX_MIGRATE_PARALLEL:
        fail(f"{path}.max_parallel", f"must be an integer from 1 to {MAX_MIGRATE_PARALLEL}")
    return raw
