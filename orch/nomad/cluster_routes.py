"""The /v1 routes beyond jobs: nodes, drain, deployments, logs, status, agent, services."""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import bottle

import orch
from orch.errors import NotFound, ValidationError
from orch.nomad import http, logs, present, shapes
from orch.nomad.http import NomadRouter
from orch.nomad.reads import Reads
from orch.server import catalog
from orch.validation import drain as drain_rules
from orch.validation import fields

if TYPE_CHECKING:
    from orch.server.server import Server

NS = 1_000_000_000


def drain_request(body, enable: bool | None) -> drain_rules.DrainRequest:
    """Nomad's drain body (or the old ``?enable=`` form) as orch's DrainRequest:
    a cancel keeps the node ineligible unless MarkEligible says otherwise.

    Deadline in nanoseconds: -1 is Nomad's force (orch's 0: stop all now);
    0 is "no deadline" (orch's longest, 30 days)."""
    if body is None:
        if enable is None:
            raise ValidationError("DrainSpec or ?enable= must be given")
        return drain_rules.DrainRequest(cancel=not enable)
    body = fields.obj(body, "body")
    spec = body.get("DrainSpec")
    mark = body.get("MarkEligible", False)
    if not isinstance(mark, bool):
        raise ValidationError("MarkEligible: must be a boolean")
    if spec is None:
        return drain_rules.DrainRequest(cancel=True, keep_ineligible=not mark)
    spec = fields.obj(spec, "DrainSpec")
    deadline = spec.get("Deadline", 3600 * NS)
    if not fields.is_int(deadline) or deadline < -1:
        raise ValidationError("DrainSpec.Deadline: must be nanoseconds (-1: force)")
    if deadline == -1:
        seconds = 0.0
    elif deadline == 0 or deadline // NS >= drain_rules.MAX_DEADLINE_S:
        seconds = drain_rules.MAX_DEADLINE_S  # also past what a float holds
    else:
        seconds = deadline / NS
    ignore = spec.get("IgnoreSystemJobs", False)
    if not isinstance(ignore, bool):
        raise ValidationError("DrainSpec.IgnoreSystemJobs: must be a boolean")
    orch_body = {
        "deadline_s": min(seconds, drain_rules.MAX_DEADLINE_S),
        "ignore_system_jobs": ignore,
    }
    return drain_rules.drain(orch_body)


def _node_update(reads: Reads) -> tuple[dict, int]:
    index = reads.list_index()
    return {"NodeModifyIndex": index, "EvalIDs": None, "EvalCreateIndex": 0, "Index": index}, index


def node_routes(route: NomadRouter, server: Server, reads: Reads) -> None:
    store = server.store

    def require_node(node_id: str):
        node = store.get_node(node_id)
        if node is None:
            raise NotFound("node not found")
        return node

    @route("GET", "/v1/nodes")
    def list_nodes():
        stubs = sorted((shapes.node_stub(n) for n in store.list_nodes()), key=lambda s: s["ID"])
        prefix = bottle.request.query.get("prefix") or ""
        return [s for s in stubs if s["ID"].startswith(prefix)], reads.list_index()

    @route("GET", "/v1/node/<node_id>")
    def get_node(node_id):
        out = shapes.node(require_node(node_id))
        # The store's last write, not the node's last beat: a beat that
        # changes nothing writes nothing, and a node that goes down beats no
        # more (its own index would never tell a blocking query so).
        return out, max(out["ModifyIndex"], reads.list_index())

    @route("GET", "/v1/node/<node_id>/allocations")
    def node_allocations(node_id):
        require_node(node_id)
        allocs = [
            a
            for j in store.list_jobs()
            for a in store.allocs_for_job(j.job_id)
            if a.node_id == node_id
        ]
        return reads.alloc_stubs(allocs), reads.list_index()

    @route("POST", "/v1/node/<node_id>/drain")
    def drain(node_id):
        require_node(node_id)
        raw = http.body() if bottle.request.content_length else None
        enable = http.flag("enable") if bottle.request.query.get("enable") else None
        server.drain_node(node_id, drain_request(raw, enable))
        return _node_update(reads)

    @route("POST", "/v1/node/<node_id>/eligibility")
    def eligibility(node_id):
        body = fields.obj(http.body(), "body")
        value = body.get("Eligibility")
        if value not in ("eligible", "ineligible"):
            raise ValidationError('Eligibility must be "eligible" or "ineligible"')
        server.set_eligibility(node_id, value == "eligible")
        return _node_update(reads)


