"""Job versions as the API shows them: each spec with its diff to the one before.

``diff`` is a pure structural comparison of two JSON values; a path names
each changed leaf the way a reader would point at it in the job file:
``task_groups[0].tasks[1].config.command``.
"""

from __future__ import annotations

from typing import Any

from orch.structs import Job

# A missing key and an explicit null read the same in a job file; a change
# between them is no change a reader could act on.
_MISSING = None


def diff(old: Any, new: Any, path: str = "") -> list[dict]:
    """The changed leaves between two JSON values: [{"path", "old", "new"}]."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[dict] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            changes += diff(old.get(key, _MISSING), new.get(key, _MISSING), sub)
        return changes
    if isinstance(old, list) and isinstance(new, list):
        changes = []
        for i in range(max(len(old), len(new))):
            a = old[i] if i < len(old) else _MISSING
            b = new[i] if i < len(new) else _MISSING
            changes += diff(a, b, f"{path}[{i}]")
        return changes
    # bool is an int to Python, not to a job file: True != 1 here.
    if old == new and type(old) is type(new):
        return []
    return [{"path": path, "old": old, "new": new}]


def versions_view(versions: list[tuple[Job, bool]]) -> dict:
    """GET /jobs/<id>/versions: newest first, each diffed against the one before."""
    out = []
    for i, (job, stable) in enumerate(versions):
        older = versions[i + 1][0] if i + 1 < len(versions) else None
        out.append(
            {
                "version": job.version,
                "submit_time": job.submit_time,
                "stable": stable,
                "job": job.spec(),
                "diff": diff(older.spec(), job.spec()) if older is not None else [],
            }
        )
    return {"versions": out, "count": len(out)}
