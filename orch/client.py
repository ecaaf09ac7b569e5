"""A small Python client for the orch server's HTTP API.

Errors come back as the classes of ``orch.errors``, chosen by HTTP status::

    OrchError                       any other failure the server reports
    ├── ValidationError (400)
    ├── Unauthorized (401)
    ├── NotFound (404)
    ├── MethodNotAllowed (405)
    ├── PayloadTooLarge (413)
    ├── StorageError (503)
    ├── ClientError                 the server could not be reached, or its
    │                               answer was not orch's JSON
    └── WaitTimeout                 jobs.wait ran out of time (also a TimeoutError)

Every call carries an explicit timeout. In short::

    from orch.client import Client, NotFound

    with Client("http://127.0.0.1:4646", token=None) as orch:
        job_id = orch.jobs.submit(spec)["job_id"]
        job = orch.jobs.wait(job_id, "complete", timeout=60)
        alloc_id = job["allocations"][0]["allocation_id"]
        print(orch.allocs.logs(alloc_id, "main").decode())
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote

import requests

from orch import errors
from orch.config import DEFAULT_ADDRESS

# Re-exported: callers catch them as orch.client.NotFound and so on.
from orch.errors import (
    Conflict,
    MethodNotAllowed,
    NotFound,
    OrchError,
    PayloadTooLarge,
    StorageError,
    Unauthorized,
    ValidationError,
)
from orch.transport import UNAVAILABLE, Servers

__all__ = [
    "Client",
    "ClientError",
    "WaitTimeout",
    "Conflict",
    "MethodNotAllowed",
    "NotFound",
    "OrchError",
    "PayloadTooLarge",
    "StorageError",
    "Unauthorized",
    "ValidationError",
]

DEFAULT_TIMEOUT = 10.0
# The header of a read's index (orch.server.blocking): a server without
# blocking queries sends none, and its reads give index 0.
INDEX_HEADER = "X-Orch-Index"

_BY_STATUS: dict[int, type[errors.OrchError]] = {
    400: errors.ValidationError,
    401: errors.Unauthorized,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    503: errors.StorageError,
}


class ClientError(errors.OrchError):
    """Raised when the server cannot be reached or answers something that is not orch's JSON."""

    status = 0


class WaitTimeout(errors.OrchError, TimeoutError):
    """Raised by ``jobs.wait`` when the job did not reach the status in time;
    ``.job`` is the job as last seen."""

    status = 0

    def __init__(self, message: str, job: dict | None = None):
        super().__init__(message)
        self.job = job


_TOKEN = re.compile(r"[\x21-\x7e]+")


def _seg(value: str) -> str:
    """One URL path segment: ids never smuggle a '/' or '?' into the route."""
    return quote(str(value), safe="")


def root_cause(exc: BaseException) -> str:
    """``connection refused`` rather than urllib3's three nested wrappers."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop(0)
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror.lower()
        todo += [
            getattr(cur, "reason", None),
            cur.__cause__,
            cur.__context__,
            *(a for a in cur.args if isinstance(a, BaseException)),
        ]
    return str(exc)


def not_orch(resp: requests.Response) -> ClientError:
    """An answer that is not orch's JSON: say which URL answered what."""
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
    exc = ClientError(f"{resp.url}: answered {resp.status_code} {ctype}, not an orch server?")
    exc.status = resp.status_code
    return exc


