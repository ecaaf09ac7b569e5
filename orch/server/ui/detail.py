"""The job and allocation pages' data, from the JSON API's own views."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from orch.errors import NotFound
from orch.server import allocstats, views
from orch.server.ui.render import bars, eval_row, pending_reason, when
from orch.structs import Allocation, AllocStatus

if TYPE_CHECKING:
    from orch.server.server import Server


def health(alloc: Allocation) -> str:
    """Healthy while every task runs; unhealthy once failed or lost; else pending."""
    if alloc.client_status == AllocStatus.RUNNING:
        states = alloc.tasks.values()
        return "healthy" if all(s.status.value == "running" for s in states) else "unhealthy"
    if alloc.client_status in (AllocStatus.FAILED, AllocStatus.LOST):
        return "unhealthy"
    if alloc.client_status == AllocStatus.PENDING:
        return "pending"
    return "-"


def alloc_row(alloc: Allocation, now: float) -> dict:
    return {
        "id": alloc.allocation_id,
        "name": alloc.name,
        "group": alloc.task_group,
        "node": alloc.node_id,
        "status": alloc.client_status.value,
        "desired": alloc.desired_status.value,
        "health": health(alloc),
        "restarts": sum(s.restarts for s in alloc.tasks.values()),
        "when": when(alloc.create_time, now),
    }


def job_detail(server: Server, job_id: str) -> dict:
    """The job page: status, why pending, allocations, evaluations."""
    store, now = server.store, time.time()
    job = store.require_job(job_id)
    allocs = store.allocs_for_job(job_id)
    status = server.job_status(job, allocs)
    evals = sorted(store.evals_for_job(job_id), key=lambda e: -e.create_time)
    ordered = sorted(allocs, key=lambda a: (a.task_group, a.index, -a.create_time))
    return {
        "id": job.job_id,
        "type": job.type.value,
        "status": status.value,
        "stopped": job.stopped,
        "version": job.version,
        "when": when(job.submit_time, now),
        "bars": bars(server.job_summary(job, allocs)),
        "reason": pending_reason(job, status, evals, len(store.list_nodes())),
        "allocs": [alloc_row(a, now) for a in ordered],
        "evals": [eval_row(e, now) for e in evals[:20]],
        "eval_count": len(evals),
        "deployment": deployment_row(store.latest_deployment(job_id), now),
    }


def deployment_row(deployment, now: float) -> dict | None:
    """The job's latest deployment: status, why, and per-group progress."""
    if deployment is None:
        return None
    groups = []
    for name, g in sorted(deployment.groups.items()):
        total = int(g.get("desired_total") or 0)
        healthy = int(g.get("healthy") or 0)
        groups.append(
            {
                "name": name,
                "healthy": healthy,
                "total": total,
                "placed": int(g.get("placed") or 0),
                "unhealthy": int(g.get("unhealthy") or 0),
                "canaries": int(g.get("desired_canaries") or 0),
                "promoted": bool(g.get("promoted")),
                "pct": round(100.0 * healthy / total, 1) if total else 0.0,
            }
        )
    return {
        "id": deployment.deployment_id,
        "version": deployment.job_version,
        "status": deployment.status.value,
        "description": deployment.status_description,
        "active": deployment.active,
        "needs_promotion": deployment.active
        and any(g["canaries"] and not g["promoted"] for g in groups),
        "when": when(deployment.create_time, now),
        "groups": groups,
    }


def event_row(event: dict, now: float) -> dict:
    return {
        "type": str(event.get("type", "")),
        "message": str(event.get("message", "")),
        "when": when(event.get("time"), now),
    }


def alloc_detail(server: Server, alloc_id: str) -> dict:
    """The allocation page: its tasks with their events and resources."""
    store, now = server.store, time.time()
    alloc = store.get_alloc(alloc_id)
    if alloc is None:
        raise NotFound("Allocation not found")
    view = views.alloc_view(alloc, store.get_job(alloc.job_id))
    measured = allocstats.for_page(server, alloc)
    tasks = []
    for name, task in sorted(view["tasks"].items()):
        tasks.append(
            {
                "name": name,
                "status": task["status"],
                "driver": task.get("driver", ""),
                "cpu": task["resources"].get("cpu", 0),
                "memory": task["resources"].get("memory", 0),
                "exit_code": task.get("exit_code"),
                "error": task.get("error"),
                "restarts": task.get("restarts", 0),
                "events": [event_row(e, now) for e in task.get("events") or []],
                "use": usage(task["resources"].get("memory", 0), measured, name),
            }
        )
    return {
        **alloc_row(alloc, now),
        "job": alloc.job_id,
        "description": alloc.description,
        "terminal": alloc.terminal(),
        "cpu": alloc.resources.cpu,
        "memory": alloc.resources.memory,
        "tasks": tasks,
        "measured": measured is not None,
    }


def usage(reserved_mb: int, measured: dict | None, task: str) -> dict | None:
    """A task's measured memory (MB, % of reserved for the bar) and CPU %; None: unknown."""
    figures = (measured or {}).get(task)
    if not isinstance(figures, dict):
        return None
    try:
        rss, cpu = float(figures["memory_rss_mb"]), float(figures["cpu_percent"])
    except (KeyError, TypeError, ValueError):
        return None
    share = 100.0 * rss / reserved_mb if reserved_mb > 0 else 0.0
    return {"memory": round(rss, 1), "percent": round(min(share, 100.0)), "cpu": round(cpu, 1)}
