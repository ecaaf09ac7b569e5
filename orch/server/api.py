"""HTTP routes of the server: parse, call the Server, return a dict.

Two routes do more: a task's log and an allocation's measured resource use
are relayed from its agent, the agent's answer passed through unchanged.

Every other answer is JSON, but /metrics (Prometheus text). Exceptions
become ``{"error": ...}`` with the status on their class (orch.errors);
bottle's HTML error pages never reach a client.

Over 400 lines: every orch route in one table, each a few lines, so that a
path is found in one place (the /v1 face and the UI mount their own).
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import quote

import bottle

from orch import httpjson, transport
from orch.errors import NotFound, NotLeader, ValidationError
from orch.nomad import api as nomad_api
from orch.openapi import SERVER_SPEC
from orch.server import allocstats, catalog, ui, views
from orch.server import blocking as orch_blocking
from orch.server.metrics import render_metrics
from orch.server.ui.streams import register_stream_routes
from orch.server.versions import versions_view
from orch.structs import Allocation, Evaluation, Job
from orch.transport import HttpClient
from orch.validation import drain as drain_rules

if TYPE_CHECKING:
    from orch.server.server import Server

# (connect, read) seconds for relaying a task's log from its agent.
LOG_RELAY_TIMEOUT = (2.0, 5.0)
# POST /jobs's answer's message (the seed's; orch.server.inline sends it too).
SUBMITTED = "作业评估已加入队列"


def revert_version(body) -> int:
    """The version a revert asks for: {"version": N}, N a non-negative integer."""
    if not isinstance(body, dict):
        raise ValidationError("body: must be a JSON object")
    unknown = sorted(set(body) - {"version"})
    if unknown:
        raise ValidationError(f"{unknown[0]}: unknown field")
    version = body.get("version")
    # bool is an int to Python; true is no version number.
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValidationError("version: must be a non-negative integer")
    return version


def no_fields(body) -> None:
    """The body of a route that takes no fields: none, or an empty object."""
    if not isinstance(body, dict):
        raise ValidationError("body: must be a JSON object")
    if body:
        raise ValidationError(f"{sorted(body)[0]}: unknown field (this route takes none)")


def _new_version(job: Job, ev: Evaluation, message: str) -> dict:
    """The answer to a change that wrote a new job version (revert, rollout)."""
    return {
        "job_id": job.job_id,
        "evaluation_id": ev.eval_id,
        "version": job.version,
        "message": message,
    }


def job_detail(server: Server, job: Job) -> dict:
    """GET /jobs/<id>'s body (the route's and its inline twin's)."""
    allocs = server.store.allocs_for_job(job.job_id)
    out = views.job_view(
        job,
        server.job_status(job, allocs),
        allocs,
        summary=server.job_summary(job, allocs),
        children=[],
        version_of=views.kept_versions(partial(server.store.job_version, job.job_id)),
    )
    if job.is_parent:
        out.update(server.children_view(job))
    return out


def alloc_detail(server: Server, alloc: Allocation) -> dict:
    """GET /allocations/<id>'s body (the route's and its inline twin's)."""
    return views.alloc_view(
        alloc,
        server.store.get_job(alloc.job_id),
        version_of=views.kept_versions(partial(server.store.job_version, alloc.job_id)),
    )