def error_from_response(resp: requests.Response) -> errors.OrchError:
    """The typed exception for a non-2xx answer."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not (isinstance(body, dict) and "error" in body):
        # orch answers every error with {"error": ...}; anything else (an
        # HTML 404 page, a proxy's 502) came from something else.
        return not_orch(resp)
    extra = {k: v for k, v in body.items() if k != "error"}
    cls = _BY_STATUS.get(resp.status_code, errors.OrchError)
    exc = cls(str(body["error"]), **extra)
    exc.status = resp.status_code
    return exc


class Client:
    """Talks to orch; ``Client(address, token=None)``.

    ``address`` may list several servers (``URL1,URL2``): a request goes to
    the one that answered last, to the next on a connection error or a 503;
    a follower's 307 is followed (requests keeps the method and body)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ):
        try:
            self.servers = Servers(address)
        except ValueError as exc:
            raise ClientError(str(exc)) from None
        self.address = self.servers.urls[0]
        if token and not _TOKEN.fullmatch(token):
            # It goes in a header: requests would raise deep in http.client
            # (or blame the connection for a newline).
            raise ClientError("token: must be printable ASCII, without spaces")
        self.token = token
        self.timeout = timeout
        self._session = requests.Session()
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"
        self.jobs = Jobs(self)
        self.evaluations = Evaluations(self)
        self.nodes = Nodes(self)
        self.allocs = Allocations(self)
        self.services = Services(self)
        self.deployments = Deployments(self)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(
        self, method: str, path: str, *, json=None, params=None, timeout: float | None = None
    ) -> requests.Response:
        """Send one request; raise the mapped exception unless the answer is 2xx."""
        resp: requests.Response | None = None
        failed: list[str] = []
        for base in self.servers.order():
            try:
                resp = self._session.request(
                    method,
                    base + path,
                    json=json,
                    params=params,
                    timeout=self.timeout if timeout is None else timeout,
                )
            except requests.RequestException as exc:
                failed.append(f"{base}: {root_cause(exc)}")
                continue
            if resp.status_code not in UNAVAILABLE:
                self.servers.answered(base)
                break
        if resp is None:
            where = "; ".join(failed)
            raise ClientError(f"cannot reach orch server at {where}")
        if not 200 <= resp.status_code < 300:
            raise error_from_response(resp)
        return resp

    def call(self, method: str, path: str, **kwargs) -> dict:
        """A request whose 2xx answer is a JSON object."""
        return self._object(self.request(method, path, **kwargs))

    def read_indexed(self, path: str, after: int = 0, wait: float = 0.0) -> tuple[dict, int]:
        """A GET's JSON object and its index; with ``after``, a blocking query:
        answered once the index passes ``after`` or ``wait`` seconds run out."""
        params = {"index": str(after), "wait": f"{max(1, int(wait * 1000))}ms"} if after else None
        extra = wait if after else 0.0
        resp = self.request("GET", path, params=params, timeout=self.timeout + extra)
        raw = resp.headers.get(INDEX_HEADER, "")
        return self._object(resp), int(raw) if raw.isdigit() else 0

    @staticmethod
    def _object(resp: requests.Response) -> dict:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise not_orch(resp)
        return body

    def health(self, timeout: float | None = None) -> dict:
        return self.call("GET", "/health", timeout=timeout)


class _Resource:
    def __init__(self, client: Client):
        self._client = client


class Jobs(_Resource):
    def submit(self, spec: dict) -> dict:
        """Register a job: POST creates it or updates the job of that job_id
        (one request, so no job can appear or go between a check and a write)."""
        return self._client.call("POST", "/jobs", json=spec)

    def plan(self, spec: dict) -> dict:
        """A dry run of ``submit``: what would be placed, replaced, stopped or
        left, and what could not be placed; the server changes nothing."""
        return self._client.call("POST", "/jobs/plan", json=spec)

    def exists(self, job_id: str) -> bool:
        try:
            self.get(job_id)
        except errors.NotFound:
            return False
        return True

    def list(self) -> list[dict]:
        return self._client.call("GET", "/jobs").get("jobs", [])

    def get(self, job_id: str) -> dict:
        return self._client.call("GET", f"/jobs/{_seg(job_id)}")

    def watch(self, job_id: str, after: int = 0, wait: float = 0.0) -> tuple[dict, int]:
        """The job and its index, once the index passes ``after`` (0: at once) or
        ``wait`` s run out; index 0 from a server without blocking queries."""
        return self._client.read_indexed(f"/jobs/{_seg(job_id)}", after, wait)

    def stop(self, job_id: str) -> dict:
        return self._client.call("DELETE", f"/jobs/{_seg(job_id)}")

    def restart(self, job_id: str) -> dict:
        return self._client.call("POST", f"/jobs/{_seg(job_id)}/restart")

    def delete(self, job_id: str) -> dict:
        return self._client.call("POST", f"/jobs/{_seg(job_id)}/delete")

    def rollout(self, job_id: str) -> dict:
        """Replace every allocation under the job's update rules (a new version)."""
        return self._client.call("POST", f"/jobs/{_seg(job_id)}/rollout")

    def versions(self, job_id: str) -> dict:
        """The job's kept versions, newest first, each with its diff to the one before."""
        return self._client.call("GET", f"/jobs/{_seg(job_id)}/versions")

    def revert(self, job_id: str, version: int) -> dict:
        """Submit a kept version's spec again, as a new version."""
        return self._client.call("POST", f"/jobs/{_seg(job_id)}/revert", json={"version": version})

    def dispatch(self, job_id: str, meta: dict, payload: str | None = None) -> dict:
        body: dict = {"meta": meta}
        if payload is not None:
            body["payload"] = payload
        return self._client.call("POST", f"/jobs/{_seg(job_id)}/dispatch", json=body)

    def periodic_force(self, job_id: str) -> dict:
        return self._client.call("POST", f"/jobs/{_seg(job_id)}/periodic/force")

    def wait(self, job_id: str, statuses, timeout: float = 30.0, interval: float = 0.1) -> dict:
        """Poll until the job's status is one of ``statuses``; TimeoutError otherwise."""
        wanted = {statuses} if isinstance(statuses, str) else {str(s) for s in statuses}
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.get("status") in wanted:
                return job
            if time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"job {job_id} is {job.get('status')!r}, not one of "
                    f"{sorted(wanted)} after {timeout:g}s",
                    job,
                )
            time.sleep(interval)


