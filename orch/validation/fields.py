"""Field rules shared by every request body: names, ids, numbers, strings.

Each rule takes the value and its field path and either returns the value
(normalised) or raises ValidationError with a message that starts with the
path, e.g. ``task_groups[0].tasks[1].name: ...``. Job, allocation, register
and heartbeat bodies all use these, so one field means one rule everywhere;
new job fields (ports, services, update...) build on them the same way.
"""

from __future__ import annotations

import math
import re
from typing import NoReturn

from orch.errors import ValidationError

# Names become file and container names: no separators, no leading dot.
NAME_MAX = 63
ID_MAX = 128
NAME_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{NAME_MAX - 1}}}")
ID_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{ID_MAX - 1}}}")
# Integers go to JSON readers that may use doubles (JavaScript, jq): beyond
# 2**53 they would silently round, so counts and sizes stop there.
INT_MAX = 2**53
STRING_MAX = 64 * 1024
# A constraint's attribute: a fingerprint name or meta.KEY.
ATTRIBUTE_MAX = 256


def fail(path: str, message: str) -> NoReturn:
    raise ValidationError(f"{path}: {message}")


def query_offset(raw: str | None, name: str = "offset") -> int:
    """A byte offset from a query string ("" or absent: 0): ASCII digits
    only (int() would take "1_0", " 7" and "²"), bounded before int() (a
    seek past 2**63 overflows off_t; int() refuses 4,300 digits)."""
    if raw is None or raw == "":
        return 0
    if not raw.isascii() or not raw.isdigit():
        raise ValidationError(f"{name}: must be a non-negative integer")
    if len(raw) > 16 or int(raw) > INT_MAX:
        raise ValidationError(f"{name}: must be at most {INT_MAX}")
    return int(raw)


def is_int(value) -> bool:
    """An integer that is not a bool (``"count": true`` is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def obj(value, path: str) -> dict:
    if not isinstance(value, dict):
        fail(path, "must be a JSON object")
    return value


def block(value, path: str, known: tuple[str, ...]) -> dict:
    """An object whose keys are all in ``known``: the first unknown one fails."""
    raw = obj(value, path)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        fail(f"{path}.{unknown[0]}", f"unknown field (known: {', '.join(known)})")
    return raw


def name(value, path: str) -> str:
    """A task group or task name: 1-63 safe characters."""
    if value is None or value == "":
        fail(path, "is required")
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or ".." in value:
        fail(
            path,
            f"must be 1-{NAME_MAX} characters of letters, digits, '_', '.' "
            "or '-', starting with a letter or digit, without '..'",
        )
    return value


def ident(value, path: str) -> str:
    """A job or allocation id: 1-128 safe characters (it names directories)."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value) or ".." in value:
        fail(
            path,
            f"must be 1-{ID_MAX} characters of letters, digits, '_', '.' "
            "or '-', starting with a letter or digit, without '..'",
        )
    return value


def text(value, path: str, *, max_len: int = STRING_MAX, allow_empty: bool = False) -> str:
    """A string of bounded length without NUL characters."""
    if not isinstance(value, str) or (not value and not allow_empty):
        fail(path, "must be a non-empty string")
    if len(value) > max_len:
        fail(path, f"must be at most {max_len} characters")
    if "\0" in value:
        fail(path, "must not contain NUL characters")
    return value


def non_negative_int(value, path: str, *, maximum: int = INT_MAX) -> int:
    if not is_int(value) or value < 0:
        fail(path, "must be a non-negative integer")
    if value > maximum:
        fail(path, f"must be at most {maximum}")
    return value


def finite(value, path: str) -> float:
    """A JSON number that is a real one: not NaN, not infinite, not a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(path, "must be a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf  # an integer too large for a double
    if not math.isfinite(number):
        fail(path, "must be a finite number")
    return number


def plain_finite(value) -> bool:
    """A finite float, or an integer a float holds: ``finite``'s common cases,
    checked before its field path is even formatted (a heartbeat's reports
    hold a dozen times each, its resources four integers). False says only
    "ask ``finite``", which decides (a larger integer may still fit)."""
    if type(value) is int:
        return value.bit_length() <= 1023  # below 2**1023: float() never overflows
    return type(value) is float and math.isfinite(value)


def optional_time(value, path: str) -> float | None:
    """A timestamp (seconds since the epoch) or null."""
    return None if value is None else finite(value, path)


def scalar_map(value, path: str) -> dict:
    """Attributes and meta: string keys to scalar values (null, bool, number, string)."""
    if value is None:
        return {}
    out = {}
    for key, item in obj(value, path).items():
        if isinstance(item, (dict, list)):
            fail(f"{path}.{key}", "must be a scalar")
        if isinstance(item, float):
            finite(item, f"{path}.{key}")
        elif isinstance(item, str):
            text(item, f"{path}.{key}", allow_empty=True)
        out[str(key)] = item
    return out


# Durations as Nomad writes them: "500ms", "10s", "1m30s", "2h"; or seconds.
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(raw, path: str) -> float:
    """A number of seconds, or a string such as "500ms", "10s", "1m30s", "2h"."""
    if is_int(raw) or isinstance(raw, float):
        return finite(raw, path)
    if raw == "0":
        return 0.0  # Go's ParseDuration (Nomad's) takes a bare "0", no unit
    if isinstance(raw, str) and raw and len(raw) <= 64:
        parts = DURATION_PART.findall(raw)
        if parts and "".join(n + u for n, u in parts) == raw:
            return sum(float(n) * DURATION_UNITS[u] for n, u in parts)
    fail(path, 'must be a number of seconds or a duration such as "500ms", "10s", "1m30s", "2h"')
