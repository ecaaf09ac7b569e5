"""A group's ``restart`` block, as Nomad's: how the node restarts its failed tasks.

``{"attempts": 2, "interval": "30m", "delay": "15s", "mode": "fail"}``: at
most ``attempts`` restarts per ``interval``, each ``delay`` after the exit;
past them ``fail`` fails the task (the server then replaces a service
allocation), ``delay`` waits for the interval to end and starts again.
Fields left out take Nomad's defaults for the job's type. Without the
block a group keeps orch's behaviour: the agent's built-in policy for
service and system jobs, no restart for batch ones. With it, batch and
sysbatch tasks restart after a failure (never after a success), as Nomad's.

Stored and pushed complete (durations in seconds), so the agent checks the
same dict again with ``restart`` (orch/agent/spec.py).
"""

from __future__ import annotations

import operator

from orch.structs import Job, JobType, replace
from orch.validation import fields
from orch.validation.fields import fail

KNOWN = ("attempts", "interval", "delay", "mode")
MODES = ("fail", "delay")
MAX_ATTEMPTS = 1000
MAX_DURATION = 7 * 86400.0
MIN_INTERVAL = 1.0  # a shorter window would make `attempts` meaningless
# Nomad's defaults: long-running jobs vs run-to-completion ones.
SERVICE_DEFAULTS: dict[str, object] = {
    "attempts": 2,
    "interval": 1800.0,
    "delay": 15.0,
    "mode": "fail",
}
BATCH_DEFAULTS: dict[str, object] = {
    "attempts": 3,
    "interval": 86400.0,
    "delay": 15.0,
    "mode": "fail",
}


def restart(value, path: str, job_type: JobType) -> dict | None:
    """The complete policy (seconds), defaults by job type; None when absent."""
    if value is None:
        return None
    raw = fields.block(value, path, KNOWN)
    long_running = job_type in (JobType.SERVICE, JobType.SYSTEM)
    policy = dict(SERVICE_DEFAULTS if long_running else BATCH_DEFAULTS)
    policy.update({k: v for k, v in raw.items() if v is not None})
    attempts = policy["attempts"]
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
        fail(f"{path}.attempts", f"must be an integer from 0 to {MAX_ATTEMPTS}")
    if attempts > MAX_ATTEMPTS:
        fail(f"{path}.attempts", f"must be an integer from 0 to {MAX_ATTEMPTS}")
    interval = _seconds(policy["interval"], f"{path}.interval")
    if interval < MIN_INTERVAL:
        fail(f"{path}.interval", f"must be at least {MIN_INTERVAL:g}s")
    delay = _seconds(policy["delay"], f"{path}.delay")
    if policy["mode"] not in MODES:
        fail(f"{path}.mode", f"must be one of {', '.join(MODES)}")
    return {"attempts": attempts, "interval": interval, "delay": delay, "mode": policy["mode"]}


def _seconds(value, path: str) -> float:
    seconds = fields.duration(value, path)
    if not 0 <= seconds <= MAX_DURATION:
        fail(path, "must be from 0 to 7 days")
    return seconds


def with_restarts(job: Job, body: dict) -> Job:
    """The job with each group's restart block (defaults need the job's type)."""
    groups = []
    for i, group in enumerate(job.task_groups):
        raw = body["task_groups"][i].get("restart")  # parse_job checked the groups
        policy = restart(raw, f"task_groups[{i}].restart", job.type)
        groups.append(group if policy == group.restart else replace(group, restart=policy))
    if all(map(operator.is_, groups, job.task_groups)):
        return job  # no block anywhere (most jobs): no copies to build
    return replace(job, task_groups=tuple(groups))
