"""Request bodies to dataclasses and dataclasses to the seed's response shapes."""

from __future__ import annotations

from collections.abc import Callable

from orch.errors import NotFound, StorageError, ValidationError
from orch.server.drainer import progress
from orch.structs import Allocation, Job, Node, Resources
from orch.validation import bodies, fields


def node_from_register(body) -> Node:
    """Validate a POST /register body."""
    body = fields.obj(body, "body")
    node_id = bodies.node_id(body.get("node_id"))
    region = bodies.region(body.get("region", "global"))
    resources = bodies.resources(body.get("resources"), "resources")
    endpoint = bodies.endpoint(body.get("endpoint"))
    healthy = body.get("healthy", True)
    if not isinstance(healthy, bool):
        raise ValidationError("healthy: must be a boolean")
    return Node(
        node_id=node_id,
        region=region,
        resources=resources,
        healthy=healthy,
        endpoint=endpoint,
        attributes=fields.scalar_map(body.get("attributes"), "attributes"),
        meta=fields.scalar_map(body.get("meta"), "meta"),
        secret_digest=bodies.secret_digest(body.get("secret_id"), "secret_id"),
        port_range=bodies.port_range(body.get("port_range")),
    )


def task_view(alloc: Allocation, job: Job | None) -> dict:
    """The seed's per-task map of GET /jobs: spec (resources, config) + state."""
    group = job.group(alloc.task_group) if job else None
    out = {}
    for task in group.tasks if group else ():
        state = alloc.tasks.get(task.name)
        entry = {
            "resources": task.resources.to_dict(),
            "config": task.config,
            "driver": task.driver,
        }
        entry.update(
            state.to_dict()
            if state
            else {
                "status": "pending",
                "start_time": None,
                "end_time": None,
                "exit_code": None,
                "error": None,
                "restarts": 0,
                "events": [],
            }
        )
        out[task.name] = entry
    return out


def alloc_view(
    alloc: Allocation,
    job: Job | None,
    *,
    tasks: bool = True,
    version_of: Callable[[int], Job | None] | None = None,
) -> dict:
    """An allocation with its tasks' spec and state. The spec is the one it
    runs: ``version_of(n)`` gives an older kept version of the job when the
    allocation runs one (a rollout's old copies), else the job's own."""
    out = alloc.to_dict()
    if tasks:
        runs = job
        if job is not None and version_of is not None and alloc.job_version != job.version:
            runs = version_of(alloc.job_version) or job
        out["tasks"] = task_view(alloc, runs)
    else:
        out["tasks"] = {}
    return out


def kept_versions(read: Callable[[int], Job]) -> Callable[[int], Job | None]:
    """``version_of`` for alloc_view: each version read once, None if not kept
    or if the database cannot be read (reads answer from memory: the job's spec)."""
    found: dict[int, Job | None] = {}

    def version_of(version: int) -> Job | None:
        if version not in found:
            try:
                found[version] = read(version)
            except (NotFound, StorageError):
                found[version] = None
        return found[version]

    return version_of


def job_view(
    job: Job,
    status,
    allocs: list[Allocation],
    *,
    tasks: bool = True,
    summary: dict | None = None,
    children: list[dict] | None = None,
    version_of: Callable[[int], Job | None] | None = None,
) -> dict:
    out = job.to_dict()
    out["status"] = status.value
    if summary is not None:
        out["summary"] = summary
    # Periodic and dispatch children name their parent; a parent lists its children.
    out["parent_id"] = job.parent_id
    if children is not None:
        out["children"] = children
    out["allocations"] = [
        alloc_view(a, job, tasks=tasks, version_of=version_of)
        for a in sorted(allocs, key=lambda a: (a.create_time, a.task_group, a.index))
    ]
    return out


def allocated(allocs: list[Allocation]) -> Resources:
    """What a node's allocations hold of it (the ones that still occupy it)."""
    return sum((a.resources for a in allocs if a.holds_resources()), Resources())


def node_view(node: Node, allocs: list[Allocation], job_of: Callable[[str], Job | None]) -> dict:
    """A node with the allocations it holds now (the store's live ones).

    The seed's `resources` is the node's total and `usage` the last
    heartbeat's numbers as sent (its `cpu`/`memory` are what was free). Added
    so that no number needs guessing: `allocated` (held by live allocations)
    and `free` (total minus allocated), CPU in MHz and memory in MB as
    everywhere.
    """
    out = node.to_dict()
    out.pop("secret_digest", None)
    out["drain"] = progress(node, allocs, job_of)
    out["allocations"] = [
        {
            "allocation_id": a.allocation_id,
            "job_id": a.job_id,
            "task_group": a.task_group,
            "status": a.client_status.value,
            "desired_status": a.desired_status.value,
            "start_time": a.start_time,
            "end_time": a.end_time,
            "resources": a.resources.to_dict(),
        }
        for a in allocs
    ]
    held = allocated(allocs)
    out["allocated"] = held.to_dict()
    out["free"] = (node.resources - held).to_dict()
    return out
