"""Nomad's job JSON (the API's ``Job`` object) translated into an orch job body.

The mapping of fields lives in one table, ``orch.nomad.mapping.FIELDS``
(Nomad block -> its fields, each with its orch name and how its value
converts), read here in the Nomad -> orch direction. Semantics that differ
are in that module's tables and in ``datacenter_constraints`` (Nomad's
datacenters are a node's ``datacenter``).

A Nomad field orch has no counterpart for is refused by its JSON path
(``Job.TaskGroups[0].Tasks[0].Templates: is not supported by orch``) unless
it holds Nomad's default (``DEFAULTS``, or an empty value): what orch would
do is then what Nomad does, and nothing is dropped silently. The result is
checked by ``orch.jobspec.parse_job`` like any orch body.
"""

from __future__ import annotations

import re

from orch.nomad.mapping import (
    ANY_DATACENTER,
    ARCHES,
    ATTRIBUTES,
    CONFIG_KEYS,
    DEFAULTS,
    DRIVERS,
    FIELDS,
    META_TARGET,
    NS,
    OPERATORS,
    READ_ONLY,
    RESCHEDULE_DEFAULTS,
    Field,
)
from orch.validation import fields
from orch.validation.fields import fail

# Nomad's default job type (orch's is batch): a Nomad file without `type` is a service.
DEFAULT_TYPE = "service"


def is_nomad_job(body: dict) -> bool:
    """Nomad's job JSON (``{"Job": {...}}`` or the bare object) rather than an orch body."""
    return "Job" in body or "TaskGroups" in body


def job_from_nomad(job: dict) -> dict:
    """An orch job body for Nomad's ``Job`` object; ValidationError names what is refused."""
    if isinstance(job, dict) and set(job) == {"Job"}:
        job = job["Job"]  # the register body's wrapper
    job = _object(job, "Job")
    if job.get("ID") is None and job.get("Name") is not None:
        job = {**job, "ID": job["Name"]}
    body = _block("Job", _without_default_reschedule(job), "Job")
    body.setdefault("type", DEFAULT_TYPE)
    _check_name(job)
    constraints = body.pop("datacenters", []) + body.get("constraints", [])
    if constraints:
        body["constraints"] = constraints
    _service_names(body)
    _default_update(job, body)
    return body


def _default_update(job: dict, body: dict) -> None:
    """A service job without any update block gets Nomad's default rolling update.

    Nomad applies its default strategy (one at a time, with a deployment) when
    the block is omitted; orch's `update {}` reads with the same defaults. A
    block that is given, even Nomad's all-zero "no rolling updates", is kept."""
    if body.get("type") != "service" or job.get("Update") is not None:
        return
    groups = job.get("TaskGroups")
    groups = groups if isinstance(groups, list) else []
    if any(isinstance(g, dict) and g.get("Update") is not None for g in groups):
        return
    body["update"] = {}


def _without_default_reschedule(job: dict) -> dict:
    """The job with its groups' ReschedulePolicy dropped where it is Nomad's default."""
    groups, job_type = job.get("TaskGroups"), job.get("Type") or DEFAULT_TYPE
    if not isinstance(groups, list) or not isinstance(job_type, str):
        return job  # the table's checks name the bad value
    default = RESCHEDULE_DEFAULTS.get(job_type, {})
    kept = []
    for group in groups:
        policy = group.get("ReschedulePolicy") if isinstance(group, dict) else None
        if isinstance(policy, dict) and _is_default(policy, default):
            group = {k: v for k, v in group.items() if k != "ReschedulePolicy"}
        kept.append(group)
    return {**job, "TaskGroups": kept}


def _service_names(body: dict) -> None:
    """Default service names as Nomad's (``<job>-<group>[-<task>]``), interpolated."""
    job_id = str(body.get("job_id"))
    for group in body.get("task_groups") or []:
        for service in group.get("services") or []:
            name = service.get("name") or "${JOB}-${TASKGROUP}"
            if not isinstance(name, str):
                continue  # parse_job names the bad value
            names = {"JOB": job_id, "NOMAD_JOB_NAME": job_id}
            names.update(TASKGROUP=group.get("name"), NOMAD_GROUP_NAME=group.get("name"))
            for variable, value in names.items():
                name = name.replace(f"${{{variable}}}", str(value))
            service["name"] = name


