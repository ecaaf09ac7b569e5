"""Deployments: durable rows, read from the database (few, and read rarely).

The web UI and the deployment watcher read them from here, never from a
worker's memory, so a restarted or new leader carries on where one stopped.
"""

from __future__ import annotations

import json

from orch import codec
from orch.errors import NotFound
from orch.server.state.store import StoreCore, _dump
from orch.structs import Deployment


class Deployments(StoreCore):
    """Deployment rows and the `stable` mark of job versions."""

    _UPSERT = (
        "INSERT OR REPLACE INTO deployments "
        "(deployment_id, job_id, job_version, status, create_time, body) VALUES (?,?,?,?,?,?)"
    )

    def _deployment_rows(self, where: str, args: tuple) -> list[Deployment]:
        with self._guard:
            rows = self.backend.execute(
                f"SELECT body FROM deployments WHERE {where} ORDER BY create_time DESC, rowid DESC",
                args,
            )
        return [codec.deployment_from(json.loads(body)) for (body,) in rows]

    def put_deployment(
        self,
        deployment: Deployment,
        *,
        stable_version: bool = False,
        expect: Deployment | None = None,
    ) -> bool:
        """Write a deployment; with stable_version, mark its job version stable too.

        ``expect``: the deployment as the caller read it. The write happens
        only if it is still stored so, and False says another write (the
        watcher's pass, a user's promote or fail) came in between: written
        from a stale read, it would undo that one."""
        d = deployment
        statements: list[tuple[str, list]] = [
            (
                self._UPSERT,
                [
                    (
                        d.deployment_id,
                        d.job_id,
                        d.job_version,
                        d.status.value,
                        d.create_time,
                        _dump(d),
                    )
                ],
            )
        ]
        if stable_version:
            statements.append(
                (
                    "UPDATE job_versions SET stable = 1 WHERE job_id = ? AND version = ?",
                    [(d.job_id, d.job_version)],
                )
            )
        with self._writing():
            if expect is not None:
                stored = self._deployment_rows("deployment_id = ?", (d.deployment_id,))
                if not stored or stored[0] != expect:
                    return False
            self._write(statements)
        self.deployment_written.set()
        return True

    def get_deployment(self, deployment_id: str) -> Deployment:
        """One deployment; NotFound if unknown."""
        found = self._deployment_rows("deployment_id = ?", (deployment_id,))
        if not found:
            raise NotFound(f"deployment {deployment_id} not found")
        return found[0]

    def deployments_for_job(self, job_id: str) -> list[Deployment]:
        """A job's deployments, newest first."""
        return self._deployment_rows("job_id = ?", (job_id,))

    def latest_deployment(self, job_id: str) -> Deployment | None:
        found = self.deployments_for_job(job_id)
        return found[0] if found else None

    def running_deployments(self) -> list[Deployment]:
        return self._deployment_rows("status = ?", ("running",))

    def last_stable_version(self, job_id: str, below: int) -> int | None:
        """The newest stable version of a job older than ``below``, if one is kept.

        A version no deployment ever ran for (a first registration) counts as
        stable: it went live whole, as Nomad marks a job's first version."""
        with self._guard:
            rows = self.backend.execute(
                "SELECT MAX(version) FROM job_versions WHERE job_id = ? AND version < ? "
                "AND (stable = 1 OR version NOT IN "
                "(SELECT job_version FROM deployments WHERE job_id = ?))",
                (job_id, below, job_id),
            )
        return None if not rows or rows[0][0] is None else int(rows[0][0])
