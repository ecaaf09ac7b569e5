"""Nomad HCL job files -> Nomad's API ``Job`` object (what ``/v1/jobs/parse`` answers).

python-hcl2 (pinned below 8: version 8 changes its output shape) parses the
text; nothing is evaluated, so this module does what Nomad's jobspec2 does
for the blocks orch runs: blocks (lists of dicts, labelled ones as
``[{label: body}]``) become capitalised JSON fields, durations ("10s")
integer nanoseconds, ``$${`` the literal ``${``, a ``task`` directly under
``job`` a group of the same name. ``BLOCKS`` lists every block and attribute
orch supports; anything else is refused with its line
(``block "template" (line 12) is not supported by orch``), never dropped.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import hcl2
import lark

from orch.errors import ValidationError
from orch.jobspec import parse_job
from orch.nomad.mapping import CONFIG_KEYS, NS
from orch.nomad.translate import job_from_nomad
from orch.validation import fields


class Block(NamedTuple):
    """How one HCL block becomes a JSON object."""

    label: tuple[str, ...] = ()  # JSON fields its label fills
    attrs: dict[str, str] = {}  # attribute -> JSON field ("~" prefix: a duration)
    blocks: dict[str, str] = {}  # child block -> JSON field ("[]" suffix: repeatable)


_CONSTRAINT = {"attribute": "LTarget", "value": "RTarget", "operator": "Operand"}
_UPDATE = {
    "max_parallel": "MaxParallel",
    "health_check": "HealthCheck",
    "min_healthy_time": "~MinHealthyTime",
    "healthy_deadline": "~HealthyDeadline",
    "progress_deadline": "~ProgressDeadline",
    "auto_revert": "AutoRevert",
    "auto_promote": "AutoPromote",
    "canary": "Canary",
    "stagger": "~Stagger",
}
_COMMON = {"constraint": "Constraints[]", "meta": "Meta", "update": "Update"}

BLOCKS: dict[str, Block] = {
    "job": Block(
        ("ID", "Name"),
        {
            "type": "Type",
            "datacenters": "Datacenters",
            "region": "Region",
            "namespace": "Namespace",
            "priority": "Priority",
            "all_at_once": "AllAtOnce",
            "node_pool": "NodePool",
        },
        {
            **_COMMON,
            "periodic": "Periodic",
            "parameterized": "ParameterizedJob",
            "group": "TaskGroups[]",
        },
    ),
    "group": Block(
        ("Name",),
        {"count": "Count", "shutdown_delay": "~ShutdownDelay"},
        {
            **_COMMON,
            "network": "Networks[]",
            "service": "Services[]",
            "migrate": "Migrate",
            "restart": "RestartPolicy",
            "task": "Tasks[]",
        },
    ),
    "task": Block(
        ("Name",),
        {
            "driver": "Driver",
            "kill_timeout": "~KillTimeout",
            "kill_signal": "KillSignal",
            "shutdown_delay": "~ShutdownDelay",
            "env": "Env",
        },
        {
            "constraint": "Constraints[]",
            "meta": "Meta",
            "config": "Config",
            "env": "Env",
            "resources": "Resources",
            "service": "Services[]",
            "dispatch_payload": "DispatchPayload",
            "restart": "RestartPolicy",
        },
    ),
    "constraint": Block((), _CONSTRAINT),
    "update": Block((), _UPDATE),
    "periodic": Block(
        (),
        {
            "cron": "Spec",
            "crons": "Specs",
            "prohibit_overlap": "ProhibitOverlap",
            "time_zone": "TimeZone",
            "enabled": "Enabled",
        },
    ),
    "parameterized": Block(
        (), {"payload": "Payload", "meta_required": "MetaRequired", "meta_optional": "MetaOptional"}
    ),
    "network": Block((), {"mode": "Mode"}, {"port": "Ports[]"}),
    "port": Block(("Label",), {"static": "Value", "to": "To"}),
    "service": Block(
        (),
        {"name": "Name", "port": "PortLabel", "tags": "Tags", "provider": "Provider"},
        {"check": "Checks[]", "check_restart": "CheckRestart"},
    ),
    "check": Block(
        (),
        {
            "name": "Name",
            "type": "Type",
            "path": "Path",
            "interval": "~Interval",
            "timeout": "~Timeout",
            "command": "Command",
            "args": "Args",
            "method": "Method",
            "protocol": "Protocol",
        },
        {"check_restart": "CheckRestart"},
    ),
    "check_restart": Block((), {"limit": "Limit", "grace": "~Grace"}),
    "migrate": Block((), {"max_parallel": "MaxParallel"}),
    "restart": Block(
        (), {"attempts": "Attempts", "interval": "~Interval", "delay": "~Delay", "mode": "Mode"}
    ),
    "resources": Block((), {"cpu": "CPU", "memory": "MemoryMB"}),
    "dispatch_payload": Block((), {"file": "File"}),
}
# Blocks whose body is a free map (Nomad reads them as map[string]...).
MAPS = ("meta", "env", "config")
LINE_KEYS = ("__start_line__", "__end_line__")
# Terraform-style variables are resolved by Nomad's `-var` flags: orch has none.
_VARIABLE = re.compile(r"\$\{\s*(var|local)\.")
# python-hcl2 gives an expression it does not evaluate (`count = 1 + 2`,
# `1e400`, a function call, a `%{ if }` directive) as a "${...}" string, where
# Nomad would evaluate it: orch refuses it rather than pass the text on. A
# plain reference (`${NOMAD_PORT_http}`, `${attr.kernel.name}`) is runtime
# interpolation, kept.
_EXPRESSION = re.compile(r"(?<!\$)\$\{([^}]*)\}|(?<!%)%\{")
_REFERENCE = re.compile(r"\s*[A-Za-z_][\w.\-]*(?:\[\"[^\"]*\"\])?\s*")


class Lines(dict):
    """JSON path of each block (``Job.TaskGroups[0].Tasks[1]``) -> its line."""

    def line_of(self, path: str) -> int | None:
        """The line of the innermost block that contains ``path``."""
        while path:
            if path in self:
                return self[path]
            path = path.rsplit(".", 1)[0] if "." in path else ""
        return None


def parse_hcl(text: str) -> dict:
    """Nomad's ``Job`` object for an HCL job file; ValidationError names the line."""
    return parse_hcl_lines(text)[0]


