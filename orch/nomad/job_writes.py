"""The /v1 job writes: register, parse, deregister, plan, revert, dispatch, force.

Each one translates Nomad's body (orch.nomad.translate) and calls the Server
method behind orch's own route, so validation and storage are orch's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import bottle

from orch.errors import ValidationError
from orch.nomad import http, present, shapes
from orch.nomad.http import NomadRouter
from orch.nomad.reads import Reads
from orch.nomad.translate import job_from_nomad
from orch.structs import Evaluation, Job
from orch.validation import fields

if TYPE_CHECKING:
    from orch.server.server import Server

log = logging.getLogger(__name__)

# Canonicalize fills in what Nomad's parser leaves for the server to default.
CANONICAL = {"Namespace": "default", "Region": "global", "Type": "service", "Priority": 50}


def job_body(body, path_id: str | None = None) -> dict:
    """The ``Job`` of a register or plan body, as an orch job body."""
    body = fields.obj(body, "body")
    job = body.get("Job")
    if not isinstance(job, dict):
        raise ValidationError("Job must be specified")
    if path_id is not None and job.get("ID") != path_id:
        raise ValidationError("Job ID does not match URL")
    return job_from_nomad(job)


def _enforce_index(body: dict, reads: Reads, job_id: str) -> None:
    """EnforceIndex: register only if the job's JobModifyIndex is as given (0: new)."""
    if not body.get("EnforceIndex"):
        return
    given = body.get("JobModifyIndex", 0)
    job = reads.store.get_job(job_id)
    current = reads.job_indexes(job)["JobModifyIndex"] if job is not None else 0
    if given != current:
        raise ValidationError(
            f"Enforcing job modify index {given}: job exists with conflicting "
            f"job modify index: {current}"
        )


def _eval_answer(job: Job, ev: Evaluation, reads: Reads) -> dict:
    return {
        "EvalID": ev.eval_id,
        "EvalCreateIndex": present.index_of(ev.create_time),
        "JobModifyIndex": reads.job_indexes(job)["JobModifyIndex"],
        "Warnings": "",
        "Index": present.index_of(ev.create_time),
    }


def canonical(job: dict) -> dict:
    """Nomad's defaults where the job file left them out (jobs/parse Canonicalize)."""
    out = {**CANONICAL, **job}
    out.setdefault("Name", out.get("ID"))
    for group in out.get("TaskGroups") or ():
        if isinstance(group, dict):
            group.setdefault("Count", 1)
    return out


def job_write_routes(route: NomadRouter, server: Server, reads: Reads) -> None:
    store = server.store

    def register(path_id: str | None):
        body = http.body()
        orch_body = job_body(body, path_id)
        _enforce_index(body, reads, str(orch_body.get("job_id")))
        job, ev = server.submit_job(orch_body)
        answer = _eval_answer(job, ev, reads)
        return answer, answer["Index"]

    for method in ("POST", "PUT"):
        route(method, "/v1/jobs")(lambda: register(None))
        route(method, "/v1/job/<job_id>")(lambda job_id: register(job_id))

    @route("POST", "/v1/jobs/parse")
    def parse():
        body = fields.obj(http.body(), "body")
        text = body.get("JobHCL")
        if not isinstance(text, str) or not text.strip():
            raise ValidationError("Job HCL must be specified")
        # Imported here: python-hcl2 and its grammar cost a server start
        # ~0.3 s, and most servers never parse HCL.
        from orch.nomad.hcl import parse_hcl

        job = parse_hcl(text)
        return (canonical(job) if body.get("Canonicalize") else job), None

    @route("DELETE", "/v1/job/<job_id>")
    def deregister(job_id):
        job = store.require_job(job_id)
        purge = http.flag("purge")
        # Every deregister writes its evaluation, a stopped job's too (as Nomad).
        ev = server.stop_job(job_id)
        # Another request may purge the job meanwhile: this stop still happened.
        answer = _eval_answer(store.get_job(job_id) or job, ev, reads)
        if purge:
            server.delete_job(job_id)
        return answer, answer["Index"]

    @route("POST", "/v1/job/<job_id>/plan")
    def plan(job_id):
        body = http.body()
        result = server.plan_job(job_body(body, job_id))
        return plan_answer(result, bool(fields.obj(body, "body").get("Diff")), reads), None

    @route("POST", "/v1/job/<job_id>/revert")
    def revert(job_id):
        version, prior = parse_version(fields.obj(http.body(), "body"), job_id)
        current = store.require_job(job_id)
        if prior is not None and prior != current.version:
            raise ValidationError(
                f"enforcing version {prior} failed: current version is {current.version}"
            )
        job, ev = server.revert_job(job_id, version)
        answer = _eval_answer(job, ev, reads)
        return answer, answer["Index"]

    @route("POST", "/v1/job/<job_id>/dispatch")
    def dispatch(job_id):
        raw = http.body() if bottle.request.content_length else {}
        body = dispatch_body(raw)
        token = bottle.request.query.get("idempotency_token")
        if token and not body.get("idempotency_token"):
            body["idempotency_token"] = token
        child, ev = server.dispatch_job(job_id, body)
        # A retry with a child's token: that child, and no evaluation (Nomad's answer).
        index = present.index_of(ev.create_time if ev else child.submit_time)
        return {
            "DispatchedJobID": child.job_id,
            "EvalID": ev.eval_id if ev else "",
            "EvalCreateIndex": index,
            "JobCreateIndex": present.index_of(child.submit_time),
            "Index": index,
        }, index

    @route("POST", "/v1/job/<job_id>/periodic/force")
    def force(job_id):
        child = server.force_periodic(job_id)
        evals = sorted(store.evals_for_job(child.job_id), key=lambda e: e.create_time)
        index = present.index_of(evals[0].create_time if evals else child.submit_time)
        return {
            "EvalID": evals[0].eval_id if evals else "",
            "EvalCreateIndex": index,
            "Index": index,
        }, index


