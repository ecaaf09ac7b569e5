"""The Nomad-compatible /v1 API: Nomad's routes and shapes over orch's Server.

A second face of the same server, mounted on its one bottle app: each route
calls the Server method that orch's own route calls (the same validation,
the same store), and answers in Nomad's shapes (orch.nomad.present, shapes)
with Nomad's error form (orch.nomad.http). Job bodies go through
orch.nomad.translate into orch's job body, then orch's submit path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import bottle

from orch.errors import NotFound
from orch.nomad import http, present, shapes
from orch.nomad.cluster_routes import cluster_routes
from orch.nomad.http import NomadRouter
from orch.nomad.job_writes import job_write_routes
from orch.nomad.reads import Reads

if TYPE_CHECKING:
    from orch.server.server import Server

PREFIX = "/v1"


def mount(app: bottle.Bottle, server: Server) -> None:
    """Add the /v1 routes to the server's app."""
    route = NomadRouter(app, token=server.config.token, changes=server.store.changes)
    reads = Reads(server)
    job_routes(route, reads)
    job_write_routes(route, server, reads)
    cluster_routes(route, server, reads)
    route.catch_all(PREFIX)


def _prefixed(items: list, key: str) -> list:
    """Nomad's ``?prefix=`` filter on IDs."""
    prefix = bottle.request.query.get("prefix") or ""
    return [i for i in items if i[key].startswith(prefix)] if prefix else items


def job_routes(route: NomadRouter, reads: Reads) -> None:
    """GET /v1/jobs and the reads under /v1/job/<id>."""
    store = reads.store

    @route("GET", "/v1/jobs")
    def list_jobs():
        stubs = [reads.job_stub(j) for j in store.list_jobs()]
        stubs.sort(key=lambda s: s["ID"])
        return _prefixed(stubs, "ID"), reads.list_index()

    @route("GET", "/v1/job/<job_id>")
    def get_job(job_id):
        out = reads.job(store.require_job(job_id))
        return out, out["ModifyIndex"]

    @route("GET", "/v1/job/<job_id>/allocations")
    def job_allocations(job_id):
        store.require_job(job_id)
        # ?all= asks for the allocations of an earlier job of the same ID too:
        # orch forgets those with the job (purge), so there are none to add.
        http.flag("all")
        return reads.alloc_stubs(store.allocs_for_job(job_id)), reads.list_index()

    @route("GET", "/v1/job/<job_id>/evaluations")
    def job_evaluations(job_id):
        job = store.require_job(job_id)
        evals = sorted(store.evals_for_job(job_id), key=lambda e: e.create_time)
        return [shapes.evaluation(e, job) for e in evals], reads.list_index()

    @route("GET", "/v1/job/<job_id>/versions")
    def job_versions(job_id):
        versions = store.job_versions(job_id)
        current = store.require_job(job_id)
        status = reads.status(current)
        out = []
        for job, stable in versions:
            entry = present.job(job, status, reads.job_indexes(job))
            entry["Stable"] = stable
            out.append(entry)
        return {"Versions": out, "Diffs": None}, reads.job_indexes(current)["JobModifyIndex"]

    @route("GET", "/v1/job/<job_id>/summary")
    def job_summary(job_id):
        job = store.require_job(job_id)
        out = reads.summary(job)
        return out, out["ModifyIndex"]

    @route("GET", "/v1/job/<job_id>/deployments")
    def job_deployments(job_id):
        store.require_job(job_id)
        found = [reads.deployment(d) for d in store.deployments_for_job(job_id)]
        return found, reads.list_index()

    @route("GET", "/v1/job/<job_id>/deployment")
    def job_deployment(job_id):
        store.require_job(job_id)
        latest = store.latest_deployment(job_id)
        # Nomad answers null, not 404, for a job without a deployment.
        if latest is None:
            return None, reads.list_index()
        out = reads.deployment(latest)
        return out, out["ModifyIndex"]

    @route("GET", "/v1/allocations")
    def list_allocs():
        allocs = [a for j in store.list_jobs() for a in store.allocs_for_job(j.job_id)]
        stubs = reads.alloc_stubs(allocs)
        return _prefixed(stubs, "ID"), reads.list_index()

    @route("GET", "/v1/allocation/<alloc_id>")
    def get_alloc(alloc_id):
        alloc = store.get_alloc(alloc_id)
        if alloc is None:
            raise NotFound("alloc not found")
        job = store.get_job(alloc.job_id)
        node = store.get_node(alloc.node_id)
        group = job.group(alloc.task_group) if job else None
        asked = {t.name: t.resources for t in group.tasks} if group else {}
        out = shapes.alloc(
            alloc, node, reads.job(job) if job else None, reads.deployed(alloc), asked
        )
        return out, out["ModifyIndex"]

    @route("GET", "/v1/evaluations")
    def list_evals():
        evals = []
        for job in store.list_jobs():
            evals += [shapes.evaluation(e, job) for e in store.evals_for_job(job.job_id)]
        evals.sort(key=lambda e: e["CreateIndex"])
        return _prefixed(evals, "ID"), reads.list_index()

    @route("GET", "/v1/evaluation/<eval_id>")
    def get_eval(eval_id):
        ev = store.get_eval(eval_id)
        if ev is None:
            raise NotFound("eval not found")
        out = shapes.evaluation(ev, store.get_job(ev.job_id))
        return out, out["ModifyIndex"]

    @route("GET", "/v1/evaluation/<eval_id>/allocations")
    def eval_allocs(eval_id):
        ev = store.get_eval(eval_id)
        if ev is None:
            raise NotFound("eval not found")
        placed = [a for a in store.allocs_for_job(ev.job_id) if a.eval_id == eval_id]
        return reads.alloc_stubs(placed), reads.list_index()