def parse_hcl_lines(text: str) -> tuple[dict, Lines]:
    """The ``Job`` object and the line of each of its blocks."""
    if not isinstance(text, str):
        raise ValidationError("a job file must be text")
    # Written on Windows: a byte-order mark and CRLF lines, which Nomad reads
    # and python-hcl2's grammar does not (its newline is "\n").
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    try:
        tree = hcl2.loads(text, with_meta=True)
    except lark.exceptions.UnexpectedInput as exc:
        raise ValidationError(f"line {exc.line}: syntax error: {_first(exc)}") from exc
    except Exception as exc:  # python-hcl2 raises bare Exceptions for some input
        raise ValidationError(f"syntax error: {_first(exc)}") from exc
    for key, value in tree.items():
        if key != "job":
            line = _first_line(value)
            raise ValidationError(f'{_kind(key)} "{key}"{_at(line)} is not supported by orch')
    jobs = tree.get("job") or []
    if not isinstance(jobs, list) or jobs and not _is_block(jobs):
        raise ValidationError('"job" must be a block, as in job "name" {')
    if len(jobs) != 1:
        raise ValidationError(f"a job file has exactly one job block (found {len(jobs)})")
    lines = Lines()
    label, body = _labelled(jobs[0], "job")
    job = _job(label, body, lines)
    return job, lines


def _first(exc: Exception) -> str:
    """The first line of an exception's message (its type when it has none)."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _kind(key: str) -> str:
    return "block" if key in ("variable", "locals", "variables") else "attribute"


def _at(line: int | None) -> str:
    return f" (line {line})" if line else ""


def _first_line(value) -> int | None:
    if isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, dict):
        if "__start_line__" in value:
            return value["__start_line__"]
        inner = next(iter(value.values()), None)
        if isinstance(inner, dict):
            return inner.get("__start_line__")
    return None


def _labelled(item, name: str) -> tuple[str, dict]:
    """``{label: body}`` -> (label, body); a block that needs a label and lacks one fails."""
    if isinstance(item, dict) and len(item) == 1:
        label, body = next(iter(item.items()))
        if isinstance(body, dict) and "__start_line__" in body:
            return label, body
    line = item.get("__start_line__") if isinstance(item, dict) else None
    raise ValidationError(f'block "{name}"{_at(line)} needs one label, as in {name} "name" {{')


def _job(label: str, body: dict, lines: Lines) -> dict:
    """The job block; a task directly under it becomes a group of its name."""
    tasks = body.get("task") or []
    if not _is_block(tasks) and tasks != []:
        line = body.get("__start_line__")
        raise ValidationError(
            f'"task" of block "job"{_at(line)} must be a block, as in task "name" {{'
        )
    rest = {k: v for k, v in body.items() if k != "task"}
    job = _convert("job", (label,), rest, "Job", lines)
    groups = job.setdefault("TaskGroups", [])
    for item in tasks:
        name, task_body = _labelled(item, "task")
        path = f"Job.TaskGroups[{len(groups)}]"
        lines[path] = task_body["__start_line__"]
        task = _convert("task", (name,), task_body, f"{path}.Tasks[0]", lines)
        groups.append({"Name": name, "Count": 1, "Tasks": [task]})
    return job


def _convert(kind: str, labels: tuple[str, ...], body: dict, path: str, lines: Lines) -> dict:
    """One block's attributes and child blocks as the JSON object of its kind."""
    spec, line = BLOCKS[kind], body.get("__start_line__")
    lines[path] = line
    out: dict[str, Any] = {field: labels[0] for field in spec.label}
    for key, value in body.items():
        if key in LINE_KEYS:
            continue
        if key in spec.blocks and _is_block(value):
            _children(key, value, spec.blocks[key], path, out, lines)
        elif key in spec.blocks and key in MAPS and isinstance(value, dict):
            out[spec.blocks[key]] = _value(value, line)  # `meta = {...}`: a map attribute
        elif key in spec.attrs:
            out.update(_attribute(key, value, spec.attrs[key], kind, line))
        elif _is_block(value):
            raise ValidationError(
                f'block "{key}"{_at(_first_line(value))} is not supported by orch'
            )
        else:
            raise ValidationError(
                f'attribute "{key}" of block "{kind}"{_at(line)} is not supported by orch'
            )
    if kind == "task":
        _check_config(out, body)
    if kind == "network":
        _split_ports(out)
    if kind == "periodic" and ("Spec" in out or "Specs" in out):
        out["SpecType"] = "cron"
    return out


