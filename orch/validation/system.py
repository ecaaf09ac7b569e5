"""Rules of the system and sysbatch job types (one copy per node)."""

from __future__ import annotations

from orch.structs import SYSTEM_TYPES, Job
from orch.validation.fields import fail


def system_groups(job: Job) -> None:
    """A system group runs once per node: a count above 1 is a mistake, as in Nomad."""
    if job.type not in SYSTEM_TYPES:
        return
    for i, group in enumerate(job.task_groups):
        if group.count > 1:
            fail(
                f"task_groups[{i}].count",
                f"must be 1 for {job.type.value} jobs (one allocation per node)",
            )
