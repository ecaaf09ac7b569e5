"""Validate a job body (the seed's POST /jobs shape) into a ``structs.Job``.

Every error names the path of the offending field first, e.g.
``task_groups[0].tasks[1].resources.memory: must be a non-negative integer``,
so a client can point at the exact spot of its file.
"""

from __future__ import annotations

from orch.structs import (
    CONSTRAINT_OPERATORS,
    DRIVERS,
    Constraint,
    Job,
    JobType,
    Resources,
    Task,
    TaskGroup,
    new_id,
)
from orch.validation import bodies, fields, kill, regex, restart, services, system, update
from orch.validation import drain as drain_rules
from orch.validation.fields import fail
from orch.validation.fields import is_int as _int
from orch.validation.fields import obj as _object
from orch.validation.meta import meta as _meta
from orch.validation.network import network as _network
from orch.validation.parameterized import dispatch_payload as _dispatch_payload
from orch.validation.parameterized import parameterized as _parameterized
from orch.validation.periodic import periodic as _periodic

DEFAULT_CPU = 100
DEFAULT_MEMORY = 64
DEFAULT_RESOURCES = Resources(DEFAULT_CPU, DEFAULT_MEMORY)
JOB_TYPES = tuple(t.value for t in JobType)


def parse_job(body, job_id: str | None = None, *, max_count: int = 10000) -> Job:
    """Validate a job body and return the Job it describes."""
    if not isinstance(body, dict):
        fail("body", "must be a JSON object")
    if job_id is not None:
        job_id = _job_id(job_id, "job_id")
    elif body.get("job_id") is not None:
        job_id = _job_id(body["job_id"], "job_id")
    else:
        job_id = new_id()
    job = Job(
        job_id=job_id,
        type=_job_type(body.get("type")),
        task_groups=_groups(body.get("task_groups"), max_count),
        constraints=_constraints(body.get("constraints"), "constraints"),
        meta=_meta(body.get("meta"), "meta"),
        periodic=_periodic(body.get("periodic")),
        parameterized=_parameterized(body.get("parameterized")),
    )
    job = update.with_updates(job, body)
    job = restart.with_restarts(job, body)
    system.system_groups(job)
    _launcher_rules(job)
    return job


# A child's id is the parent's plus "-periodic-<unix time>" or
# "-dispatch-<unix time>-<4 hex>" (at most 27 characters): it must stay an id.
PARENT_ID_MAX = fields.ID_MAX - 27


def _launcher_rules(job: Job) -> None:
    """Periodic and parameterized jobs: batch only, one or the other."""
    if job.periodic is not None and job.parameterized is not None:
        fail("periodic", "a job cannot be both periodic and parameterized")
    block = "periodic" if job.periodic is not None else "parameterized"
    if job.is_parent and job.type != JobType.BATCH:
        fail(block, "is only allowed on batch jobs")
    if job.is_parent and len(job.job_id) > PARENT_ID_MAX:
        fail("job_id", f"must be at most {PARENT_ID_MAX} characters for a {block} job")


_job_id = fields.ident
_name = fields.name


def _job_type(value) -> JobType:
    if value is None:
        return JobType.BATCH
    if value not in JOB_TYPES:
        fail("type", f"must be one of {', '.join(JOB_TYPES)}")
    return JobType(value)


def _groups(value, max_count: int) -> tuple[TaskGroup, ...]:
    if not isinstance(value, list) or not value:
        fail("task_groups", "must be a non-empty list")
    groups, seen = [], set()
    for i, raw in enumerate(value):
        path = f"task_groups[{i}]"
        group = _group(_object(raw, path), path, max_count)
        if group.name in seen:
            fail(f"{path}.name", f'duplicate group name "{group.name}"')
        seen.add(group.name)
        groups.append(group)
    return tuple(groups)


# Tasks of one group: each is a process and a line of every full heartbeat of
# its node; a group of thousands is a mistake, and bounded beats stay cheap.
MAX_TASKS = 512


def _group(raw: dict, path: str, max_count: int) -> TaskGroup:
    name = _name(raw.get("name"), f"{path}.name")
    count = raw.get("count")
    count = 1 if count is None else count
    if not _int(count) or count < 1:
        fail(f"{path}.count", "must be a positive integer")
    if count > max_count:
        fail(f"{path}.count", f"must be at most {max_count}")
    tasks = raw.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        fail(f"{path}.tasks", "must be a non-empty list")
    if len(tasks) > MAX_TASKS:
        fail(f"{path}.tasks", f"must have at most {MAX_TASKS} tasks")
    parsed, seen = [], set()
    for j, task_raw in enumerate(tasks):
        task_path = f"{path}.tasks[{j}]"
        task = _task(_object(task_raw, task_path), task_path)
        if task.name in seen:
            fail(f"{task_path}.name", f'duplicate task name "{task.name}"')
        seen.add(task.name)
        parsed.append(task)
    group_services = services.services(raw.get("services"), f"{path}.services")
    ports = _network(raw.get("network"), f"{path}.network")
    services.port_labels(group_services, {p.label for p in ports}, f"{path}.services")
    return TaskGroup(
        name=name,
        count=count,
        tasks=tuple(parsed),
        constraints=_constraints(raw.get("constraints"), f"{path}.constraints"),
        stop_after=_disconnect(raw.get("disconnect"), f"{path}.disconnect"),
        migrate_max_parallel=drain_rules.migrate(raw.get("migrate"), f"{path}.migrate"),
        meta=_meta(raw.get("meta"), f"{path}.meta"),
        services=group_services,
        ports=ports,
        shutdown_delay=kill.shutdown_delay(raw.get("shutdown_delay"), f"{path}.shutdown_delay"),
    )


