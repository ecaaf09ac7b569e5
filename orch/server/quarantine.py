"""Unreadable state rows, kept aside so that one of them cannot stop the server.

A row whose body is not JSON (the old codec wrote ``nan``), holds NaN or
Infinity (it could never be written back), or does not decode into its
dataclass is copied to the ``quarantine`` table with the reason and deleted
from its own table, in one transaction: nothing is lost, an operator can
read it back, and the rest of the state loads.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    tbl TEXT NOT NULL, row_key TEXT, body TEXT, reason TEXT NOT NULL,
    time REAL NOT NULL);
"""

# What a bad body can raise on its way through json.loads and a codec *_from.
DECODE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def read_table(db, table: str, key: str, decode) -> tuple[list, list]:
    """(objects, bad rows as (key, body, reason)) of one table."""
    objects, bad = [], []
    for row_key, body in db.execute(f"SELECT {key}, body FROM {table}"):
        try:
            objects.append(decode(json.loads(body, parse_constant=_no_constant)))
        except DECODE_ERRORS as exc:
            bad.append((row_key, body, f"{type(exc).__name__}: {exc}"))
    return objects, bad


def statements(table: str, key: str, bad: list, now: float) -> list[tuple[str, list]]:
    """The (sql, rows) pairs that move ``bad`` rows into quarantine; logs each."""
    for row_key, _body, reason in bad:
        log.error(
            "state row unreadable table=%s %s=%s: %s; moved to the quarantine table",
            table,
            key,
            row_key,
            reason,
        )
    return [
        (
            "INSERT INTO quarantine (tbl, row_key, body, reason, time) VALUES (?,?,?,?,?)",
            [(table, str(k), body, reason, now) for k, body, reason in bad],
        ),
        (f"DELETE FROM {table} WHERE {key} = ?", [(k,) for k, _b, _r in bad]),
    ]
