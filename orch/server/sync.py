"""Folds an agent's heartbeat allocation map into the server's state.

The agent is the truth for client_status; the server is the truth for
desired_status. Anything the agent runs that the server no longer wants
(stopped, lost and replaced, purged) is told to stop; anything the server
placed there that the agent does not know is pushed again (agents accept a
repeated push idempotently).
"""
from __future__ import annotations

import logging
import time

from orch.server.planner import Dispatch, NodeAllocState, Planner
from orch.structs import (
    TERMINAL_ALLOC, Allocation, AllocStatus, DesiredStatus, JobType,
    TaskState, TriggeredBy, replace, short_id,
)

log = logging.getLogger(__name__)

# A placement younger than this may simply not have reached the agent yet.
REPUSH_AFTER_S = 2.0


def _status(raw) -> AllocStatus | None:
    try:
        return AllocStatus(raw)
    except ValueError:
        return None


def _tasks(raw) -> dict | None:
    if not isinstance(raw, dict):
        return None
    try:
        return {name: TaskState.from_dict(t) for name, t in raw.items()
                if isinstance(t, dict)}
    except (ValueError, TypeError):
        return None


def _task_unchanged(raw, state: TaskState | None) -> bool:
    """True only if ``TaskState.from_dict(raw) == state`` (False may be either)."""
    return (state is not None and isinstance(raw, dict)
            and raw.get("status") == state.status.value
            and raw.get("start_time") == state.start_time
            and raw.get("end_time") == state.end_time
            and raw.get("exit_code") == state.exit_code
            and raw.get("error") == state.error
            and (raw.get("restarts") or 0) == state.restarts
            and (raw.get("events") or []) == state.events)


def _unchanged(alloc: Allocation, report: dict) -> bool:
    """A quick exact check that ``merge_report`` would find nothing to change.

    Every heartbeat repeats every allocation the agent holds, finished ones
    included; comparing the raw report field by field avoids building task
    states (enums, dataclasses) for the common case where nothing moved.
    """
    if report.get("status") != alloc.client_status.value:
        return False
    for key in ("start_time", "end_time"):
        value = report.get(key)
        if isinstance(value, (int, float)) and value != getattr(alloc, key):
            return False
    tasks = report.get("tasks")
    if not isinstance(tasks, dict):
        return True                      # no task map: tasks are left as they are
    current = alloc.tasks
    return len(tasks) == len(current) and all(
        _task_unchanged(raw, current.get(name)) for name, raw in tasks.items())


def merge_report(alloc: Allocation, report: dict, now: float) -> Allocation | None:
    """The allocation updated by an agent's report, or None if nothing changed."""
    if _unchanged(alloc, report):
        return None
    status = _status(report.get("status"))
    tasks = _tasks(report.get("tasks"))
    if status is None:
        return None
    if alloc.client_status in TERMINAL_ALLOC and status not in TERMINAL_ALLOC:
        return None    # terminal on the server is final
    changes = {}
    if status != alloc.client_status:
        changes["client_status"] = status
    if tasks is not None and tasks != alloc.tasks:
        changes["tasks"] = tasks
    for key in ("start_time", "end_time"):
        value = report.get(key)
        if isinstance(value, (int, float)) and value != getattr(alloc, key):
            changes[key] = float(value)
    if not changes:
        return None
    return replace(alloc, modify_time=now, **changes)


class AllocSync:
    """Applies heartbeat allocation maps for one server."""

    def __init__(self, state: NodeAllocState, planner: Planner, dispatch: Dispatch):
        self._state = state
        self._planner = planner
        self._dispatch = dispatch

    def apply(self, node_id: str, reported: dict) -> None:
        store = self._state
        now = time.time()
        changed, unwanted = [], []
        for alloc_id, report in reported.items():
            if not isinstance(report, dict):
                continue
            alloc = store.get_alloc(alloc_id)
            if alloc is None or alloc.node_id != node_id \
                    or alloc.desired_status == DesiredStatus.STOP:
                unwanted.append(alloc or Allocation(
                    allocation_id=alloc_id, job_id=str(report.get("job_id", "")),
                    task_group="", node_id=node_id, index=0))
                continue
            updated = merge_report(alloc, report, now)
            if updated is not None:
                changed.append((alloc, updated))
        if changed:
            store.update_allocs([new for _, new in changed])
            self._after_changes(changed)
        if unwanted:
            self._dispatch.stop(unwanted)
        self._repush_unknown(node_id, reported, now)

    def _after_changes(self, changed) -> None:
        freed = False
        failed_services = set()
        for old, new in changed:
            if old.client_status != new.client_status:
                log.info("alloc %s: %s -> %s", short_id(new.allocation_id),
                         old.client_status.value, new.client_status.value)
            if new.client_status in TERMINAL_ALLOC and not old.terminal():
                freed = True
                job = self._state.get_job(new.job_id)
                if new.client_status == AllocStatus.FAILED and job is not None \
                        and job.type == JobType.SERVICE:
                    failed_services.add(new.job_id)
        if failed_services:
            self._planner.create_evals(sorted(failed_services), TriggeredBy.ALLOC_FAILURE)
        if freed:
            self._planner.unblock()

    def _repush_unknown(self, node_id: str, reported: dict, now: float) -> None:
        store = self._state
        for alloc in store.live_allocs_for_node(node_id):
            if alloc.allocation_id in reported:
                continue
            if now - alloc.create_time < REPUSH_AFTER_S \
                    or self._dispatch.busy(alloc.allocation_id, node_id):
                continue
            job = store.get_job(alloc.job_id)
            if job is not None and job.group(alloc.task_group) is not None:
                log.info("alloc %s unknown to its node: pushing again",
                         short_id(alloc.allocation_id))
                self._dispatch.place([alloc], job)
