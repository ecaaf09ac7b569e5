"""The allocation an agent is asked to run: the body of `POST /allocations`."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from functools import cached_property

from orch.errors import ValidationError
from orch.jobspec import DEFAULT_RESOURCES, task_config
from orch.structs import DRIVERS, JobType, Resources, Task, total_resources
from orch.validation import bodies, fields, kill, restart, services
from orch.validation.meta import meta as _meta
from orch.validation.network import LABEL_RE, MAX_PORTS, PORT_MAX
from orch.validation.parameterized import dispatch_payload as _dispatch_payload

MAX_PAYLOAD = 16 * 1024  # decoded bytes, as the server's dispatch limit

# Ids and names become directory, file and container names under the data
# dir: the same rules as in the job spec (orch.validation.fields).


@dataclass(frozen=True)
class AllocSpec:
    allocation_id: str
    job_id: str
    task_group: str
    tasks: tuple[Task, ...]
    job_type: JobType = JobType.BATCH
    stop_after: float | None = None  # the group's disconnect.stop_after, seconds
    meta: dict = field(default_factory=dict, hash=False)  # job meta with the group's over it
    payload: str = ""  # a dispatched job's payload, base64
    # The group's services (orch.validation.services), their ports resolved
    # to host port numbers by the server: the agent runs their checks.
    services: tuple = field(default=(), hash=False)
    index: int = 0  # the allocation's slot in its group
    # Host ports the scheduler reserved: ({"label", "value", "to"}, ...), to None if unmapped.
    ports: tuple = field(default=(), hash=False)
    shutdown_delay: float = 0.0  # seconds out of the catalog before the kill signal
    # The group's restart block (orch.validation.restart); None: the agent's policy.
    restart: dict | None = field(default=None, hash=False)

    @property
    def name(self) -> str:
        """The allocation's name, as the server's: <job>.<group>[<index>]."""
        return f"{self.job_id}.{self.task_group}[{self.index}]"

    def payload_bytes(self) -> bytes:
        return base64.b64decode(self.payload) if self.payload else b""

    @cached_property
    def resources(self) -> Resources:
        """The tasks' demand together; computed once (each heartbeat asks)."""
        return total_resources(self.tasks)

    def to_dict(self) -> dict:
        """The `POST /allocations` body this spec was parsed from."""
        group: dict[str, object] = {
            "name": self.task_group,
            "tasks": [t.to_dict() for t in self.tasks],
        }
        if self.stop_after is not None:
            group["disconnect"] = {"stop_after": self.stop_after}
        if self.meta:
            group["meta"] = self.meta
        if self.services:
            group["services"] = [dict(s) for s in self.services]
        if self.shutdown_delay:
            group["shutdown_delay"] = self.shutdown_delay
        if self.restart is not None:
            group["restart"] = dict(self.restart)
        out: dict[str, object] = {
            "allocation_id": self.allocation_id,
            "job_id": self.job_id,
            "job_type": self.job_type.value,
            "task_group": group,
        }
        if self.payload:
            out["dispatch_payload"] = self.payload
        if self.index:
            out["index"] = self.index
        if self.ports:
            out["ports"] = [dict(p) for p in self.ports]
        return out