def _task(raw: dict, path: str) -> Task:
    name = _name(raw.get("name"), f"{path}.name")
    config = raw.get("config")
    config = {} if config is None else dict(_object(config, f"{path}.config"))
    driver = _driver(raw.get("driver"), config, path)
    config = task_config(config, driver, f"{path}.config")
    return Task(
        name=name,
        driver=driver,
        config=config,
        resources=_resources(raw.get("resources"), f"{path}.resources"),
        payload_file=_dispatch_payload(raw.get("dispatch_payload"), f"{path}.dispatch_payload"),
        kill_signal=kill.kill_signal(raw.get("kill_signal"), f"{path}.kill_signal"),
        kill_timeout=kill.kill_timeout(raw.get("kill_timeout"), f"{path}.kill_timeout"),
    )


def _driver(value, config: dict, path: str) -> str:
    """An explicit driver wins; otherwise image implies docker, command exec."""
    if value is not None:
        if value not in DRIVERS:
            fail(f"{path}.driver", f"must be one of {', '.join(DRIVERS)}")
        return value
    if config.get("image") is not None:
        return "docker"
    if config.get("command") is not None:
        return "exec"
    fail(f"{path}.driver", "is required when config has neither image nor command")


def task_config(config: dict, driver: str, path: str) -> dict:
    """A task's config checked for its driver (env values become strings)."""
    if driver == "docker":
        image = config.get("image")
        if not isinstance(image, str) or not image.strip():
            fail(f"{path}.image", "must be a non-empty string for the docker driver")
    elif config.get("command") is None:
        fail(f"{path}.command", "is required for the exec driver")
    if config.get("command") is not None:
        _command(config["command"], f"{path}.command")
    if config.get("args") is not None:
        _strings(config["args"], f"{path}.args")
    if config.get("env") is not None:
        config["env"] = _env(config["env"], f"{path}.env")
    if config.get("cwd") is not None:
        fields.text(config["cwd"], f"{path}.cwd", allow_empty=True)
    for key in ("port", "container_port"):
        if config.get(key) is not None:
            _port(config[key], f"{path}.{key}")
    return config


def _command(value, path: str) -> None:
    if isinstance(value, str):
        if not value.strip() or "\0" in value:
            fail(path, "must be a non-empty string or a non-empty list of strings")
        return
    if not isinstance(value, list) or not value or not value[0]:
        fail(path, "must be a non-empty string or a non-empty list of strings")
    _strings(value, path)


def _strings(value, path: str) -> None:
    if not isinstance(value, list) or not all(isinstance(s, str) and "\0" not in s for s in value):
        fail(path, "must be a list of strings")


def _env(value, path: str) -> dict:
    """Environment as str -> str; numbers are accepted and stringified."""
    env = {}
    for key, val in _object(value, path).items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            fail(path, f'invalid variable name "{key}"')
        if isinstance(val, bool) or not isinstance(val, (str, int, float)):
            fail(f"{path}.{key}", "must be a string or a number")
        if isinstance(val, float):
            fields.finite(val, f"{path}.{key}")
        val = fields.text(str(val), f"{path}.{key}", allow_empty=True)
        if "\0" in val:
            fail(f"{path}.{key}", "must not contain NUL characters")
        env[key] = val
    return env


def _port(value, path: str) -> None:
    if not _int(value) or not 1 <= value <= 65535:
        fail(path, "must be an integer in 1..65535")


def _resources(value, path: str) -> Resources:
    return bodies.resources(value, path, DEFAULT_RESOURCES)


def _constraints(value, path: str) -> tuple[Constraint, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        fail(path, "must be a list")
    return tuple(
        _constraint(_object(raw, f"{path}[{i}]"), f"{path}[{i}]") for i, raw in enumerate(value)
    )


def _constraint(raw: dict, path: str) -> Constraint:
    attribute = raw.get("attribute")
    if not isinstance(attribute, str) or not attribute:
        fail(f"{path}.attribute", "must be a non-empty string")
    fields.text(attribute, f"{path}.attribute", max_len=fields.ATTRIBUTE_MAX)
    operator = raw.get("operator")
    if operator not in CONSTRAINT_OPERATORS:
        fail(f"{path}.operator", f"must be one of {' '.join(CONSTRAINT_OPERATORS)}")
    value = _constraint_value(raw.get("value"), f"{path}.value")
    if operator == "regex":
        regex.pattern(value, f"{path}.value")
    return Constraint(attribute, operator, value)


def _constraint_value(value, path: str) -> str:
    """JSON numbers and booleans are accepted; constraints store text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value if isinstance(value, int) else fields.finite(value, path))
    if not isinstance(value, str):
        fail(path, "is required (a string or a number)")
    return fields.text(value, path, allow_empty=True)


# -- disconnect: Nomad's stop_after_client_disconnect ----------------------

MAX_STOP_AFTER = 7 * 86400.0


def _disconnect(value, path: str) -> float | None:
    """`{"stop_after": "30s"}`: seconds a cut-off agent keeps the group's tasks."""
    if value is None:
        return None
    value = _object(value, path)
    unknown = sorted(set(value) - {"stop_after"})
    if unknown:
        fail(f"{path}.{unknown[0]}", "unknown field (known: stop_after)")
    raw = value.get("stop_after")
    if raw is None:
        return None
    seconds = fields.duration(raw, f"{path}.stop_after")
    if not 0 < seconds <= MAX_STOP_AFTER:
        fail(f"{path}.stop_after", "must be more than 0 and at most 7 days")
    return seconds
