"""Folds an agent's heartbeat allocation map into the server's state.

The agent is the truth for client_status; the server is the truth for
desired_status. Anything the agent runs that the server no longer wants
(stopped, lost and replaced, purged) is told to stop; anything the server
placed there that the agent does not know is pushed again (agents accept a
repeated push idempotently).

A node may send only the reports that changed since its last acknowledged
beat (a *delta*): they are applied as they come, but the two repairs that
need the node's whole picture (pushing what it does not know, stopping what
it runs unchanged and unwanted) wait for a full beat. The agent sends one
every ``orch.agent.loop.FULL_BEAT_S`` and whenever the answer asks for it (``resync``), which it
does until a full beat has come from the node since this server started, it
registered or it was declared down.

A node speaks only for itself: a report about an allocation the server
placed on another node is ignored (and logged once), never turned into a
stop sent to that other node. An allocation that ends as `stopped` while the
server still wants it was stopped behind the server's back: it counts as
failed, so the job's reschedule policy replaces it.
"""

from __future__ import annotations

import logging
import time

from orch.server.planner import Dispatch, NodeAllocState, Planner
from orch.structs import (
    TERMINAL_ALLOC,
    Allocation,
    AllocStatus,
    DesiredStatus,
    JobType,
    TaskState,
    TaskStatus,
    TriggeredBy,
    replace,
    short_id,
)

log = logging.getLogger(__name__)

# A placement younger than this may simply not have reached the agent yet.
REPUSH_AFTER_S = 2.0
# (node, alloc) pairs already warned about; cleared when full, so a node that
# keeps repeating a foreign allocation is logged again now and then, not forever.
FOREIGN_LOG_MAX = 10_000
UNASKED_STOP = "stopped on its node without the server asking"


def _status(raw) -> AllocStatus | None:
    try:
        return AllocStatus(raw)
    except ValueError:
        return None


def _tasks(raw) -> dict | None:
    if not isinstance(raw, dict):
        return None
    try:
        return {name: TaskState.from_dict(t) for name, t in raw.items() if isinstance(t, dict)}
    except (ValueError, TypeError):
        return None


def _task_unchanged(raw, state: TaskState | None) -> bool:
    """True only if ``TaskState.from_dict(raw) == state`` (False may be either)."""
    return (
        state is not None
        and isinstance(raw, dict)
        and raw.get("status") == state.status.value
        and raw.get("start_time") == state.start_time
        and raw.get("end_time") == state.end_time
        and raw.get("exit_code") == state.exit_code
        and raw.get("error") == state.error
        and (raw.get("restarts") or 0) == state.restarts
        and (raw.get("events") or []) == state.events
    )


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
    if report.get("health") != alloc.health or (report.get("checks") or {}) != alloc.checks:
        return False
    tasks = report.get("tasks")
    if not isinstance(tasks, dict):
        return True  # no task map: tasks are left as they are
    current = alloc.tasks
    return len(tasks) == len(current) and all(
        _task_unchanged(raw, current.get(name)) for name, raw in tasks.items()
    )


def _health_changes(alloc: Allocation, report: dict, now: float) -> dict:
    """The health and check results a report brings (validated by bodies.check_report)."""
    health = report.get("health")
    checks = report.get("checks") or {}
    changes: dict[str, object] = {}
    if health != alloc.health:
        changes["health"] = health
        # The server's clock, not the agent's: deployments compare it with theirs.
        changes["healthy_since"] = now if health == "healthy" else None
    if checks != alloc.checks:
        changes["checks"] = dict(checks)
    return changes


_TERMINAL_VALUES = frozenset(status.value for status in TERMINAL_ALLOC)
# Transitions every healthy allocation makes: logged at DEBUG (see _after_changes).
_ROUTINE = frozenset({AllocStatus.PENDING, AllocStatus.RUNNING, AllocStatus.COMPLETE})


def _unasked_stop(alloc: Allocation) -> Allocation:
    """A wanted allocation its node reports `stopped` failed, as far as the job goes.

    The server asks for a stop by setting desired_status first, so `stopped`
    under desired `run` means someone else stopped it (a DELETE sent straight
    to the agent): a service is rescheduled, a batch allocation stays failed.
    """
    if alloc.client_status != AllocStatus.STOPPED:
        return alloc
    log.warning("alloc %s %s: counted as failed", short_id(alloc.allocation_id), UNASKED_STOP)
    return replace(alloc, client_status=AllocStatus.FAILED, description=UNASKED_STOP)


def merge_report(alloc: Allocation, report: dict, now: float) -> Allocation | None:
    """The allocation updated by an agent's report, or None if nothing changed."""
    if _unchanged(alloc, report):
        return None
    status = _status(report.get("status"))
    tasks = _tasks(report.get("tasks"))
    if status is None:
        return None
    if alloc.client_status in TERMINAL_ALLOC and status not in TERMINAL_ALLOC:
        return None  # terminal on the server is final
    changes: dict[str, object] = {}
    if status != alloc.client_status:
        changes["client_status"] = status
    if tasks is not None and tasks != alloc.tasks:
        changes["tasks"] = tasks
    for key in ("start_time", "end_time"):
        value = report.get(key)
        if isinstance(value, (int, float)) and value != getattr(alloc, key):
            changes[key] = float(value)
    changes.update(_health_changes(alloc, report, now))
    if not changes:
        return None
    return replace(alloc, modify_time=now, **changes)


