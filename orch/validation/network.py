"""The group ``network`` block: ``{"ports": [{"label", "static", "to"}]}``.

A port without ``static`` is dynamic: the scheduler picks its host port from
the node's range (orch.server.scheduler.ports). Tasks see each port as
``ORCH_PORT_<label>`` and friends (orch.agent.taskenv), so labels are
restricted to what makes a portable environment variable name.
"""

from __future__ import annotations

import re

from orch.structs import Port
from orch.validation import fields
from orch.validation.fields import fail

LABEL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_PORTS = 32
PORT_MAX = 65535


def network(value, path: str) -> tuple[Port, ...]:
    """The ports of a group's network block; () when there is none."""
    if value is None:
        return ()
    raw = fields.obj(value, path)
    unknown = sorted(set(raw) - {"ports"})
    if unknown:
        fail(f"{path}.{unknown[0]}", "unknown field (known: ports)")
    ports = raw.get("ports")
    if ports is None:
        return ()
    if not isinstance(ports, list):
        fail(f"{path}.ports", "must be a list")
    if len(ports) > MAX_PORTS:
        fail(f"{path}.ports", f"must have at most {MAX_PORTS} entries")
    out: list[Port] = []
    for i, item in enumerate(ports):
        port = _port(fields.obj(item, f"{path}.ports[{i}]"), f"{path}.ports[{i}]")
        if any(p.label == port.label for p in out):
            fail(f"{path}.ports[{i}].label", f'duplicate port label "{port.label}"')
        if port.static is not None and any(p.static == port.static for p in out):
            fail(f"{path}.ports[{i}].static", f"port {port.static} is already used by the group")
        out.append(port)
    return tuple(out)


def _port(raw: dict, path: str) -> Port:
    unknown = sorted(set(raw) - {"label", "static", "to"})
    if unknown:
        fail(f"{path}.{unknown[0]}", "unknown field (known: label, static, to)")
    label = raw.get("label")
    if not isinstance(label, str) or not LABEL_RE.fullmatch(label):
        fail(
            f"{path}.label",
            "must be 1-64 letters, digits or '_', starting with a letter or '_'",
        )
    return Port(
        label, _number(raw.get("static"), f"{path}.static"), _number(raw.get("to"), f"{path}.to")
    )


def _number(value, path: str) -> int | None:
    if value is None:
        return None
    if not fields.is_int(value) or not 1 <= value <= PORT_MAX:
        fail(path, f"must be an integer from 1 to {PORT_MAX}")
    return value
