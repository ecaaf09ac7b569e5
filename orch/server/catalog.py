"""Built-in service discovery: `GET /services` and `GET /services/<name>`.

The store keeps an index service name -> live allocation ids, with the
services each was placed with (maintained with its other allocation indexes,
StoreCore._index_alloc), so a lookup costs the instances of one service,
never a walk of every allocation. An instance
is an allocation that holds its resources (desired run, not terminal): one
stopped or lost leaves the catalog with the report or node-down that says so.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from orch.structs import Allocation, AllocStatus, Job, Node


def service_port(service: dict, alloc: Allocation) -> int | None:
    """The host port a service answers on: its port label looked up in the
    allocation's ports (`[{"label", "value", "to"}]`, set by the scheduler
    where the group has a network), else a port number given as is.

    The one place a service's port is resolved (the push to the agent and
    the catalog both ask here)."""
    port = service.get("port")
    for entry in alloc.ports:
        if isinstance(entry, dict) and entry.get("label") == port:
            value = entry.get("value")
            return value if isinstance(value, int) else None
    return port if isinstance(port, int) and not isinstance(port, bool) else None


def group_services(job: Job | None, group_name: str) -> tuple[dict, ...]:
    """The services a job's group declares; () when none (or no such group)."""
    group = job.group(group_name) if job is not None else None
    return group.services if group is not None else ()


def node_address(node: Node | None) -> str:
    """The host clients reach a node's tasks on: its advertised endpoint's host."""
    if node is None or not node.endpoint:
        return ""
    return urlsplit(node.endpoint).hostname or ""


def is_healthy(alloc: Allocation) -> bool:
    """Running with every check passing (unknown health is not healthy)."""
    return alloc.client_status == AllocStatus.RUNNING and alloc.health == "healthy"


def instance(service: dict, alloc: Allocation, node: Node | None) -> dict:
    """One allocation's instance of a service."""
    return {
        "service": service["name"],
        "address": node_address(node),
        "port": service_port(service, alloc),
        "tags": list(service.get("tags") or ()),
        "alloc_id": alloc.allocation_id,
        "node_id": alloc.node_id,
        "job_id": alloc.job_id,
        "healthy": is_healthy(alloc),
    }


def list_services(store) -> dict:
    """`GET /services`: every service with live instances, by name."""
    rows = []
    for name in store.service_names():
        entries = store.service_allocs(name)
        if not entries:
            continue
        tags: list[str] = []
        for _, service in entries:
            tags.extend(t for t in service.get("tags") or () if t not in tags)
        healthy = sum(1 for alloc, _ in entries if is_healthy(alloc))
        rows.append({"name": name, "tags": tags, "instances": len(entries), "healthy": healthy})
    return {"services": rows, "count": len(rows)}


def instances(store, name: str, *, healthy_only: bool = False) -> list[dict]:
    """The instances of one service, healthy ones only if asked."""
    out = [
        instance(service, alloc, store.get_node(alloc.node_id))
        for alloc, service in store.service_allocs(name)
        if is_healthy(alloc) or not healthy_only
    ]
    out.sort(key=lambda inst: (inst["job_id"], inst["alloc_id"]))
    return out