def _ended_tasks(alloc: Allocation, report: dict, now: float) -> Allocation | None:
    """A stopped (or lost) allocation with its tasks as they ended on the node.

    Its status is the server's (it asked for the stop); its tasks were left
    as last reported, `running` for good, without exit codes or kill events.
    Taken once: when the stored tasks have not all ended."""
    if all(t.status in _TASK_ENDED for t in alloc.tasks.values()):
        return None
    tasks = _tasks(report.get("tasks"))
    if not tasks or tasks == alloc.tasks:
        return None
    return replace(alloc, tasks=tasks, modify_time=now)


_TASK_ENDED = frozenset({TaskStatus.COMPLETE, TaskStatus.FAILED})


class AllocSync:
    """Applies heartbeat allocation maps for one server."""

    def __init__(self, state: NodeAllocState, planner: Planner, dispatch: Dispatch):
        self._state = state
        self._planner = planner
        self._dispatch = dispatch
        self._foreign_logged: set[tuple[str, str]] = set()
        # Nodes whose full picture this process has had since their (re)start.
        self._synced: set[str] = set()

    def forget(self, node_id: str) -> None:
        """The node's next delta is answered with a resync."""
        self._synced.discard(node_id)

    def forget_all(self) -> None:
        """Every node's next delta is answered with a resync (leadership regained:
        another leader took the beats in between)."""
        self._synced.clear()

    def apply(self, node_id: str, reported: dict, full: bool = True) -> bool:
        """Fold in a node's reports; True if the node should send a full beat."""
        self._fold(node_id, reported)
        if not full:
            return node_id not in self._synced
        self._repush_unknown(node_id, reported, time.time())
        self._synced.add(node_id)
        return False

    def _fold(self, node_id: str, reported: dict) -> None:
        store = self._state
        now = time.time()
        changed, unwanted = [], []
        for alloc_id, report in reported.items():
            if not isinstance(report, dict):
                continue
            alloc = store.get_alloc(alloc_id)
            if alloc is None:
                # Unknown (purged): only the node reporting it holds it.
                if report.get("status") != AllocStatus.STOPPED.value:
                    unwanted.append(
                        Allocation(
                            allocation_id=alloc_id,
                            job_id=str(report.get("job_id", "")),
                            task_group="",
                            node_id=node_id,
                            index=0,
                        )
                    )
                continue
            if alloc.node_id != node_id:
                self._foreign(node_id, alloc)
                continue
            if alloc.desired_status == DesiredStatus.STOP:
                if report.get("status") not in _TERMINAL_VALUES:
                    unwanted.append(alloc)
                else:
                    ended = _ended_tasks(alloc, report, now)
                    if ended is not None:
                        changed.append((alloc, ended))
                continue
            if (
                alloc.description == UNASKED_STOP
                and report.get("status") == AllocStatus.STOPPED.value
            ):
                continue  # already counted as failed
            updated = merge_report(alloc, report, now)
            if updated is not None:
                changed.append((alloc, _unasked_stop(updated)))
        if changed:
            store.update_allocs([new for _, new in changed])
            self._after_changes(changed)
        if unwanted:
            self._dispatch.stop(unwanted)

    def _foreign(self, node_id: str, alloc: Allocation) -> None:
        """A node reported an allocation placed on another node: ignored."""
        key = (node_id, alloc.allocation_id)
        if key in self._foreign_logged:
            return
        if len(self._foreign_logged) >= FOREIGN_LOG_MAX:
            self._foreign_logged.clear()
        self._foreign_logged.add(key)
        log.warning(
            "node %s reported alloc %s of node %s: ignored",
            node_id[:8],
            short_id(alloc.allocation_id),
            alloc.node_id[:8],
        )

    def _after_changes(self, changed) -> None:
        freed = False
        failed_services = set()
        for old, new in changed:
            if old.client_status != new.client_status:
                # Every allocation passes through running and complete: at
                # INFO, a batch of small jobs costs a log line per change.
                # What went wrong (failed, lost) stays at INFO.
                log.log(
                    logging.DEBUG if new.client_status in _ROUTINE else logging.INFO,
                    "alloc %s: %s -> %s",
                    short_id(new.allocation_id),
                    old.client_status.value,
                    new.client_status.value,
                )
            if new.client_status in TERMINAL_ALLOC and not old.terminal():
                freed = True
                job = self._state.get_job(new.job_id)
                if (
                    new.client_status == AllocStatus.FAILED
                    and job is not None
                    and job.type in (JobType.SERVICE, JobType.SYSTEM)
                ):
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
            if now - alloc.create_time < REPUSH_AFTER_S or self._dispatch.busy(
                alloc.allocation_id, node_id
            ):
                continue
            job = store.get_job(alloc.job_id)
            if job is not None and job.group(alloc.task_group) is not None:
                log.info(
                    "alloc %s unknown to its node: pushing again", short_id(alloc.allocation_id)
                )
                self._dispatch.place([alloc], job)
