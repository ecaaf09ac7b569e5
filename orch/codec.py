"""Dataclasses from their stored JSON form (the inverse of ``to_dict``)."""
from __future__ import annotations

from orch.structs import (
    Allocation, AllocStatus, Constraint, DesiredStatus, EvalStatus,
    Evaluation, Job, JobType, Node, Resources, Task, TaskGroup, TaskState,
    TriggeredBy,
)


def resources_from(d: dict | None) -> Resources:
    d = d or {}
    return Resources(int(d.get("cpu") or 0), int(d.get("memory") or 0))


def constraint_from(d: dict) -> Constraint:
    return Constraint(d["attribute"], d["operator"], str(d["value"]))


def job_from(d: dict) -> Job:
    groups = tuple(
        TaskGroup(
            name=g["name"], count=int(g["count"]),
            tasks=tuple(Task(t["name"], t["driver"], dict(t.get("config") or {}),
                             resources_from(t.get("resources")))
                        for t in g["tasks"]),
            constraints=tuple(constraint_from(c) for c in g.get("constraints") or ()))
        for g in d["task_groups"])
    return Job(job_id=d["job_id"], task_groups=groups,
               type=JobType(d.get("type") or "batch"),
               constraints=tuple(constraint_from(c) for c in d.get("constraints") or ()),
               stopped=bool(d.get("stopped")), version=int(d.get("version") or 0),
               submit_time=float(d.get("submit_time") or 0.0))


def node_from(d: dict) -> Node:
    return Node(node_id=d["node_id"], region=d.get("region") or "global",
                resources=resources_from(d.get("resources")),
                healthy=bool(d.get("healthy", True)),
                endpoint=d.get("endpoint") or "",
                attributes=dict(d.get("attributes") or {}),
                meta=dict(d.get("meta") or {}),
                last_heartbeat=float(d.get("last_heartbeat") or 0.0),
                usage=dict(d.get("usage") or {}))


def alloc_from(d: dict) -> Allocation:
    return Allocation(
        allocation_id=d["allocation_id"], job_id=d["job_id"],
        task_group=d["task_group"], node_id=d["node_id"], index=int(d["index"]),
        resources=resources_from(d.get("resources")),
        desired_status=DesiredStatus(d.get("desired_status") or "run"),
        client_status=AllocStatus(d.get("client_status") or "pending"),
        description=d.get("description") or "",
        tasks={n: TaskState.from_dict(t) for n, t in (d.get("tasks") or {}).items()},
        start_time=d.get("start_time"), end_time=d.get("end_time"),
        create_time=float(d.get("create_time") or 0.0),
        modify_time=float(d.get("modify_time") or 0.0),
        job_version=int(d.get("job_version") or 0),
        group_hash=d.get("group_hash") or "", eval_id=d.get("eval_id") or "",
        previous_allocation=d.get("previous_allocation"),
        reschedule_count=int(d.get("reschedule_count") or 0))


def eval_from(d: dict) -> Evaluation:
    return Evaluation(
        eval_id=d["evaluation_id"], job_id=d["job_id"],
        triggered_by=TriggeredBy(d["triggered_by"]),
        status=EvalStatus(d.get("status") or "pending"),
        status_description=d.get("status_description") or "",
        placed=int(d.get("placed") or 0), queued=int(d.get("queued") or 0),
        failures=dict(d.get("failures") or {}), groups=dict(d.get("groups") or {}),
        node_id=d.get("node_id"), create_time=float(d.get("create_time") or 0.0),
        modify_time=float(d.get("modify_time") or 0.0))
