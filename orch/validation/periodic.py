"""The ``periodic`` block of a batch job: crons, time zone, overlap, enabled.

Cron expressions are parsed by croniter (5 fields, or ``@daily`` and the
other ``@`` names) and time zones by zoneinfo, so an expression the server
accepts is one the launcher (orch.server.periodic) can always evaluate.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime

from orch.validation import fields
from orch.validation.fields import fail

KNOWN = ("crons", "time_zone", "prohibit_overlap", "enabled")
MAX_CRONS = 16
CRON_MAX = 128


def periodic(value, path: str = "periodic") -> dict | None:
    """The validated block, normalised (every key present); None when absent."""
    if value is None:
        return None
    raw = fields.block(value, path, KNOWN)
    crons = raw.get("crons")
    if not isinstance(crons, list) or not crons:
        fail(f"{path}.crons", "must be a non-empty list of cron expressions")
    if len(crons) > MAX_CRONS:
        fail(f"{path}.crons", f"must have at most {MAX_CRONS} expressions")
    for i, cron in enumerate(crons):
        _cron(cron, f"{path}.crons[{i}]")
    return {
        "crons": list(crons),
        "time_zone": time_zone(raw.get("time_zone"), f"{path}.time_zone"),
        "prohibit_overlap": _flag(raw.get("prohibit_overlap"), False, f"{path}.prohibit_overlap"),
        "enabled": _flag(raw.get("enabled"), True, f"{path}.enabled"),
    }


def _cron(value, path: str) -> None:
    fields.text(value, path, max_len=CRON_MAX)
    # Five fields only: croniter also takes seconds and years, which cron
    # (and Nomad's parser) do not.
    if not value.startswith("@") and len(value.split()) != 5:
        fail(path, f"invalid cron expression {value!r}: needs 5 fields or an @name")
    # Imported here: croniter (and dateutil under it) is a good part of the
    # import time of an agent, which parses job specs but rarely a cron.
    from croniter import CroniterError, croniter

    if not croniter.is_valid(value):
        fail(path, f"invalid cron expression {value!r}")
    try:
        croniter(value, datetime(2000, 1, 1, tzinfo=UTC)).get_next(float)
    except CroniterError:  # Feb 30, Apr 31: no calendar has the date
        fail(path, f"cron expression {value!r} is never due (no such date)")


def time_zone(value, path: str) -> str:
    if value is None:
        return "UTC"
    fields.text(value, path, max_len=64)
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        fail(path, f"unknown time zone {value!r}")
    return value


def _flag(value, default: bool, path: str) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        fail(path, "must be a boolean")
    return value
