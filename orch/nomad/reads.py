"""What the /v1 routes read from the Server, already in Nomad's shapes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orch.nomad import present, shapes
from orch.structs import Allocation, Job

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
        return out

    def job_stub(self, job: Job) -> dict:
        indexes = self.job_indexes(job)
        return present.job_stub(job, self.status(job), self.summary(job, indexes), indexes)

    def alloc_stubs(self, allocs: list[Allocation]) -> list[dict]:
        nodes = {n.node_id: n for n in self.store.list_nodes()}
        ordered = sorted(allocs, key=lambda a: (a.create_time, a.allocation_id))
        return [shapes.alloc_stub(a, nodes.get(a.node_id)) for a in ordered]
