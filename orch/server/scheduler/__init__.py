"""Pure placement: reconcile a job against its allocations, then place.

``scheduler_for(job)`` picks the entry point by job type: ``generic.compute_plan``
(batch, service) or ``system.compute_system_plan`` (system, sysbatch);
``cluster.Cluster`` is the capacity index they read, kept in sync by the
state store.
"""

from __future__ import annotations

from orch.structs import SYSTEM_TYPES, Job


def scheduler_for(job: Job):
    """The compute_plan function for the job's type (same signature for all)."""
    if job.type in SYSTEM_TYPES:
        from orch.server.scheduler.system import compute_system_plan

        return compute_system_plan
    from orch.server.scheduler.generic import compute_plan

    return compute_plan
