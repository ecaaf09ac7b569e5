"""orch's jobs in Nomad's JSON shapes (api/jobs.go): Job, JobListStub, JobSummary.

Units as Nomad's: durations and timestamps are integer nanoseconds.

Indexes: Nomad's are Raft log indexes; orch has no log, so each index is a
store time in integer microseconds since the epoch (``index_of``), which
grows with every write as the log index does (as long as the wall clock does
not step back). A job's ``JobModifyIndex`` is the time of its last spec
change or stop, its ``ModifyIndex`` also follows its allocations (its status
derives from them), its ``CreateIndex`` is its first kept evaluation or
version.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from orch.nomad import mapping
from orch.structs import Allocation, Constraint, Evaluation, Job, Task, TaskGroup, TriggeredBy

NS = 1_000_000_000
NAMESPACE = "default"
PRIORITY = 50  # orch has no job priority: Nomad's default
SUMMARY_FIELDS = {
    "queued": "Queued",
    "complete": "Complete",
    "failed": "Failed",
    "running": "Running",
    "starting": "Starting",
    "lost": "Lost",
}


def index_of(t: float | None) -> int:
    """A store time as an index: integer microseconds since the epoch."""
    return int((t or 0.0) * 1_000_000)


def ns(seconds: float | None) -> int:
    """Seconds (a duration or a time) as Nomad's integer nanoseconds."""
    return int(round((seconds or 0.0) * NS))


def ns_or_none(seconds: float | None) -> int | None:
    return None if seconds is None else ns(seconds)


def job_indexes(job: Job, evals: Iterable[Evaluation], allocs: Iterable[Allocation]) -> dict:
    """CreateIndex, ModifyIndex and JobModifyIndex of a job (see the module doc)."""
    evals = list(evals)
    changed = job.submit_time
    if job.stopped:
        stops = [e.create_time for e in evals if e.triggered_by == TriggeredBy.JOB_DEREGISTER]
        changed = max([changed, *stops])
    created = min([job.submit_time, *(e.create_time for e in evals)])
    touched = max([changed, *(a.modify_time for a in allocs)])
    return {
        "CreateIndex": index_of(created),
        "ModifyIndex": index_of(touched),
        "JobModifyIndex": index_of(changed),
    }


# orch's node attributes -> Nomad's interpolations (the first name wins).
TARGETS: dict[str, str] = {}
for _target, _attribute in mapping.ATTRIBUTES.items():
    TARGETS.setdefault(_attribute, _target)
OPERANDS = {"regex": "regexp"}


def constraint(c: Constraint) -> dict:
    """A Constraint as Nomad writes it; translate reads it back to the same one."""
    name = c.attribute
    if name in TARGETS:
        target = TARGETS[name]
    elif name.startswith("meta."):
        target = "${" + name + "}"
    else:
        target = "${attr." + name.removeprefix("attr.") + "}"
    return {"LTarget": target, "RTarget": c.value, "Operand": OPERANDS.get(c.operator, c.operator)}


def _update(u) -> dict | None:
    if u is None:
        return None
    return {
        "MaxParallel": u.max_parallel,
        "HealthCheck": u.health_check,
        "MinHealthyTime": ns(u.min_healthy_time),
        "HealthyDeadline": ns(u.healthy_deadline),
        "ProgressDeadline": ns(u.progress_deadline),
        "AutoRevert": u.auto_revert,
        "AutoPromote": u.auto_promote,
        "Canary": u.canary,
    }


def _argv(command, args) -> list[str]:
    """orch's command as the argv Nomad runs: a string is a shell line (as
    orch's exec driver runs it, args quoted onto it), a list an argv."""
    if isinstance(command, str):
        return ["/bin/sh", "-c", " ".join([command, *(shlex.quote(a) for a in args)])]
    return [*command, *args]


def _config(task: Task) -> tuple[dict, dict]:
    """A task's Config as Nomad writes it (command + args) and its Env."""
    config = dict(task.config)
    env = config.pop("env", None) or {}
    command = config.get("command")
    if command and task.driver == "exec":
        argv = _argv(command, config.pop("args", None) or [])
        config["command"], config["args"] = argv[0], argv[1:]
    return config, env


def task(t: Task) -> dict:
    config, env = _config(t)
    return {
        "Name": t.name,
        "Driver": t.driver,
        "Config": config,
        "Env": env or None,
        "Resources": {"CPU": t.resources.cpu, "MemoryMB": t.resources.memory},
        "KillTimeout": ns_or_none(t.kill_timeout),
        "KillSignal": t.kill_signal,
        "DispatchPayload": {"File": t.payload_file} if t.payload_file else None,
    }


def _check_restart(raw: dict | None) -> dict | None:
    if not raw:
        return None
    return {"Limit": raw.get("limit", 0), "Grace": ns(raw.get("grace"))}


def _check(c: dict) -> dict:
    out = {
        "Name": c.get("name", ""),
        "Type": c.get("type", ""),
        "Interval": ns(c.get("interval")),
        "Timeout": ns(c.get("timeout")),
        "CheckRestart": _check_restart(c.get("check_restart")),
    }
    if c.get("path") is not None:
        out["Path"] = c["path"]
    if c.get("command"):
        argv = _argv(c["command"], [])
        out["Command"], out["Args"] = argv[0], argv[1:]
    return out


