"""Job versions: the last N specs of each job, kept with the job itself.

A version row is written in the same transaction as the job it records
(``JobWrites._put_job``, ``launch_child``), so a job and its history never
disagree after a crash. Versions of a job are consecutive integers, which
makes "keep the last N" one DELETE by number. Rows are read from SQLite, not
memory: history is read rarely and would multiply the memory of every job.
"""

from __future__ import annotations

import json

from orch import codec
from orch.errors import NotFound
from orch.server.state.store import StoreCore, _dump
from orch.structs import Job


class JobVersions(StoreCore):
    """The store's version rows: written with jobs, trimmed to ``versions_kept``."""

    # OR IGNORE: a restart rewrites the job under the same version number;
    # the version first recorded (its submit time) stays.
    _INSERT_VERSION = (
        "INSERT OR IGNORE INTO job_versions (job_id, version, body, submit_time, stable) "
        "VALUES (?,?,?,?,0)"
    )
    _TRIM_VERSIONS = "DELETE FROM job_versions WHERE job_id = ? AND version <= ?"
    _PURGE_VERSIONS = "DELETE FROM job_versions WHERE job_id = ?"

    def _version_statements(self, job: Job, body: str | None = None) -> list[tuple[str, list]]:
        """The statements recording ``job`` as a version and trimming older ones
        (``body``: the job's JSON, when the caller has encoded it already)."""
        body = _dump(job) if body is None else body
        oldest = job.version - self.versions_kept  # versions up to this one go
        return [
            (self._INSERT_VERSION, [(job.job_id, job.version, body, job.submit_time)]),
            # Versions count from 0: a young job has nothing to trim (no statement).
            (self._TRIM_VERSIONS, [(job.job_id, oldest)] if oldest >= 0 else []),
        ]

    def job_versions(self, job_id: str) -> list[tuple[Job, bool]]:
        """A job's kept versions, newest first, as (job, stable); NotFound if no job.

        A job stored before versions existed has none recorded: its current
        spec stands as its only version."""
        with self._guard:
            current = self.require_job(job_id)
            rows = self.backend.execute(
                "SELECT body, stable FROM job_versions WHERE job_id = ? ORDER BY version DESC",
                (job_id,),
            )
        versions = [(codec.job_from(json.loads(body)), bool(stable)) for body, stable in rows]
        return versions or [(current, False)]

    def job_version(self, job_id: str, version: int) -> Job:
        """One kept version of a job; NotFound if the job or the version is unknown."""
        for job, _stable in self.job_versions(job_id):
            if job.version == version:
                return job
        raise NotFound(f"job {job_id} has no version {version}")