def deployment_routes(route: NomadRouter, server: Server, reads: Reads) -> None:
    store = server.store

    @route("GET", "/v1/deployments")
    def list_deployments():
        found = [
            reads.deployment(d)
            for j in store.list_jobs()
            for d in store.deployments_for_job(j.job_id)
        ]
        found.sort(key=lambda d: d["CreateIndex"])
        return found, reads.list_index()

    @route("GET", "/v1/deployment/allocations/<deployment_id>")
    def deployment_allocs(deployment_id):
        placed = reads.deployment_allocs(store.get_deployment(deployment_id))
        return reads.alloc_stubs(placed), reads.list_index()

    @route("GET", "/v1/deployment/<deployment_id>")
    def get_deployment(deployment_id):
        out = reads.deployment(store.get_deployment(deployment_id))
        return out, out["ModifyIndex"]

    def update_answer(d) -> tuple[dict, int]:
        index = present.index_of(d.modify_time)
        evals = sorted(store.evals_for_job(d.job_id), key=lambda e: e.create_time)
        latest = evals[-1] if evals else None
        return {
            "EvalID": latest.eval_id if latest else "",
            "EvalCreateIndex": present.index_of(latest.create_time) if latest else 0,
            "DeploymentModifyIndex": index,
            "Index": index,
        }, index

    @route("POST", "/v1/deployment/promote/<deployment_id>")
    def promote(deployment_id):
        body = fields.obj(http.body(), "body") if bottle.request.content_length else {}
        if body.get("Groups") and not body.get("All"):
            raise ValidationError("promoting some groups only is not supported: set All")
        return update_answer(server.promote_deployment(deployment_id))

    @route("POST", "/v1/deployment/fail/<deployment_id>")
    def fail(deployment_id):
        return update_answer(server.fail_deployment(deployment_id))


def log_routes(route: NomadRouter, server: Server) -> None:
    @route("GET", "/v1/client/fs/logs/<alloc_id>", raw=True)
    def task_logs(alloc_id):
        q = bottle.request.query
        task, kind, origin = q.get("task"), q.get("type"), q.get("origin") or "start"
        logs.check(task, kind, origin)
        req = logs.LogRequest(
            task=task,
            kind=kind,
            origin=origin,
            offset=http.integer("offset"),
            follow=http.flag("follow"),
            plain=http.flag("plain"),
        )
        gone = bottle.request.environ.get("waitress.client_disconnected")
        reader = logs.LogReader(server, alloc_id, req)
        body = logs.stream(reader, gone if callable(gone) else (lambda: False))
        plain = "text/plain; charset=utf-8"
        bottle.response.content_type = plain if req.plain else "application/json"
        return body


def agent_routes(route: NomadRouter, server: Server) -> None:
    config = server.config

    def address() -> str:
        host = config.bind
        if host in ("0.0.0.0", "::", ""):
            host = bottle.request.urlparts.hostname or socket.gethostname()
        return f"{host}:{config.port}"

    def own_address() -> str:
        """Where this server listens, as the other servers know it (its URL)."""
        return urlsplit(server.url).netloc or address()

    def leader_address() -> str:
        """Where the leader listens; "" while none leads (as Nomad's)."""
        if server.leadership.is_leader():
            return own_address()
        return urlsplit(server.leadership.leader().url).netloc

    @route("GET", "/v1/status/leader")
    def leader():
        return leader_address(), None

    @route("GET", "/v1/status/peers")
    def peers():
        # The servers this one knows of: itself and the leader (the lease
        # names only the one that holds it).
        known = dict.fromkeys([leader_address(), own_address()])
        return [peer for peer in known if peer], None

    @route("GET", "/v1/agent/self")
    def agent_self():
        host, _, port = address().rpartition(":")
        member = {
            "Name": f"{socket.gethostname()}.global",
            "Addr": host,
            "Port": int(port),
            "Status": "alive",
            "Tags": {"role": "nomad", "region": "global", "build": orch.__version__},
        }
        return {
            "config": {
                "Region": "global",
                "Version": {"Version": orch.__version__, "Build": "orch"},
                "Server": {"Enabled": True},
                "Client": {"Enabled": False},
                "ACL": {"Enabled": bool(config.token)},
                "BindAddr": config.bind,
                "Ports": {"HTTP": config.port},
            },
            "member": member,
            "stats": {
                "nomad": {"leader": str(server.leadership.is_leader()).lower(), "server": "true"},
                "runtime": {"uptime_s": str(int(time.time() - server.started))},
            },
        }, None


def service_routes(route: NomadRouter, server: Server, reads: Reads) -> None:
    store = server.store

    @route("GET", "/v1/services")
    def list_services():
        rows = catalog.list_services(store)["services"]
        services = [{"ServiceName": r["name"], "Tags": r["tags"]} for r in rows]
        # One entry per namespace that has services: none at all is [].
        found = [{"Namespace": present.NAMESPACE, "Services": services}] if services else []
        return found, reads.list_index()

    @route("GET", "/v1/service/<name>")
    def get_service(name):
        # As Nomad's nomad provider: every registered instance, healthy or not.
        found = catalog.instances(store, name)
        return [
            shapes.service_registration(
                i, store.get_node(i["node_id"]), store.get_alloc(i["alloc_id"])
            )
            for i in found
        ], reads.list_index()


def cluster_routes(route: NomadRouter, server: Server, reads: Reads) -> None:
    """Every /v1 route that is not about one job."""
    node_routes(route, server, reads)
    deployment_routes(route, server, reads)
    log_routes(route, server)
    agent_routes(route, server)
    service_routes(route, server, reads)