class Evaluations(_Resource):
    def get(self, eval_id: str) -> dict:
        return self._client.call("GET", f"/evaluations/{_seg(eval_id)}")


class Nodes(_Resource):
    def list(self) -> list[dict]:
        return self._client.call("GET", "/nodes").get("nodes", [])

    def get(self, node_id: str) -> dict:
        return self._client.call("GET", f"/nodes/{_seg(node_id)}")

    def eligibility(self, node_id: str, eligible: bool) -> dict:
        body = {"eligible": eligible}
        return self._client.call("POST", f"/nodes/{_seg(node_id)}/eligibility", json=body)

    def drain(
        self,
        node_id: str,
        deadline_s: float | None = None,
        ignore_system_jobs: bool = False,
        cancel: bool = False,
    ) -> dict:
        """Start (or update) a drain; ``cancel`` ends it and makes the node eligible."""
        body: dict = {"cancel": True} if cancel else {"ignore_system_jobs": ignore_system_jobs}
        if deadline_s is not None and not cancel:
            body["deadline_s"] = deadline_s
        return self._client.call("POST", f"/nodes/{_seg(node_id)}/drain", json=body)


class Allocations(_Resource):
    def get(self, alloc_id: str) -> dict:
        return self._client.call("GET", f"/allocations/{_seg(alloc_id)}")

    def logs(self, alloc_id: str, task: str, stderr: bool = False, offset: int = 0) -> bytes:
        """The task's log from byte ``offset`` on: one page, at most 1 MiB
        (read on from ``offset + len(page)`` until a page is empty)."""
        params = {"type": "stderr" if stderr else "stdout", "offset": offset}
        path = f"/allocations/{_seg(alloc_id)}/logs/{_seg(task)}"
        return self._client.request("GET", path, params=params).content


class Services(_Resource):
    def instances(self, name: str, healthy: bool = False) -> list[dict]:
        """A service's instances; only the healthy ones with ``healthy``."""
        params = {"healthy": "true"} if healthy else None
        return self._client.call("GET", f"/services/{_seg(name)}", params=params).get(
            "instances", []
        )

    def list(self) -> list[dict]:
        return self._client.call("GET", "/services").get("services", [])


class Deployments(_Resource):
    def get(self, deployment_id: str) -> dict:
        return self._client.call("GET", f"/deployments/{_seg(deployment_id)}")

    def of_job(self, job_id: str) -> dict | None:
        """The job's latest deployment, None if it never had one (NotFound if no job)."""
        found = self.for_job(job_id)
        return found[0] if found else None

    def for_job(self, job_id: str) -> list[dict]:
        """The job's deployments, newest first."""
        return self._client.call("GET", f"/jobs/{_seg(job_id)}/deployments").get("deployments", [])

    def promote(self, deployment_id: str) -> dict:
        return self._client.call("POST", f"/deployments/{_seg(deployment_id)}/promote")

    def fail(self, deployment_id: str) -> dict:
        return self._client.call("POST", f"/deployments/{_seg(deployment_id)}/fail")