def parse_alloc(body) -> AllocSpec:
    """Validate a `POST /allocations` body; raises ValidationError naming the field."""
    body = fields.obj(body, "body")
    alloc_id = fields.ident(body.get("allocation_id"), "allocation_id")
    job_id = fields.ident(body.get("job_id"), "job_id")
    job_type = body.get("job_type") or JobType.BATCH.value
    try:
        job_type = JobType(job_type)
    except ValueError:
        raise ValidationError(
            f"job_type: must be one of {', '.join(t.value for t in JobType)}"
        ) from None
    group = body.get("task_group")
    if not isinstance(group, dict):
        raise ValidationError("task_group: must be an object")
    name = fields.name(group.get("name"), "task_group.name")
    raw_tasks = group.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise ValidationError("task_group.tasks: must be a non-empty list")
    tasks = tuple(_parse_task(t, f"task_group.tasks[{i}]") for i, t in enumerate(raw_tasks))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValidationError("task_group.tasks: task names must be unique")
    return AllocSpec(
        alloc_id,
        job_id,
        name,
        tasks,
        job_type,
        _stop_after(group.get("disconnect")),
        _meta(group.get("meta"), "task_group.meta"),
        _payload(body.get("dispatch_payload")),
        services.services(group.get("services"), "task_group.services"),
        fields.non_negative_int(body.get("index") or 0, "index"),
        _ports(body.get("ports")),
        kill.shutdown_delay(group.get("shutdown_delay"), "task_group.shutdown_delay"),
        restart.restart(group.get("restart"), "task_group.restart", job_type),
    )


def _ports(raw) -> tuple:
    """ports: the host ports the scheduler picked, as alloc_payload sends them."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_PORTS:
        raise ValidationError(f"ports: must be a list of at most {MAX_PORTS} entries")
    out = []
    for i, item in enumerate(raw):
        entry = fields.obj(item, f"ports[{i}]")
        label = entry.get("label")
        if not isinstance(label, str) or not LABEL_RE.fullmatch(label):
            raise ValidationError(f"ports[{i}].label: must be a port label (letters, digits, _)")
        value = _port_number(entry.get("value"), f"ports[{i}].value")
        to = None if entry.get("to") is None else _port_number(entry["to"], f"ports[{i}].to")
        out.append({"label": label, "value": value, "to": to})
    return tuple(out)


def _port_number(value, path: str) -> int:
    if not fields.is_int(value) or not 1 <= value <= PORT_MAX:
        raise ValidationError(f"{path}: must be an integer from 1 to {PORT_MAX}")
    return value


def _payload(raw) -> str:
    """dispatch_payload: base64 of at most MAX_PAYLOAD bytes."""
    if raw is None or raw == "":
        return ""
    if not isinstance(raw, str) or len(raw) > 2 * MAX_PAYLOAD:
        raise ValidationError("dispatch_payload: must be base64 of at most 16 KiB")
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("dispatch_payload: not valid base64") from None
    if len(decoded) > MAX_PAYLOAD:
        raise ValidationError("dispatch_payload: must be base64 of at most 16 KiB")
    return raw


def _stop_after(raw) -> float | None:
    """task_group.disconnect.stop_after: seconds (the server sends a number)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValidationError("task_group.disconnect: must be an object")
    value = raw.get("stop_after")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValidationError(
            "task_group.disconnect.stop_after: must be a non-negative number of seconds"
        )
    return float(value)


def _parse_task(raw, path: str) -> Task:
    if not isinstance(raw, dict):
        raise ValidationError(f"{path}: must be an object")
    name = fields.name(raw.get("name"), f"{path}.name")
    config = raw.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValidationError(f"{path}.config: must be an object")
    driver = raw.get("driver") or _infer_driver(config, path)
    if driver not in DRIVERS:
        raise ValidationError(f"{path}.driver: must be one of {', '.join(DRIVERS)}")
    # The job spec's config rules: the agent may be called without the server.
    config = task_config(dict(config), driver, f"{path}.config")
    return Task(
        name=name,
        driver=driver,
        config=config,
        resources=bodies.resources(raw.get("resources"), f"{path}.resources", DEFAULT_RESOURCES),
        payload_file=_dispatch_payload(raw.get("dispatch_payload"), f"{path}.dispatch_payload"),
        kill_signal=kill.kill_signal(raw.get("kill_signal"), f"{path}.kill_signal"),
        kill_timeout=kill.kill_timeout(raw.get("kill_timeout"), f"{path}.kill_timeout"),
    )


def _infer_driver(config: dict, path: str) -> str:
    if config.get("image"):
        return "docker"
    if config.get("command"):
        return "exec"
    raise ValidationError(f"{path}.config: needs a command (exec) or an image (docker)")