def make_app(server: Server) -> bottle.Bottle:
    app = bottle.Bottle()
    store = server.store
    route = httpjson.Router(app, token=server.config.token, max_body=server.config.max_body_bytes)

    # ---- seed: nodes -------------------------------------------------------

    def to_leader():
        """Agents talk to the leader (its heartbeat monitor): a follower
        answers 307 with the leader's URL, or 503 while none is elected."""
        if server.leadership.is_leader():
            return None
        leader = server.leadership.leader()
        if not leader.url or leader.holder == server.leadership.server_id:
            raise NotLeader("no leader elected yet: try again shortly")
        location = leader.url.rstrip("/") + bottle.request.fullpath
        bottle.response.status = 307
        bottle.response.set_header("Location", location)
        return {"error": "this server is not the leader", "leader": leader.url}

    @route("POST", "/register")
    def register():
        moved = to_leader()
        if moved is not None:
            return moved
        server.register(httpjson.read_json(server.config.node_max_body_bytes))
        return {"message": "Node registered successfully"}

    @route("POST", "/heartbeat")
    def heartbeat():
        moved = to_leader()
        if moved is not None:
            return moved
        return server.heartbeat(httpjson.read_json(server.config.node_max_body_bytes))

    @route("GET", "/nodes")
    def list_nodes():
        nodes = [
            views.node_view(n, store.live_allocs_for_node(n.node_id), store.get_job)
            for n in store.list_nodes()
        ]
        return {"nodes": nodes, "count": len(nodes)}

    @route("GET", "/nodes/<node_id>")
    def get_node(node_id):
        node = store.get_node(node_id)
        if node is None:
            raise NotFound("Node not found")
        return views.node_view(node, store.live_allocs_for_node(node_id), store.get_job)

    # ---- beyond the seed: node eligibility and drain ---------------------------

    @route("POST", "/nodes/<node_id>/eligibility")
    def node_eligibility(node_id):
        node = server.set_eligibility(node_id, drain_rules.eligibility(httpjson.read_json()))
        view = views.node_view(node, store.live_allocs_for_node(node_id), store.get_job)
        return {
            "node_id": node_id,
            "eligibility": view["eligibility"],
            "message": f"node {node_id} is {view['eligibility']}",
        }

    @route("POST", "/nodes/<node_id>/drain")
    def node_drain(node_id):
        request = drain_rules.drain(httpjson.read_json())
        node = server.drain_node(node_id, request)
        view = views.node_view(node, store.live_allocs_for_node(node_id), store.get_job)
        message = "drain canceled" if request.cancel else "drain started"
        return {
            "node_id": node_id,
            "eligibility": view["eligibility"],
            "drain": view["drain"],
            "message": f"node {node_id}: {message}",
        }

    # ---- seed: jobs ----------------------------------------------------------

    @route("POST", "/jobs")
    def submit_job():
        job, ev = server.submit_job(httpjson.read_json())
        return {"job_id": job.job_id, "evaluation_id": ev.eval_id, "message": SUBMITTED}

    @route("PUT", "/jobs/<job_id>")
    def update_job(job_id):
        job, ev = server.submit_job(httpjson.read_json(), job_id)
        return {
            "job_id": job.job_id,
            "evaluation_id": ev.eval_id,
            "message": "作业更新评估已加入队列",
        }

    @route("DELETE", "/jobs/<job_id>")
    def stop_job(job_id):
        server.stop_job(job_id)
        return {"message": f"作业 {job_id} 已停止"}

    def job_view(job, children):
        allocs = store.allocs_for_job(job.job_id)
        return views.job_view(
            job,
            server.job_status(job, allocs),
            allocs,
            summary=server.job_summary(job, allocs),
            children=children.get(job.job_id, []),
        )

    def children_of(jobs) -> dict[str, list[dict]]:
        """Each parent's children as GET /jobs/<id> shows them (id, status)."""
        children: dict[str, list[Job]] = {}
        for job in jobs:
            if job.parent_id:
                children.setdefault(job.parent_id, []).append(job)
        return {
            parent: [
                {"job_id": c.job_id, "status": server.job_status(c).value}
                for c in sorted(kids, key=lambda c: c.submit_time)
            ]
            for parent, kids in children.items()
        }

    def blocking(jobs, read):
        """``read()``, blocking while ``?index=`` asks (orch.server.blocking)."""
        return orch_blocking.answer(store.changes, store.settle, jobs, read)

    @route("GET", "/jobs", blocking=True)
    def list_jobs():
        def read():
            listed = store.list_jobs()
            children = children_of(listed)
            jobs = [job_view(job, children) for job in listed]
            return {"jobs": jobs, "count": len(jobs)}

        return blocking(None, read)

    @route("GET", "/jobs/<job_id>", blocking=True)
    def get_job(job_id):
        def read():
            return job_detail(server, store.require_job(job_id))

        store.require_job(job_id)  # 404 at once, blocking or not
        return blocking([job_id], read)

    @route("POST", "/jobs/<job_id>/delete")
    def delete_job(job_id):
        server.delete_job(job_id)
        return {"message": f"作业 {job_id} 及其相关资源已删除"}

    @route("POST", "/jobs/<job_id>/restart")
    def restart_job(job_id):
        ev = server.restart_job(job_id)
        return {"job_id": job_id, "evaluation_id": ev.eval_id, "message": "作业重启评估已加入队列"}

    # ---- beyond the seed -----------------------------------------------------

    @route("POST", "/jobs/plan")
    def plan_job():
        return server.plan_job(httpjson.read_json())

    @route("GET", "/jobs/<job_id>/versions")
    def job_versions(job_id):
        return versions_view(store.job_versions(job_id))

    @route("POST", "/jobs/<job_id>/revert")
    def revert_job(job_id):
        version = revert_version(httpjson.read_json())
        job, ev = server.revert_job(job_id, version)
        return _new_version(job, ev, f"job reverted to version {version}")

    # ---- deployments (rolling updates) ---------------------------------------

    @route("GET", "/jobs/<job_id>/deployments")
    def job_deployments(job_id):
        store.require_job(job_id)
        found = store.deployments_for_job(job_id)
        return {"deployments": [d.to_dict() for d in found], "count": len(found)}

    @route("GET", "/jobs/<job_id>/deployment")
    def job_deployment(job_id):
        store.require_job(job_id)
        latest = store.latest_deployment(job_id)
        if latest is None:
            raise NotFound(f"job {job_id} has no deployment")
        return latest.to_dict()

    @route("GET", "/deployments/<deployment_id>")
    def get_deployment(deployment_id):
        return store.get_deployment(deployment_id).to_dict()

    @route("POST", "/deployments/<deployment_id>/promote")
    def promote_deployment(deployment_id):
        d = server.promote_deployment(deployment_id)
        return {**d.to_dict(), "message": "deployment promoted"}

    @route("POST", "/deployments/<deployment_id>/fail")
    def fail_deployment(deployment_id):
        d = server.fail_deployment(deployment_id)
        return {**d.to_dict(), "message": d.status_description}

    @route("POST", "/jobs/<job_id>/rollout")
    def rollout_job(job_id):
        no_fields(httpjson.read_json() if bottle.request.content_length != 0 else {})
        job, ev = server.rollout_job(job_id)
        return _new_version(job, ev, f"rollout {job.rollout} started: version {job.version}")

    @route("POST", "/jobs/<job_id>/dispatch")
    def dispatch_job(job_id):
        # An empty body is a dispatch without meta or payload.
        body = httpjson.read_json() if bottle.request.content_length != 0 else None
        child, ev = server.dispatch_job(job_id, body)
        if ev is None:  # its idempotency token's child: nothing new launched
            message = f"job {job_id} was dispatched as {child.job_id} with this token"
        else:
            message = f"job {job_id} dispatched as {child.job_id}"
        return {
            "job_id": child.job_id,
            "dispatched_job_id": child.job_id,
            "evaluation_id": ev.eval_id if ev else None,
            "message": message,
        }

    @route("POST", "/jobs/<job_id>/periodic/force")
    def force_periodic(job_id):
        child = server.force_periodic(job_id)
        evals = store.evals_for_job(child.job_id)
        return {
            "job_id": child.job_id,
            "evaluation_id": evals[0].eval_id if evals else None,
            "message": f"periodic job {job_id} launched {child.job_id}",
        }

    @route("GET", "/jobs/<job_id>/evaluations")
    def job_evaluations(job_id):
        store.require_job(job_id)
        evals = sorted(store.evals_for_job(job_id), key=lambda e: e.create_time)
        return {"evaluations": [e.to_dict() for e in evals], "count": len(evals)}

    @route("GET", "/evaluations/<eval_id>")
    def get_evaluation(eval_id):
        ev = store.get_eval(eval_id)
        if ev is None:
            raise NotFound("Evaluation not found")
        return ev.to_dict()

    def require_alloc(alloc_id):
        alloc = store.get_alloc(alloc_id)
        if alloc is None:
            raise NotFound("Allocation not found")
        return alloc

    @route("GET", "/allocations/<alloc_id>", blocking=True)
    def get_allocation(alloc_id):
        def read():
            return alloc_detail(server, require_alloc(alloc_id))

        return blocking([require_alloc(alloc_id).job_id], read)

    @route("GET", "/allocations/<alloc_id>/logs/<task>", raw=True)
    def allocation_logs(alloc_id, task):
        alloc = require_alloc(alloc_id)
        endpoint = server.endpoint_of(alloc.node_id)
        if endpoint is None:
            raise NotFound("the allocation's node is unknown")
        # One client per relay: waitress threads share nothing, and a log
        # read is rare enough that a kept connection would only sit idle.
        client = HttpClient(timeout=LOG_RELAY_TIMEOUT, token=server.config.token, keep_alive=False)
        try:
            resp = client.get(
                f"{endpoint}/allocations/{quote(alloc_id)}/logs/{quote(task)}",
                params=dict(bottle.request.query),
            )
        except (*transport.ERRORS, ValueError) as exc:
            raise httpjson.BadGateway(f"node unreachable: {exc}") from exc
        finally:
            client.close()
        return httpjson.passthrough(resp)

    @route("GET", "/allocations/<alloc_id>/stats", raw=True)
    def allocation_stats(alloc_id):
        alloc = require_alloc(alloc_id)
        return httpjson.passthrough(allocstats.fetch(server, alloc))

    # ---- service discovery (orch.server.catalog) -----------------------------

    @route("GET", "/services")
    def list_services():
        return catalog.list_services(store)

    @route("GET", "/services/<name>")
    def get_service(name):
        healthy = _flag(bottle.request.query.get("healthy"), "healthy")
        found = catalog.instances(store, name, healthy_only=healthy)
        return {"service": name, "instances": found, "count": len(found)}

    @route("GET", "/health", public=True)
    def health():
        return {
            "status": "ok",
            "uptime_s": round(time.time() - server.started, 3),
            **store.counts(),
            **leader_view(),
        }

    def leader_view() -> dict:
        leader = server.leadership.leader()
        return {
            "leader": server.leadership.is_leader(),
            "leader_url": leader.url or None,
            "term": leader.term,
            "server_id": server.leadership.server_id,
            "url": server.url or None,
        }

    @route("GET", "/status/leader")
    def status_leader():
        """Who leads: its URL (null while none is elected), term and server id."""
        leader = server.leadership.leader()
        return {
            "leader": leader.url or None,
            "leader_id": leader.holder or None,
            "term": leader.term,
            "this_server": {
                "server_id": server.leadership.server_id,
                "url": server.url or None,
                "leader": server.leadership.is_leader(),
            },
        }

    @route("GET", "/metrics", raw=True)
    def metrics():
        bottle.response.content_type = "text/plain; version=0.0.4"
        return render_metrics(server)

    @route("GET", "/openapi.json")
    def openapi():
        return SERVER_SPEC

    ui.mount(app, route, server)
    # The UI's event and log streams (the pages: orch.server.ui). Added under
    # /ui as the pages are: a --ui-prefix is handled for every UI route alike.
    register_stream_routes(route, server, "/ui")
    # The Nomad-compatible face (orch.nomad.api): Nomad's routes and shapes
    # under /v1, over the same Server methods as the routes above.
    nomad_api.mount(app, server)
    return app


def _flag(raw: str | None, name: str) -> bool:
    """A boolean query parameter: true/false/1/0 (absent: false)."""
    if raw is None or raw == "":
        return False
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise ValidationError(f"{name}: must be true or false")