def _version_number(value, name: str) -> int:
    # bool is an int to Python; true is no version number.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValidationError(f"{name}: must be a non-negative integer")
    return value


def parse_version(body: dict, job_id: str) -> tuple[int, int | None]:
    """A revert body: (JobVersion, EnforcePriorVersion or None)."""
    if body.get("JobID", job_id) != job_id:
        raise ValidationError("JobID does not match the path")
    version = _version_number(body.get("JobVersion"), "JobVersion")
    prior = body.get("EnforcePriorVersion")
    if prior is None:
        return version, None
    return version, _version_number(prior, "EnforcePriorVersion")


def dispatch_body(raw) -> dict:
    """A Nomad dispatch body ({Meta, Payload (base64)}) as orch's ({meta, payload})."""
    raw = fields.obj(raw, "body")
    if raw.get("IdPrefixTemplate"):
        raise ValidationError(
            "IdPrefixTemplate: not supported (children are named <job>-dispatch-…)"
        )
    out: dict = {}
    if raw.get("Meta") is not None:
        out["meta"] = raw["Meta"]
    if raw.get("Payload") is not None:
        out["payload"] = raw["Payload"]
    if raw.get("IdempotencyToken"):
        out["idempotency_token"] = raw["IdempotencyToken"]
    return out


def plan_answer(result: dict, want_diff: bool, reads: Reads) -> dict:
    """orch's dry run as Nomad's JobPlanResponse."""
    updates = {
        name: {
            "Place": d["place"],
            "Stop": d["stop"],
            "DestructiveUpdate": d["replace"],
            "Ignore": d["keep"],
            "InPlaceUpdate": 0,
            "Migrate": 0,
            "Canary": 0,
            "Preemptions": 0,
        }
        for name, d in result["diff"].items()
    }
    failed = {
        name: {
            "NodesEvaluated": len(f.get("nodes") or ()),
            **shapes.alloc_metric(f.get("failures") or {}),
            "CoalescedFailures": max(0, int(f.get("wanted") or 0) - 1),
        }
        for name, f in result["failures"].items()
    }
    job = reads.store.get_job(result["job_id"])
    out = {
        "Annotations": {"DesiredTGUpdates": updates, "PreemptedAllocs": None},
        "FailedTGAllocs": failed or None,
        "JobModifyIndex": reads.job_indexes(job)["JobModifyIndex"] if job else 0,
        "CreatedEvals": None,
        "NextPeriodicLaunch": "0001-01-01T00:00:00Z",
        "Warnings": "",
    }
    if want_diff:
        kind = "Added" if not result["exists"] else ("Edited" if result["changed"] else "None")
        out["Diff"] = {"Type": kind, "ID": result["job_id"], "Fields": None, "Objects": None}
    return out
