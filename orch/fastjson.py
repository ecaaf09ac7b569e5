"""JSON on the paths every job takes: orjson where its answer is the
standard library's, the standard library where it is not.

A batch job crosses a dozen small documents on its way through the cluster
(its submit, the push, the start line and the exit, reports, beats, their
answers, the reads). The standard library's encoder is set up anew per call
and calls back into Python for every float; orjson writes a job's 400-byte
detail in ~1 us against ~15 and reads it in ~4 against ~14 (bench/README.md,
issue #17).

The same answer, exactly:

- ``dumps``: what orjson will not write as ``json`` would (keys other than
  str, ints beyond 64 bits, lone surrogates; dataclasses and datetimes, passed
  through on purpose) goes to the standard library, which writes it, or
  raises, as before. Two differences remain, both in what no caller writes
  (request bodies refuse NaN and infinities at the door): a float in the
  other exponent style (``1e-05`` is written ``0.00001``, the same number),
  and NaN or an infinity written as null instead of the non-JSON ``NaN``.
- ``loads``: orjson refuses every text the standard library refuses, and a
  few more (NaN, Infinity, numbers that overflow, UTF-8-encoded surrogates, a
  byte-order mark); those go to the standard library, which answers as
  before. Integers of 19 digits or more, which orjson would read as floats
  beyond 64 bits, go there first.

Without orjson the standard library does everything. That is the case in
the task supervisor of a checkout, which has only the dir holding orch on
its path (``orch/agent/tasksup/client.py``); the zipapp's supervisor finds
orjson beside orch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - the zipapp and the tests have it
    orjson = None  # type: ignore[assignment]

# Kept encoders: json.dumps with options builds one per call.
_UTF8_TEXT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_ESCAPED_TEXT = json.JSONEncoder(separators=(",", ":")).encode
# orjson writes these natively where json raises TypeError: passed through,
# they come back to the standard library, which raises as before.
_OPTIONS = (
    0 if orjson is None else orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
)
# orjson reads an integer beyond 64 bits as a float: a text holding a run of
# 19 digits (in a number, or in a string: equal, just slower) goes to the
# standard library. Digits become "0" and all else " ", then one search: a
# few us for a 4 KB heartbeat, where a regex took 100.
_DIGITS_AS_ZEROS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_RUN = b"0" * 19


def dumps(value: Any, *, escape: bool = False) -> bytes:
    """``value`` as compact JSON in UTF-8.

    ``escape``: where orjson declines, write non-ASCII characters as \\u
    escapes, as ``json.dumps`` does by default (a lone surrogate then goes
    through as an escape instead of raising); the document is the same."""
    if orjson is not None:
        try:
            return orjson.dumps(value, option=_OPTIONS)
        except TypeError:  # orjson.JSONEncodeError is one
            pass
    if escape:
        return _ESCAPED_TEXT(value).encode()
    return _UTF8_TEXT(value).encode()


_FLOAT_MAX = sys.float_info.max


def float_text(value: float) -> str:
    """``repr(value)``: through orjson where its text is repr's, which costs a
    quarter of repr's ~1.2 us (a float's shortest digits by the big-number
    algorithm). That is zero and every finite magnitude from 1e-4 up; below,
    orjson writes another style (``0.00001``, ``1.5e-7``), and NaN and the
    infinities as null: those get repr's own."""
    if orjson is not None and (value == 0.0 or 1e-4 <= abs(value) <= _FLOAT_MAX):
        return orjson.dumps(value).decode()
    return float.__repr__(value)


def strict_ascii(value: Any) -> str | None:
    """orjson's compact text of ``value`` if it is ASCII and holds no
    ``null`` (how orjson writes NaN and the infinities); None otherwise,
    and where orjson declines: the caller writes it with the standard library."""
    return _ascii_text(value, False, ())


# What orjson writes differently from ``json.dumps`` with its default escapes:
# a float under 1e-4 (``0.00001``, ``1.5e-7``), and DEL unescaped.
_NOT_AS_JSON = (b"e-", b"0.0000", b"\x7f")


def sorted_ascii(value: Any) -> str | None:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"))``'s text,
    byte for byte, from orjson (~1 us where json takes ~10: hashes of specs
    stored since long ago must stay the same); None where orjson's text might
    differ, and where it declines: the caller writes it with json. Taken only
    if ASCII (json escapes the rest), free of ``null`` (how orjson writes NaN)
    and of any sign of a float under 1e-4 or of DEL, which orjson writes in
    another style (a string holding those only costs the fallback)."""
    return _ascii_text(value, True, _NOT_AS_JSON)


def _ascii_text(value: Any, sort_keys: bool, unlike_json: tuple[bytes, ...]) -> str | None:
    """orjson's text of ``value`` (keys sorted if asked) if ASCII, without
    ``null`` and without any of ``unlike_json``; None otherwise (or without
    orjson, or if it declines)."""
    if orjson is None:
        return None
    option = _OPTIONS | orjson.OPT_SORT_KEYS if sort_keys else _OPTIONS
    try:
        raw = orjson.dumps(value, option=option)
    except TypeError:
        return None
    if not raw.isascii() or b"null" in raw or any(part in raw for part in unlike_json):
        return None
    return raw.decode()


def loads(raw: bytes | bytearray | str, fallback: Callable[[Any], Any] = json.loads) -> Any:
    """A JSON text parsed as ``json.loads`` (or ``fallback``: a parse with
    hooks, or with its own errors) parses it; ``fallback`` gets, as it came,
    every text orjson declines."""
    if orjson is not None:
        # A str with a lone surrogate encodes here and is refused by orjson.
        data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
        if _LONG_RUN not in data.translate(_DIGITS_AS_ZEROS):
            try:
                return orjson.loads(data)
            except orjson.JSONDecodeError:
                pass
    return fallback(raw)