def _is_block(value) -> bool:
    """python-hcl2 gives blocks as lists of dicts that carry their lines."""
    return isinstance(value, list) and bool(value) and _first_line(value) is not None


def _attribute(key: str, value, field: str, kind: str, line: int | None) -> dict:
    if field.startswith("~"):
        return {field[1:]: _nanoseconds(value, f'block "{kind}"{_at(line)}: {key}')}
    return {field: _value(value, line)}


def _children(key: str, items: list, field: str, path: str, out: dict, lines: Lines) -> None:
    """Child blocks of one name: a list ("[]" fields) or a single block."""
    many = field.endswith("[]")
    field = field.removesuffix("[]")
    if not many and len(items) > 1:
        line = items[1].get("__start_line__") if isinstance(items[1], dict) else None
        raise ValidationError(f'block "{key}"{_at(line)} is given more than once')
    for item in items:
        here = f"{path}.{field}[{len(out.get(field, []))}]" if many else f"{path}.{field}"
        if key in MAPS:
            lines[here] = item.get("__start_line__")
            child = {k: _value(v, lines[here]) for k, v in item.items() if k not in LINE_KEYS}
        elif BLOCKS[key].label:
            label, body = _labelled(item, key)
            child = _convert(key, (label,), body, here, lines)
        else:
            child = _convert(key, (), item, here, lines)
        if many:
            out.setdefault(field, []).append(child)
        else:
            out[field] = child


def _value(value, line: int | None):
    """Strings unescaped (``$${`` -> ``${``); Terraform-style variables refused."""
    if isinstance(value, str):
        found = _VARIABLE.search(value)
        if found:
            raise ValidationError(
                f"line {line}: {found.group(1)}.* variables are not supported by orch: {value!r}"
            )
        for expr in _EXPRESSION.finditer(value):
            if expr.group(1) is None or not _REFERENCE.fullmatch(expr.group(1)):
                raise ValidationError(
                    f"line {line}: HCL expressions are not supported by orch "
                    f"(write the value): {value!r}"
                )
        return value.replace("$${", "${")
    if isinstance(value, list):
        return [_value(v, line) for v in value]
    if isinstance(value, dict):
        return {k: _value(v, line) for k, v in value.items() if k not in LINE_KEYS}
    return value


def _nanoseconds(value, where: str) -> int:
    """A duration ("10s", "1m30s", or a number of seconds) as Nomad's integer nanoseconds."""
    return round(fields.duration(value, where) * NS)


def _check_config(task: dict, body: dict) -> None:
    """A task's config holds only what orch's driver for it reads."""
    config, driver = task.get("Config") or {}, task.get("Driver")
    line = _first_line(body.get("config"))
    if not isinstance(driver, str) or driver not in CONFIG_KEYS:
        return  # an unknown driver is refused by the translation, with its line
    for key in config:
        if key not in CONFIG_KEYS[driver]:
            raise ValidationError(
                f'"{key}" in block "config"{_at(line)} is not supported by orch '
                f"for the {driver} driver"
            )


def _split_ports(network: dict) -> None:
    """Ports with ``static`` are Nomad's ReservedPorts, the others DynamicPorts."""
    for port in network.pop("Ports", []):
        kind = "ReservedPorts" if port.get("Value") else "DynamicPorts"
        network.setdefault(kind, []).append(port)


# ---- HCL straight to an orch job body -------------------------------------------

_ORCH_PATH = re.compile(r"^task_groups\[(\d+)\](?:\.tasks\[(\d+)\])?")


def job_from_hcl(text: str) -> dict:
    """The orch job body for an HCL job file, checked; errors name their line."""
    job, lines = parse_hcl_lines(text)
    try:
        body = job_from_nomad(job)
        parse_job(body, max_count=2**31)  # the server enforces its own limit
    except ValidationError as exc:
        raise ValidationError(_with_line(exc.message, lines)) from exc
    return body


def _with_line(message: str, lines: Lines) -> str:
    """``path: msg`` (a Nomad JSON or an orch path) prefixed by the line of its block."""
    path = message.split(":", 1)[0]
    found = _ORCH_PATH.match(path)
    if found:
        group, task = found.groups()
        path = f"Job.TaskGroups[{group}]" + (f".Tasks[{task}]" if task else "")
    elif not path.startswith("Job"):
        path = "Job"
    line = lines.line_of(path)
    return f"line {line}: {message}" if line else message
