"""A group's ``services`` block: names, tags, health checks, check_restart.

Validated into plain dicts in their complete form (durations as seconds), so
that the server stores, hashes and pushes them as they are and the agent
(orch/agent/spec.py) checks them again with the same function::

    {"name": "web", "port": "http" | 8080 | None, "tags": [...],
     "checks": [{"name", "type", "interval", "timeout", "path"?, "command"?}],
     "check_restart": {"limit": 3, "grace": 10.0} | None}

A service's ``port`` names a port label of the group's network (or, until a
group declares ports, is a port number: orch.server.catalog.service_port).
"""

from __future__ import annotations

from orch.validation import fields
from orch.validation.fields import fail

CHECK_TYPES = ("http", "tcp", "script")
MAX_SERVICES = 16
MAX_CHECKS = 16
MAX_TAGS = 32
MIN_INTERVAL = 0.1  # a check loop faster than this is a busy loop
MAX_DURATION = 86400.0
DEFAULT_INTERVAL = 10.0
DEFAULT_TIMEOUT = 2.0
SERVICE_KEYS = {"name", "port", "tags", "checks", "check_restart"}
CHECK_KEYS = {"name", "type", "interval", "timeout", "path", "command", "check_restart"}


def services(value, path: str) -> tuple[dict, ...]:
    """The validated services of a group; () when absent."""
    if value is None:
        return ()
    if not isinstance(value, list):
        fail(path, "must be a list")
    if len(value) > MAX_SERVICES:
        fail(path, f"must have at most {MAX_SERVICES} services")
    out, seen = [], set()
    for i, raw in enumerate(value):
        service = _service(fields.obj(raw, f"{path}[{i}]"), f"{path}[{i}]")
        if service["name"] in seen:
            fail(f"{path}[{i}].name", f'duplicate service name "{service["name"]}"')
        seen.add(service["name"])
        out.append(service)
    return tuple(out)


def port_labels(services_: tuple[dict, ...], labels: set[str], path: str) -> None:
    """Each service's port label is one of its group's network ports, as Nomad
    checks at submit: an unknown one was taken, then never resolved (the
    service listed without a port, its checks failing for good)."""
    for i, service in enumerate(services_):
        port = service["port"]
        if isinstance(port, str) and port not in labels:
            known = ", ".join(sorted(labels)) or "none: the group has no network ports"
            fail(
                f"{path}[{i}].port", f'port label "{port}" is not in the group\'s network ({known})'
            )


def _unknown(raw: dict, known: set, path: str) -> None:
    unknown = sorted(str(k) for k in set(raw) - known)
    if unknown:
        fail(f"{path}.{unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})")


def _service(raw: dict, path: str) -> dict:
    _unknown(raw, SERVICE_KEYS, path)
    name = fields.name(raw.get("name"), f"{path}.name")
    checks_raw = raw.get("checks") or []
    if not isinstance(checks_raw, list) or len(checks_raw) > MAX_CHECKS:
        fail(f"{path}.checks", f"must be a list of at most {MAX_CHECKS} checks")
    checks, seen = [], set()
    for i, check_raw in enumerate(checks_raw):
        check_path = f"{path}.checks[{i}]"
        check = _check(fields.obj(check_raw, check_path), check_path, i)
        if check["name"] in seen:
            fail(f"{check_path}.name", f'duplicate check name "{check["name"]}"')
        seen.add(check["name"])
        checks.append(check)
    return {
        "name": name,
        "port": _port(raw.get("port"), f"{path}.port"),
        "tags": _tags(raw.get("tags"), f"{path}.tags"),
        "checks": checks,
        "check_restart": check_restart(raw.get("check_restart"), f"{path}.check_restart"),
    }


def _port(value, path: str) -> str | int | None:
    """A port label (a name) or, without a group network, a port number."""
    if value is None:
        return None
    if fields.is_int(value):
        if not 1 <= value <= 65535:
            fail(path, "must be a port label or an integer in 1..65535")
        return value
    return fields.name(value, path)


def _tags(value, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_TAGS:
        fail(path, f"must be a list of at most {MAX_TAGS} strings")
    for i, tag in enumerate(value):
        if not isinstance(tag, str) or "\0" in tag:
            fail(f"{path}[{i}]", "must be a string")
        fields.text(tag, f"{path}[{i}]", max_len=fields.ATTRIBUTE_MAX)
    return list(value)


def _check(raw: dict, path: str, index: int) -> dict:
    _unknown(raw, CHECK_KEYS, path)
    kind = raw.get("type")
    if kind not in CHECK_TYPES:
        fail(f"{path}.type", f"must be one of {', '.join(CHECK_TYPES)}")
    name = raw.get("name")
    check = {
        "name": f"{kind}-{index}" if name is None else fields.name(name, f"{path}.name"),
        "type": kind,
        "interval": _seconds(raw.get("interval"), f"{path}.interval", DEFAULT_INTERVAL),
        "timeout": _seconds(raw.get("timeout"), f"{path}.timeout", DEFAULT_TIMEOUT),
    }
    if check["interval"] < MIN_INTERVAL:
        fail(f"{path}.interval", f"must be at least {MIN_INTERVAL:g}s")
    if kind == "http":
        check["path"] = _http_path(raw.get("path"), f"{path}.path")
    elif raw.get("path") is not None:
        fail(f"{path}.path", "is only allowed on http checks")
    if kind == "script":
        check["command"] = _command(raw.get("command"), f"{path}.command")
    elif raw.get("command") is not None:
        fail(f"{path}.command", "is only allowed on script checks")
    restart = check_restart(raw.get("check_restart"), f"{path}.check_restart")
    if restart is not None:
        check["check_restart"] = restart
    return check


def _seconds(value, path: str, default: float) -> float:
    if value is None:
        return default
    seconds = fields.duration(value, path)
    if not 0 < seconds <= MAX_DURATION:
        fail(path, "must be more than 0 and at most 24h")
    return seconds


def _http_path(value, path: str) -> str:
    if value is None:
        return "/"
    if not isinstance(value, str) or not value.startswith("/"):
        fail(path, 'must be a string starting with "/"')
    if any(c.isspace() or ord(c) < 32 for c in value) or len(value) > 2048:
        fail(path, "must be a URL path without spaces or control characters (at most 2048)")
    return value


def _command(value, path: str) -> str | list[str]:
    """A shell line (run by /bin/sh -c) or an argv list."""
    if isinstance(value, str) and value.strip() and "\0" not in value:
        return fields.text(value, path)
    if (
        isinstance(value, list)
        and value
        and all(isinstance(s, str) and s and "\0" not in s for s in value)
    ):
        return list(value)
    fail(path, "is required for script checks: a non-empty string or list of strings")


def check_restart(value, path: str) -> dict | None:
    """`{"limit": 3, "grace": "10s"}`: restart the task after `limit` failures in a row."""
    if value is None:
        return None
    value = fields.obj(value, path)
    _unknown(value, {"limit", "grace"}, path)
    limit = value.get("limit", 0)
    if not fields.is_int(limit) or not 0 <= limit <= 1000:
        fail(f"{path}.limit", "must be an integer in 0..1000")
    grace = value.get("grace")
    seconds = 0.0 if grace is None else fields.duration(grace, f"{path}.grace")
    if not 0 <= seconds <= MAX_DURATION:
        fail(f"{path}.grace", "must be at least 0 and at most 24h")
    return {"limit": limit, "grace": seconds}
