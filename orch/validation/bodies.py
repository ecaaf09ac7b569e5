"""Register and heartbeat bodies, and the resources every body shares."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from orch.structs import Resources
from orch.validation.fields import (
    ID_MAX,
    fail,
    finite,
    is_int,
    non_negative_int,
    obj,
    optional_time,
    plain_finite,
    text,
)

# Node ids come from agents (a UUID or a name the operator chose).
NODE_ID_MAX = ID_MAX
REGION_MAX = 128
SECRET_MAX = 256
ERROR_MAX = 64 * 1024
DEFAULT_PORT_RANGE = (20000, 32000)


def resources(value, path: str, default: Resources | None = None) -> Resources:
    """cpu (MHz) and memory (MB); without a default both are required."""
    if value is None and default is not None:
        return default
    if default is None and not isinstance(value, dict):
        fail(path, "must be an object with cpu and memory")
    value = obj(value, path)
    amounts = {}
    for key in ("cpu", "memory"):
        amount = value.get(key) if default is None else value.get(key, getattr(default, key))
        amounts[key] = non_negative_int(amount, f"{path}.{key}")
    return Resources(**amounts)


def node_id(value, path: str = "node_id") -> str:
    if not isinstance(value, str) or not value:
        fail(path, "must be a non-empty string")
    return text(value, path, max_len=NODE_ID_MAX)


def region(value, path: str = "region") -> str:
    return text(value, path, max_len=REGION_MAX)


def endpoint(value, path: str = "endpoint") -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        fail(path, "must be an http(s) URL")
    return text(value, path, max_len=2048)


def port_range(value, path: str = "port_range") -> tuple[int, int]:
    """An agent's dynamic port range, "LOW-HIGH" (1..65535, LOW <= HIGH); absent: the default."""
    if value is None:
        return DEFAULT_PORT_RANGE
    low, dash, high = value.partition("-") if isinstance(value, str) else ("", "", "")
    if dash and _port_digits(low) and _port_digits(high) and 1 <= int(low) <= int(high) <= 65535:
        return int(low), int(high)
    fail(path, 'must be "LOW-HIGH" with 1 <= LOW <= HIGH <= 65535, e.g. "20000-32000"')


def _port_digits(text: str) -> bool:
    """1-5 ASCII digits (str.isdigit also takes "²" and "٣", and any length)."""
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit()


def secret_digest(secret, path: str = "secret_id") -> str:
    """The stored form of an optional node secret ("" when absent)."""
    if secret is None:
        return ""
    if not isinstance(secret, str) or not secret:
        fail(path, f"must be a non-empty string (at most {SECRET_MAX} characters)")
    return hashlib.sha256(text(secret, path, max_len=SECRET_MAX).encode()).hexdigest()


@dataclass(frozen=True)
class Heartbeat:
    """A validated POST /heartbeat body."""

    node_id: str
    usage: dict
    allocations: dict
    healthy: bool = True
    # None: the seed's heartbeat, every allocation the node holds. A number:
    # the beat's sequence; with ``delta`` it carries only the reports that
    # changed since the node's last acknowledged beat.
    seq: int | None = None
    delta: bool = False


def heartbeat(body) -> Heartbeat:
    """Validate a POST /heartbeat body, its per-allocation reports included.

    Only the reports the body carries are walked: a delta beat carries the
    changed ones alone."""
    body = obj(body, "body")
    nid = node_id(body.get("node_id"))
    usage = body.get("resources")
    if usage is not None and not isinstance(usage, dict):
        fail("resources", "must be an object")
    for key, amount in (usage or {}).items():
        if not isinstance(amount, (dict, list, str)) and amount is not None:
            if not plain_finite(amount):
                finite(amount, f"resources.{key}")
    allocations = body.get("allocations") or {}
    if not isinstance(allocations, dict):
        fail("allocations", "must be an object")
    for alloc_id, report in allocations.items():
        alloc_report(report, f"allocations.{alloc_id}")
    seq = body.get("seq")
    if seq is not None:
        non_negative_int(seq, "seq")
    delta = body.get("delta", False)
    if not isinstance(delta, bool) or (delta and seq is None):
        fail("delta", "must be a boolean, true only with a seq")
    return Heartbeat(
        nid, usage or {}, allocations, healthy=bool(body.get("healthy", True)), seq=seq, delta=delta
    )


def alloc_report(report, path: str) -> None:
    """One allocation an agent reports: times finite, task counters integers."""
    if not isinstance(report, dict):
        return  # not a report: sync skips it
    _times(report, path)
    check_report(report, path)
    tasks = report.get("tasks")
    if not isinstance(tasks, dict):
        return
    for name, task in tasks.items():
        if isinstance(task, dict):
            task_report(task, f"{path}.tasks.{name}")


HEALTH_VALUES = ("healthy", "unhealthy")
CHECK_STATUSES = ("passing", "failing")
CHECKS_MAX = 256  # results in one allocation's report (16 services x 16 checks)
CHECK_OUTPUT_MAX = 4096


def check_report(report: dict, path: str) -> None:
    """An allocation's `health` and `checks` ({"<service>/<check>": result})."""
    health = report.get("health")
    if health is not None and health not in HEALTH_VALUES:
        fail(f"{path}.health", "must be healthy, unhealthy or null")
    checks = report.get("checks")
    if checks is None:
        return
    if not isinstance(checks, dict) or len(checks) > CHECKS_MAX:
        fail(f"{path}.checks", f"must be an object of at most {CHECKS_MAX} results")
    for key, result in checks.items():
        where = f"{path}.checks.{key}"
        text(key, where, max_len=2 * 64 + 1)
        if not isinstance(result, dict) or result.get("status") not in CHECK_STATUSES:
            fail(f"{where}.status", "must be passing or failing")
        output = result.get("output", "")
        if isinstance(output, str) and "\0" in output:
            # What a check read is shown, never judged: an agent that passes a
            # NUL on must not have its heartbeat refused (its node would go down).
            result["output"] = output = output.replace("\0", "\ufffd")
        text(output, f"{where}.output", max_len=CHECK_OUTPUT_MAX, allow_empty=True)
        optional_time(result.get("time"), f"{where}.time")


def task_report(task: dict, path: str) -> None:
    _times(task, path)
    if task.get("restarts") is not None:
        non_negative_int(task["restarts"], f"{path}.restarts")
    code = task.get("exit_code")
    if code is not None and (not is_int(code) or abs(code) > 1 << 31):
        fail(f"{path}.exit_code", "must be an integer or null")
    error = task.get("error")
    if error is not None:
        text(error, f"{path}.error", max_len=ERROR_MAX, allow_empty=True)
    events = task.get("events")
    if events is not None and not isinstance(events, list):
        fail(f"{path}.events", "must be a list")
    for i, event in enumerate(events or ()):
        when = event.get("time") if isinstance(event, dict) else None
        if when is not None and not plain_finite(when):
            finite(when, f"{path}.events[{i}].time")


def _times(report: dict, path: str) -> None:
    """A report's start and end times: finite or null (the path is built only
    to name a bad one; a heartbeat carries a dozen of them)."""
    for key in ("start_time", "end_time"):
        value = report.get(key)
        if value is not None and not plain_finite(value):
            finite(value, f"{path}.{key}")
