"""The allocation an agent is asked to run: the body of `POST /allocations`."""
from __future__ import annotations

import re
from dataclasses import dataclass

from orch.errors import ValidationError
from orch.structs import DRIVERS, JobType, Resources, Task, total_resources

# Ids and task names become directory names under the data dir.
# Ids and names become file and container names: the job spec's safe pattern.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
DEFAULT_RESOURCES = Resources(cpu=100, memory=64)


@dataclass(frozen=True)
class AllocSpec:
    allocation_id: str
    job_id: str
    task_group: str
    tasks: tuple[Task, ...]
    job_type: JobType = JobType.BATCH
    stop_after: float | None = None     # the group's disconnect.stop_after, seconds

    @property
    def resources(self) -> Resources:
        return total_resources(self.tasks)

    def to_dict(self) -> dict:
        """The `POST /allocations` body this spec was parsed from."""
        group = {"name": self.task_group, "tasks": [t.to_dict() for t in self.tasks]}
        if self.stop_after is not None:
            group["disconnect"] = {"stop_after": self.stop_after}
        return {"allocation_id": self.allocation_id, "job_id": self.job_id,
                "job_type": self.job_type.value, "task_group": group}


def parse_alloc(body) -> AllocSpec:
    """Validate a `POST /allocations` body; raises ValidationError naming the field."""
    if not isinstance(body, dict):
        raise ValidationError("body: must be a JSON object")
    alloc_id = _safe_name(body.get("allocation_id"), "allocation_id")
    job_id = body.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise ValidationError("job_id: must be a non-empty string")
    job_type = body.get("job_type") or JobType.BATCH.value
    try:
        job_type = JobType(job_type)
    except ValueError:
        raise ValidationError("job_type: must be batch or service")
    group = body.get("task_group")
    if not isinstance(group, dict):
        raise ValidationError("task_group: must be an object")
    name = group.get("name")
    if not isinstance(name, str) or not name:
        raise ValidationError("task_group.name: must be a non-empty string")
    raw_tasks = group.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise ValidationError("task_group.tasks: must be a non-empty list")
    tasks = tuple(_parse_task(t, f"task_group.tasks[{i}]")
                  for i, t in enumerate(raw_tasks))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValidationError("task_group.tasks: task names must be unique")
    return AllocSpec(alloc_id, job_id, name, tasks, job_type,
                     _stop_after(group.get("disconnect")))


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
            "task_group.disconnect.stop_after: must be a non-negative number of seconds")
    return float(value)


def _parse_task(raw, path: str) -> Task:
    if not isinstance(raw, dict):
        raise ValidationError(f"{path}: must be an object")
    name = _safe_name(raw.get("name"), f"{path}.name")
    config = raw.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValidationError(f"{path}.config: must be an object")
    driver = raw.get("driver") or _infer_driver(config, path)
    if driver not in DRIVERS:
        raise ValidationError(f"{path}.driver: must be one of {', '.join(DRIVERS)}")
    return Task(name=name, driver=driver, config=config,
                resources=_parse_resources(raw.get("resources"), f"{path}.resources"))


def _infer_driver(config: dict, path: str) -> str:
    if config.get("image"):
        return "docker"
    if config.get("command"):
        return "exec"
    raise ValidationError(f"{path}.config: needs a command (exec) or an image (docker)")


def _parse_resources(raw, path: str) -> Resources:
    if raw is None:
        return DEFAULT_RESOURCES
    if not isinstance(raw, dict):
        raise ValidationError(f"{path}: must be an object")
    values = {}
    for key, default in (("cpu", DEFAULT_RESOURCES.cpu),
                         ("memory", DEFAULT_RESOURCES.memory)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValidationError(f"{path}.{key}: must be a non-negative integer")
        values[key] = value
    return Resources(**values)


def _safe_name(value, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{path}: must be a non-empty string")
    if not SAFE_NAME.fullmatch(value) or ".." in value:
        raise ValidationError(
            f"{path}: must match [A-Za-z0-9][A-Za-z0-9_.-]* without '..' "
            f"(at most 200 characters)")
    return value
