"""The ``meta`` block (job and group) and a dispatch's meta: string maps.

Tasks see each key as ``ORCH_META_<KEY>``, so keys are restricted to
characters that make a portable environment variable name once ``.`` and
``-`` become ``_`` (orch.agent.taskenv).
"""

from __future__ import annotations

import re

from orch.validation import fields
from orch.validation.fields import fail

KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")
MAX_KEYS = 256
VALUE_MAX = 4096


def meta_key(value, path: str) -> str:
    if not isinstance(value, str) or not KEY_RE.fullmatch(value):
        fail(
            path,
            f"invalid meta key {value!r}: 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter or '_'",
        )
    return value


def meta(value, path: str) -> dict[str, str]:
    """A string map; numbers and booleans are accepted and become text."""
    if value is None:
        return {}
    raw = fields.obj(value, path)
    if len(raw) > MAX_KEYS:
        fail(path, f"must have at most {MAX_KEYS} keys")
    out = {}
    for key, item in raw.items():
        meta_key(key, path)
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, (int, float)):
            item = str(item if isinstance(item, int) else fields.finite(item, f"{path}.{key}"))
        elif not isinstance(item, str):
            fail(f"{path}.{key}", "must be a string")
        out[key] = fields.text(item, f"{path}.{key}", max_len=VALUE_MAX, allow_empty=True)
    return out


def merged(job_meta: dict, group_meta: dict) -> dict[str, str]:
    """What a group's tasks see: the job's meta with the group's over it."""
    return {**job_meta, **group_meta}