def _check_name(job: dict) -> None:
    """orch jobs have one id: a Name other than the ID would be lost."""
    name = job.get("Name")
    if name not in (None, "", job.get("ID")):
        fail("Job.Name", f"must equal Job.ID ({job.get('ID')!r}): orch names a job by its id")


def _object(value, path: str) -> dict:
    if not isinstance(value, dict):
        fail(path, "must be a JSON object")
    return value


def _block(kind: str, raw: dict, path: str) -> dict:
    """Every field of one Nomad block converted by the table; the rest refused."""
    known = {f.nomad: f for f in FIELDS[kind]}
    out: dict = {}
    for key, value in raw.items():
        here = f"{path}.{key}"
        field = known.get(key)
        if field is None:
            _unmapped(kind, key, value, here)
        elif value is not None and value != "":
            # Nomad's Go structs cannot tell "" from unset (`nomad job inspect`
            # prints `"KillSignal": ""`): an empty string is the default.
            _convert(field, value, here, out)
    if kind in ("Task", "TaskGroup", "Service", "Check", "Constraint"):
        _finish(kind, out, path)
    return out


def _unmapped(kind: str, key: str, value, path: str) -> None:
    """Accept a field orch lacks only when it holds Nomad's default."""
    if (kind == "Job" and key in READ_ONLY) or _is_default(value, DEFAULTS.get(kind, {}).get(key)):
        return
    fail(path, "is not supported by orch")


def _is_default(value, default) -> bool:
    """Empty (null, 0, false, "", [], {} or a map of those) or equal to ``default``."""
    if value == default:
        return True
    if isinstance(value, dict):
        base = default if isinstance(default, dict) else {}
        return all(_is_default(v, base.get(k)) for k, v in value.items())
    return value in (None, 0, False, "", [])


def _convert(field: Field, value, path: str, out: dict) -> None:
    kind = field.kind
    if kind == "value":
        out[field.orch] = value
    elif kind == "seconds":
        out[field.orch] = seconds(value, path)
    elif kind.startswith("list:"):
        out[field.orch] = [
            _block(kind[5:], _object(item, f"{path}[{i}]"), f"{path}[{i}]")
            for i, item in enumerate(_list(value, path))
        ]
    elif kind in FIELDS:
        out[field.orch] = _block(kind, _object(value, path), path)
    else:
        SPECIAL[kind](field, value, path, out)


def _list(value, path: str) -> list:
    if not isinstance(value, list):
        fail(path, "must be a list")
    return value


def seconds(value, path: str):
    """Nanoseconds (Nomad's JSON) -> seconds; a duration string is kept for orch to read."""
    if isinstance(value, str):
        return fields.duration(value, path)  # "10s", as an HCL-minded client may send
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        fail(path, "must be a non-negative integer of nanoseconds")
    if value % NS == 0:
        return value // NS
    try:
        return value / NS
    except OverflowError:  # past ~1.8e317 ns: no float holds it
        fail(path, "must be a finite number")


# ---- fields that need more than a rename ---------------------------------------


def _update(field: Field, value, path: str, out: dict) -> None:
    """An update block; the zeros of Nomad's job-level template mean unset."""
    raw = _object(value, path)
    if raw.get("MaxParallel") == 0 and _is_default(raw, DEFAULTS["Update"]):
        # MaxParallel 0 is Nomad's "no rolling updates" (a batch job's block
        # as Nomad prints it, all zero): orch's job without an update block.
        return
    # HealthyDeadline must be > 0 where it applies: 0 is only ever "unset".
    raw = {k: v for k, v in raw.items() if not (k == "HealthyDeadline" and v == 0)}
    out[field.orch] = _block("Update", raw, path)


def _constraints(field: Field, value, path: str, out: dict) -> None:
    items = _list(value, path)
    out.setdefault(field.orch, []).extend(
        constraint(_object(item, f"{path}[{i}]"), f"{path}[{i}]") for i, item in enumerate(items)
    )


