"""What the /v1 routes read from the Server, already in Nomad's shapes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from orch.nomad import present, shapes
from orch.server import deploy
from orch.structs import Allocation, Deployment, Job

# A deployment and the allocations its plan places share the plan's clock;
# a little slack for one read apart.
PLACED_WITH = 0.001

if TYPE_CHECKING:
    from orch.server.server import Server


class Reads:
    """Nomad-shaped views of the store, with their indexes."""

    def __init__(self, server: Server):
        self.server = server
        self.store = server.store

    def list_index(self) -> int:
        """A list's X-Nomad-Index: the store's last write (deletions included)."""
        return present.index_of(self.store.changes.changed_at)

    def job_indexes(self, job: Job) -> dict:
        return present.job_indexes(
            job, self.store.evals_for_job(job.job_id), self.store.allocs_for_job(job.job_id)
        )

    def status(self, job: Job) -> str:
        """Nomad's job status: pending, running or dead (orch's finished ones)."""
        status = self.server.job_status(job).value
        return status if status in ("pending", "running") else "dead"

    def job(self, job: Job) -> dict:
        return present.job(job, self.status(job), self.job_indexes(job))

    def summary(self, job: Job, indexes: dict | None = None) -> dict:
        allocs = self.store.allocs_for_job(job.job_id)
        counts = self.server.job_summary(job, allocs)
        out = present.summary(job, counts, indexes or self.job_indexes(job))
        if job.is_parent:
            kids = self.store.children_of(job.job_id)
            out["Children"] = present.children([self.status(k) for k in kids])
            # Its Children counts change with theirs: so does its index, as
            # Nomad rewrites a parent's summary (a blocking read wakes then).
            for kid in kids:
                out["ModifyIndex"] = max(out["ModifyIndex"], self.job_indexes(kid)["ModifyIndex"])
        return out

    def job_stub(self, job: Job) -> dict:
        indexes = self.job_indexes(job)
        return present.job_stub(job, self.status(job), self.summary(job, indexes), indexes)

    def alloc_stubs(self, allocs: list[Allocation]) -> list[dict]:
        nodes = {n.node_id: n for n in self.store.list_nodes()}
        ordered = sorted(allocs, key=lambda a: (a.create_time, a.allocation_id))
        deployed = _Deployed(self.store)
        return [shapes.alloc_stub(a, nodes.get(a.node_id), deployed(a)) for a in ordered]

    def deployed(self, alloc: Allocation) -> shapes.Deployed | None:
        """The allocation's part in the deployment that placed it, if any."""
        return _Deployed(self.store)(alloc)

    def deployment_allocs(self, d: Deployment) -> list[Allocation]:
        """The allocations the deployment placed."""
        deployed = _Deployed(self.store)
        return [
            a
            for a in self.store.allocs_for_job(d.job_id)
            if getattr(deployed(a), "deployment_id", None) == d.deployment_id
        ]

    def deployment(self, d: Deployment) -> dict:
        return shapes.deployment(d, _Deployed(self.store).canaries(d))


class _Deployed:
    """Which deployment placed an allocation, read once per job and
    deployment for a list of allocations.

    orch's allocations do not name their deployment: it is the newest of
    the job's deployments for the allocation's version begun by its
    placement (a rollout deploys one version again). Its canaries are the
    first allocations it placed in each group, as many as it counts: orch
    places a deployment's canaries before the rest."""

    def __init__(self, store):
        self.store = store
        self._deployments: dict[str, list[Deployment]] = {}
        self._canaries: dict[str, dict[str, list[str]]] = {}
        self._jobs: dict[str, Job | None] = {}

    def __call__(self, alloc: Allocation) -> shapes.Deployed | None:
        if alloc.job_id not in self._jobs:
            self._jobs[alloc.job_id] = self.store.get_job(alloc.job_id)
        job = self._jobs[alloc.job_id]
        if job is None or not any(deploy.rolling(job, g) for g in job.task_groups):
            return None  # never deployed (no read of the deployments' table)
        found = self._deployments.get(alloc.job_id)
        if found is None:
            found = self._deployments[alloc.job_id] = self.store.deployments_for_job(alloc.job_id)
        for d in found:  # newest first
            if (
                d.job_version == alloc.job_version
                and alloc.task_group in d.groups
                and alloc.create_time >= d.create_time - PLACED_WITH
            ):
                break
        else:
            return None
        group = job.group(alloc.task_group)
        healthy, healthy_at = None, None
        if group is not None:
            strategy, now = job.update_for(group), time.time()
            if deploy.is_healthy(alloc, group, strategy, now):
                healthy, healthy_at = True, deploy.healthy_at(alloc, group, strategy)
            elif deploy.is_unhealthy(alloc, group, strategy, now):
                healthy = False
        canary = alloc.allocation_id in self.canaries(d).get(alloc.task_group, ())
        return shapes.Deployed(d.deployment_id, healthy, healthy_at, canary)

    def canaries(self, d: Deployment) -> dict[str, list[str]]:
        """Each group's canary allocation ids."""
        known = self._canaries.get(d.deployment_id)
        if known is not None:
            return known
        placed = sorted(
            (
                a
                for a in self.store.allocs_for_job(d.job_id)
                if a.job_version == d.job_version and a.create_time >= d.create_time - PLACED_WITH
            ),
            key=lambda a: (a.create_time, a.allocation_id),
        )
        out = {}
        for name, g in d.groups.items():
            wanted = int(g.get("placed_canaries") or 0)
            out[name] = [a.allocation_id for a in placed if a.task_group == name][:wanted]
        self._canaries[d.deployment_id] = out
        return out