def _service(s: dict) -> dict:
    return {
        "Name": s["name"],
        "PortLabel": "" if s.get("port") is None else str(s["port"]),
        "Tags": list(s.get("tags") or ()),
        "Provider": "nomad",
        "Checks": [_check(c) for c in s.get("checks") or ()],
        "CheckRestart": _check_restart(s.get("check_restart")),
    }


def _restart(policy: dict | None) -> dict | None:
    if policy is None:
        return None
    return {
        "Attempts": policy["attempts"],
        "Interval": ns(policy["interval"]),
        "Delay": ns(policy["delay"]),
        "Mode": policy["mode"],
    }


def _networks(group: TaskGroup) -> list[dict]:
    if not group.ports:
        return []
    reserved = [p for p in group.ports if p.static is not None]
    dynamic = [p for p in group.ports if p.static is None]

    def port(p) -> dict:
        return {"Label": p.label, "Value": p.static or 0, "To": p.to or 0}

    return [
        {"ReservedPorts": [port(p) for p in reserved], "DynamicPorts": [port(p) for p in dynamic]}
    ]


def task_group(group: TaskGroup) -> dict:
    return {
        "Name": group.name,
        "Count": group.count,
        "Constraints": [constraint(c) for c in group.constraints],
        "Tasks": [task(t) for t in group.tasks],
        "Networks": _networks(group),
        "Services": [_service(s) for s in group.services],
        "Update": _update(group.update),
        "Migrate": {"MaxParallel": group.migrate_max_parallel},
        "RestartPolicy": _restart(group.restart),
        "Meta": group.meta or None,
        "ShutdownDelay": ns(group.shutdown_delay),
    }


def _periodic(periodic: dict | None) -> dict | None:
    if periodic is None:
        return None
    specs = periodic.get("crons") or [periodic.get("cron")]
    return {
        "Enabled": periodic.get("enabled", True),
        "Spec": specs[0] if specs else "",
        "Specs": specs,
        "SpecType": "cron",
        "ProhibitOverlap": bool(periodic.get("prohibit_overlap")),
        "TimeZone": periodic.get("time_zone") or "UTC",
    }


def _parameterized(params: dict | None) -> dict | None:
    if params is None:
        return None
    return {
        "Payload": params.get("payload", "optional"),
        "MetaRequired": list(params.get("meta_required") or ()),
        "MetaOptional": list(params.get("meta_optional") or ()),
    }


def job(j: Job, status: str, indexes: dict) -> dict:
    """The full Job of GET /v1/job/<id> and of each version."""
    return {
        "ID": j.job_id,
        "Name": j.job_id,
        "Namespace": NAMESPACE,
        "Type": j.type.value,
        "Priority": PRIORITY,
        "Region": "global",
        "Datacenters": ["*"],
        "Constraints": [constraint(c) for c in j.constraints],
        "TaskGroups": [task_group(g) for g in j.task_groups],
        "Update": _update(j.update),
        "Periodic": _periodic(j.periodic),
        "ParameterizedJob": _parameterized(j.parameterized),
        "ParentID": j.parent_id or "",
        "Dispatched": dispatched(j),
        "DispatchIdempotencyToken": j.dispatch_token,
        "Payload": j.payload or None,
        "Meta": j.meta or None,
        "Stop": j.stopped,
        "Status": status,
        "StatusDescription": "",
        "Version": j.version,
        "SubmitTime": ns(j.submit_time),
        **indexes,
    }


def dispatched(j: Job) -> bool:
    """A child of a parameterized job (orch.server.dispatch names them so;
    no route registers a job with a parent)."""
    return bool(j.parent_id) and j.job_id.startswith(f"{j.parent_id}-dispatch-")


def summary(j: Job, counts: dict, indexes: dict) -> dict:
    """JobSummary: per group, allocations by client status."""
    return {
        "JobID": j.job_id,
        "Namespace": NAMESPACE,
        "Summary": {
            name: {field: int(c.get(key, 0)) for key, field in SUMMARY_FIELDS.items()}
            | {"Unknown": 0}
            for name, c in counts.items()
        },
        "Children": None,
        "CreateIndex": indexes["CreateIndex"],
        "ModifyIndex": indexes["ModifyIndex"],
    }


def children(statuses: list[str]) -> dict:
    """JobChildrenSummary of a periodic or parameterized job."""
    return {
        "Pending": sum(1 for s in statuses if s == "pending"),
        "Running": sum(1 for s in statuses if s == "running"),
        "Dead": sum(1 for s in statuses if s not in ("pending", "running")),
    }


def job_stub(j: Job, status: str, job_summary: dict, indexes: dict) -> dict:
    """JobListStub, an entry of GET /v1/jobs."""
    return {
        "ID": j.job_id,
        "ParentID": j.parent_id or "",
        "Name": j.job_id,
        "Namespace": NAMESPACE,
        "Datacenters": ["*"],
        "Type": j.type.value,
        "Priority": PRIORITY,
        "Periodic": j.periodic is not None,
        "ParameterizedJob": j.parameterized is not None,
        "Stop": j.stopped,
        "Status": status,
        "StatusDescription": "",
        "JobSummary": job_summary,
        "SubmitTime": ns(j.submit_time),
        **indexes,
    }