def constraint(raw: dict, path: str) -> dict:
    """One Nomad constraint ``{LTarget, Operand, RTarget}`` as orch's."""
    unknown = sorted(set(raw) - {"LTarget", "Operand", "RTarget"})
    if unknown:
        fail(f"{path}.{unknown[0]}", "is not supported by orch")
    operand = raw.get("Operand") or "="
    operator = OPERATORS.get(operand) if isinstance(operand, str) else None
    if operator is None:
        fail(f"{path}.Operand", f"operator {operand!r} is not supported by orch")
    attribute = _attribute(raw.get("LTarget"), f"{path}.LTarget")
    value = raw.get("RTarget")
    if isinstance(value, str) and "${" in value:
        fail(f"{path}.RTarget", "interpolation in a constraint's value is not supported by orch")
    if attribute == "arch" and operator in ("=", "!=") and isinstance(value, str):
        value = ARCHES.get(value, value)
    return {"attribute": attribute, "operator": operator, "value": value}


def _attribute(target, path: str) -> str:
    if not isinstance(target, str) or not target:
        fail(path, "must be a node attribute such as ${attr.kernel.name}")
    if target in ATTRIBUTES:
        return ATTRIBUTES[target]
    meta = META_TARGET.fullmatch(target)
    if meta:
        return f"meta.{meta.group(1)}"
    known = ", ".join([*ATTRIBUTES, "${meta.KEY}"])
    fail(path, f"attribute {target!r} is not supported by orch (known: {known})")


def datacenter_constraints(datacenters, path: str) -> list[dict]:
    """Nomad's datacenters (agent --datacenter, dc1 by default): a constraint, none for "*"."""
    names = _list(datacenters, path)
    if not names or ANY_DATACENTER in names:
        return []
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            fail(f"{path}[{i}]", "must be a non-empty string")
    if len(names) == 1 and not any(c in names[0] for c in "*?["):
        return [{"attribute": "datacenter", "operator": "=", "value": names[0]}]
    # Globs ("dc-*", "eu-?") as Nomad allows them: one anchored regex for the list.
    pattern = "|".join(_glob(n) for n in names)
    return [{"attribute": "datacenter", "operator": "regex", "value": f"^(?:{pattern})$"}]


def _glob(name: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in name)


def _datacenters(field: Field, value, path: str, out: dict) -> None:
    out["datacenters"] = datacenter_constraints(value, path)


def _networks(field: Field, value, path: str, out: dict) -> None:
    """One host-mode network; its reserved and dynamic ports as orch's port list."""
    networks = _list(value, path)
    if len(networks) > 1:
        fail(path, "orch supports one network per group")
    if not networks:
        return
    raw = _object(networks[0], f"{path}[0]")
    ports = []
    for key, item in raw.items():
        here = f"{path}[0].{key}"
        if key in ("ReservedPorts", "DynamicPorts"):
            for i, port in enumerate(_list(item or [], here)):
                ports.append(_port(_object(port, f"{here}[{i}]"), f"{here}[{i}]", key))
        else:
            _unmapped("Network", key, item, here)
    out[field.orch] = {"ports": ports}


def _port(raw: dict, path: str, kind: str) -> dict:
    port = _block("Port", raw, path)
    if kind == "DynamicPorts" or not port.get("static"):
        port.pop("static", None)  # a dynamic port's Value is the one Nomad picked
    if port.get("to") in (0, -1):
        port.pop("to")  # 0: unset; -1: Nomad's "same as the host port", orch's default
    return port


def _driver(field: Field, value, path: str, out: dict) -> None:
    if not isinstance(value, str) or value not in DRIVERS:
        fail(path, f"driver {value!r} is not supported by orch (known: {', '.join(DRIVERS)})")
    out["nomad_driver"] = value  # for the config check; removed by _finish
    out[field.orch] = DRIVERS[value]


