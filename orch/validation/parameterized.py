"""The ``parameterized`` block of a dispatchable job and a task's ``dispatch_payload``."""

from __future__ import annotations

import posixpath

from orch.validation import fields
from orch.validation.fields import fail
from orch.validation.meta import meta_key

KNOWN = ("meta_required", "meta_optional", "payload")
PAYLOAD_MODES = ("optional", "required", "forbidden")


def parameterized(value, path: str = "parameterized") -> dict | None:
    """The validated block, normalised (every key present); None when absent."""
    if value is None:
        return None
    raw = fields.block(value, path, KNOWN)
    required = _keys(raw.get("meta_required"), f"{path}.meta_required")
    optional = _keys(raw.get("meta_optional"), f"{path}.meta_optional")
    both = sorted(set(required) & set(optional))
    if both:
        fail(f"{path}.meta_optional", f"{both[0]!r} is also in meta_required")
    payload = raw.get("payload")
    payload = "optional" if payload is None else payload
    if payload not in PAYLOAD_MODES:
        fail(f"{path}.payload", f"must be one of {', '.join(PAYLOAD_MODES)}")
    return {"meta_required": required, "meta_optional": optional, "payload": payload}


def _keys(value, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        fail(path, "must be a list of meta keys")
    return [meta_key(key, f"{path}[{i}]") for i, key in enumerate(value)]


def dispatch_payload(value, path: str) -> str | None:
    """`{"file": "input.json"}`: a relative path inside the task dir."""
    if value is None:
        return None
    raw = fields.block(value, path, ("file",))
    name = fields.text(raw.get("file"), f"{path}.file", max_len=255)
    parts = name.split("/")
    # Written by the agent before the task starts: it must land in the task
    # dir, whatever the name says.
    if posixpath.isabs(name) or any(p in ("", ".", "..") for p in parts) or "\\" in name:
        fail(f"{path}.file", "must be a relative path inside the task dir, without '..'")
    return name
