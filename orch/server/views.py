"""Request bodies to dataclasses and dataclasses to the seed's response shapes."""
from __future__ import annotations

import hashlib

from orch.errors import ValidationError
from orch.structs import Allocation, Job, Node, Resources

NODE_ID_MAX = 128
SECRET_MAX = 256


def _non_negative_int(value, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"{path}: must be a non-negative integer")
    return value


def _string_map(value, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(f"{path}: must be an object")
    out = {}
    for key, item in value.items():
        if isinstance(item, (dict, list)):
            raise ValidationError(f"{path}.{key}: must be a scalar")
        out[str(key)] = item
    return out


def node_from_register(body) -> Node:
    """Validate a POST /register body."""
    if not isinstance(body, dict):
        raise ValidationError("body: must be a JSON object")
    node_id = body.get("node_id")
    if not isinstance(node_id, str) or not node_id or len(node_id) > NODE_ID_MAX:
        raise ValidationError("node_id: must be a non-empty string")
    region = body.get("region", "global")
    if not isinstance(region, str) or not region:
        raise ValidationError("region: must be a non-empty string")
    resources = body.get("resources")
    if not isinstance(resources, dict):
        raise ValidationError("resources: must be an object with cpu and memory")
    cpu = _non_negative_int(resources.get("cpu"), "resources.cpu")
    memory = _non_negative_int(resources.get("memory"), "resources.memory")
    endpoint = body.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
        raise ValidationError("endpoint: must be an http(s) URL")
    healthy = body.get("healthy", True)
    if not isinstance(healthy, bool):
        raise ValidationError("healthy: must be a boolean")
    return Node(node_id=node_id, region=region, resources=Resources(cpu, memory),
                healthy=healthy, endpoint=endpoint,
                attributes=_string_map(body.get("attributes"), "attributes"),
                meta=_string_map(body.get("meta"), "meta"),
                secret_digest=secret_digest(body.get("secret_id"), "secret_id"))


def secret_digest(secret, path: str) -> str:
    """The stored form of an optional node secret ("" when absent)."""
    if secret is None:
        return ""
    if not isinstance(secret, str) or not secret or len(secret) > SECRET_MAX:
        raise ValidationError(f"{path}: must be a non-empty string "
                              f"(at most {SECRET_MAX} characters)")
    return hashlib.sha256(secret.encode()).hexdigest()


def task_view(alloc: Allocation, job: Job | None) -> dict:
    """The seed's per-task map of GET /jobs: spec (resources, config) + state."""
    group = job.group(alloc.task_group) if job else None
    out = {}
    for task in (group.tasks if group else ()):
        state = alloc.tasks.get(task.name)
        entry = {"resources": task.resources.to_dict(), "config": task.config,
                 "driver": task.driver}
        entry.update(state.to_dict() if state else
                     {"status": "pending", "start_time": None, "end_time": None,
                      "exit_code": None, "error": None, "restarts": 0, "events": []})
        out[task.name] = entry
    return out


def alloc_view(alloc: Allocation, job: Job | None, *, tasks: bool = True) -> dict:
    out = alloc.to_dict()
    out["tasks"] = task_view(alloc, job) if tasks else {}
    return out


def job_view(job: Job, status, allocs: list[Allocation], *, tasks: bool = True) -> dict:
    out = job.to_dict()
    out["status"] = status.value
    out["allocations"] = [alloc_view(a, job, tasks=tasks)
                          for a in sorted(allocs, key=lambda a: (a.create_time, a.task_group, a.index))]
    return out


def node_view(node: Node, allocs: list[Allocation]) -> dict:
    """A node with the allocations it holds now (the store's live ones)."""
    out = node.to_dict()
    out.pop("secret_digest", None)
    out["allocations"] = [
        {"allocation_id": a.allocation_id, "job_id": a.job_id,
         "task_group": a.task_group, "status": a.client_status.value,
         "desired_status": a.desired_status.value,
         "start_time": a.start_time, "end_time": a.end_time}
        for a in allocs]
    return out