def _config(field: Field, value, path: str, out: dict) -> None:
    config = dict(_object(value, path))
    command = config.get("command")
    if isinstance(command, str):
        # Nomad's command is a program, never a shell line: orch execs a list as is.
        config["command"] = [command]
    out[field.orch] = config


def _env(field: Field, value, path: str, out: dict) -> None:
    out["env"] = _object(value, path)


def _to_group(field: Field, value, path: str, out: dict) -> None:
    out.setdefault("to_group", {})[field.nomad] = (value, path)


def _specs(field: Field, value, path: str, out: dict) -> None:
    crons = [value] if field.nomad == "Spec" else _list(value, path)
    out.setdefault("crons", []).extend(c for c in crons if c not in out.get("crons", []))


def _command(field: Field, value, path: str, out: dict) -> None:
    """A script check's Command and Args: one argv."""
    if field.nomad == "Command":
        out["command"] = [value, *out.get("command", [])]
    else:
        out["command"] = [*out.get("command", []), *_list(value, path)]


SPECIAL = {
    "update": _update,
    "constraints": _constraints,
    "datacenters": _datacenters,
    "networks": _networks,
    "driver": _driver,
    "config": _config,
    "env": _env,
    "group": _to_group,
    "specs": _specs,
    "command": _command,
}


# ---- rules across the fields of one block --------------------------------------


def _finish(kind: str, out: dict, path: str) -> None:
    if kind == "Task":
        _finish_task(out, path)
    elif kind == "TaskGroup":
        _finish_group(out, path)


def _finish_task(task: dict, path: str) -> None:
    """Config keys checked for the Nomad driver; Env into orch's config.env."""
    driver = task.pop("nomad_driver", None)
    config = task.setdefault("config", {})
    if driver is not None:
        for key in sorted(set(config) - set(CONFIG_KEYS[driver])):
            fail(f"{path}.Config.{key}", f"is not supported by orch for the {driver} driver")
    env = task.pop("env", None)
    if env:
        config["env"] = env


def _finish_group(group: dict, path: str) -> None:
    """Each task's group-level fields lifted into the group (orch has them there)."""
    tasks = group.get("tasks") or []
    labels = [p.get("label") for p in (group.get("network") or {}).get("ports", [])]
    for i, task in enumerate(tasks):
        here = f"{path}.Tasks[{i}].Config.ports"
        for label in _list(task.get("config", {}).pop("ports", None) or [], here):
            # orch publishes every group port to its `to`: a docker port list adds nothing.
            if label not in labels:
                fail(here, f"port {label!r} is not in the group's network")
        for key, (value, here) in task.pop("to_group", {}).items():
            _lift(group, key, value, here, task)


def _lift(group: dict, key: str, value, path: str, task: dict) -> None:
    """One of a task's group-level fields merged into its group."""
    if key == "Constraints":
        _constraints(Field(key, "constraints"), value, path, group)
    elif key == "Services":
        for i, raw in enumerate(_list(value, path)):
            service = _block("Service", _object(raw, f"{path}[{i}]"), f"{path}[{i}]")
            name = service.get("name") or "${JOB}-${TASKGROUP}-${TASK}"
            if isinstance(name, str):  # otherwise parse_job names the bad value
                service["name"] = name.replace("${TASK}", str(task.get("name")))
            group.setdefault("services", []).append(service)
    elif key == "ShutdownDelay":
        delay = seconds(value, path)
        group["shutdown_delay"] = max(delay, group.get("shutdown_delay") or 0)
    elif key == "RestartPolicy":
        policy = _block("RestartPolicy", _object(value, path), path)
        if group.get("restart") not in (None, policy):
            fail(path, "differs from the group's: orch keeps one restart policy per group")
        group["restart"] = policy
    elif key == "Meta" and value:
        if len(group.get("tasks") or []) > 1:
            fail(path, "is not supported by orch in a group of several tasks (use group meta)")
        meta = group.get("meta") or {}
        if not isinstance(meta, dict):  # the group's own Meta, not yet checked
            fail(f"{path.rsplit('.Tasks[', 1)[0]}.Meta", "must be a JSON object")
        group["meta"] = {**meta, **_object(value, path)}
