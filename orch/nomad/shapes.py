"""orch's allocations, evaluations, nodes, deployments and services in Nomad's
JSON shapes (api/allocations.go, evaluations.go, nodes.go, deployments.go).

Indexes are store times in microseconds (orch.nomad.present.index_of).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from urllib.parse import urlsplit

from orch.nomad.present import NAMESPACE, PRIORITY, index_of, ns
from orch.structs import (
    Allocation,
    AllocStatus,
    Deployment,
    Evaluation,
    Job,
    Node,
    Resources,
    TaskState,
    TaskStatus,
)

# orch's "stopped" is an allocation the server stopped: Nomad calls it complete.
CLIENT_STATUS = {AllocStatus.STOPPED: "complete"}
TASK_STATE = {
    TaskStatus.PENDING: "pending",
    TaskStatus.RUNNING: "running",
    TaskStatus.COMPLETE: "dead",
    TaskStatus.FAILED: "dead",
}


def _rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat()


def task_state(state: TaskState) -> dict:
    events = [
        {
            "Type": str(e.get("type", "")),
            "Time": ns(e.get("time")),
            "Message": str(e.get("message", "")),
            "DisplayMessage": str(e.get("message", "")),
            "Details": {},
        }
        for e in state.events
        if isinstance(e, dict)
    ]
    return {
        "State": TASK_STATE[state.status],
        "Failed": state.status == TaskStatus.FAILED,
        "Restarts": state.restarts,
        "StartedAt": _rfc3339(state.start_time),
        "FinishedAt": _rfc3339(state.end_time),
        "Events": events,
    }


def alloc_stub(a: Allocation, node: Node | None, deployed: Deployed | None = None) -> dict:
    """AllocationListStub, an entry of GET /v1/allocations and /v1/job/<id>/allocations;
    ``deployed``: the deployment that placed it, if any (``Reads.deployed``)."""
    out = {
        "ID": a.allocation_id,
        "EvalID": a.eval_id,
        "Name": a.name,
        "Namespace": NAMESPACE,
        "NodeID": a.node_id,
        "NodeName": node_name(node) if node else "",
        "JobID": a.job_id,
        "JobVersion": a.job_version,
        "TaskGroup": a.task_group,
        "DesiredStatus": a.desired_status.value,
        "DesiredDescription": a.description if a.desired_status.value == "stop" else "",
        "DesiredTransition": {"Migrate": True} if a.migrate else {},
        "ClientStatus": CLIENT_STATUS.get(a.client_status, a.client_status.value),
        "ClientDescription": a.description,
        "TaskStates": {name: task_state(s) for name, s in a.tasks.items()} or None,
        "DeploymentStatus": _deployment_status(a),
        "PreviousAllocation": a.previous_allocation or "",
        "RescheduleTracker": {"Events": [{}] * a.reschedule_count} if a.reschedule_count else None,
        "CreateIndex": index_of(a.create_time),
        "ModifyIndex": index_of(a.modify_time),
        "CreateTime": ns(a.create_time),
        "ModifyTime": ns(a.modify_time),
    }
    if deployed is not None:
        out["DeploymentID"] = deployed.deployment_id
        out["DeploymentStatus"] = {
            "Healthy": deployed.healthy,
            "Timestamp": _rfc3339(deployed.healthy_at),
            "Canary": deployed.canary,
            "ModifyIndex": index_of(a.modify_time),
        }
    return out


@dataclass(frozen=True)
class Deployed:
    """An allocation's part in the deployment that placed it, as Nomad's
    DeploymentStatus says it: Healthy is None until decided."""

    deployment_id: str
    healthy: bool | None
    healthy_at: float | None
    canary: bool


def _deployment_status(a: Allocation) -> dict | None:
    """Outside a deployment: what its service checks say, if anything."""
    if a.health is None:
        return None
    return {"Healthy": a.health == "healthy", "Timestamp": _rfc3339(a.healthy_since)}


def alloc(
    a: Allocation,
    node: Node | None,
    job: dict | None,
    deployed: Deployed | None = None,
    asked: dict[str, Resources] | None = None,
) -> dict:
    """The full Allocation of GET /v1/allocation/<id> (with its job, as Nomad);
    ``asked``: each task's resources."""
    out = alloc_stub(a, node, deployed)
    asked = asked or {}
    ports = [
        {"Label": p.get("label"), "Value": p.get("value"), "To": p.get("to") or 0} for p in a.ports
    ]
    out.update(
        {
            "Job": job,
            "AllocModifyIndex": index_of(a.modify_time),
            "AllocatedResources": {
                "Shared": {"Ports": ports},
                "Tasks": {
                    name: {
                        "Cpu": {"CpuShares": asked.get(name, Resources()).cpu},
                        "Memory": {"MemoryMB": asked.get(name, Resources()).memory},
                    }
                    for name in a.tasks
                },
                "Total": {"Cpu": a.resources.cpu, "MemoryMB": a.resources.memory},
            },
        }
    )
    return out


def alloc_metric(failures: dict[str, int]) -> dict:
    """orch's failure reasons (reason -> node count) as Nomad's AllocMetric:
    a constraint's under ConstraintFiltered (without orch's "constraint "),
    capacity's under DimensionExhausted ("memory", "cpu", the ports'), and
    each kind's node total."""
    filtered: dict[str, int] = {}
    exhausted: dict[str, int] = {}
    for reason, count in failures.items():
        if reason.startswith("constraint "):
            filtered[reason.removeprefix("constraint ")] = count
        else:
            exhausted[reason.removesuffix(" exhausted")] = count
    return {
        "NodesFiltered": sum(filtered.values()),
        "ConstraintFiltered": filtered or None,
        "NodesExhausted": sum(exhausted.values()),
        "DimensionExhausted": exhausted or None,
    }


def evaluation(ev: Evaluation, job: Job | None) -> dict:
    """An Evaluation (GET /v1/evaluations, /v1/evaluation/<id>)."""
    failed = {
        name: {
            "CoalescedFailures": max(0, int(g.get("failed") or 0) - 1),
            **alloc_metric(ev.failures),
        }
        for name, g in ev.groups.items()
        if isinstance(g, dict) and g.get("failed")
    }
    queued = {
        name: int(g.get("failed") or 0) for name, g in ev.groups.items() if isinstance(g, dict)
    }
    return {
        "ID": ev.eval_id,
        "Namespace": NAMESPACE,
        "Priority": PRIORITY,
        "Type": job.type.value if job else "",
        "TriggeredBy": ev.triggered_by.value,
        "JobID": ev.job_id,
        "NodeID": ev.node_id or "",
        "Status": ev.status.value,
        "StatusDescription": ev.status_description,
        "FailedTGAllocs": failed or None,
        "QueuedAllocations": queued or None,
        "CreateIndex": index_of(ev.create_time),
        "ModifyIndex": index_of(ev.modify_time),
        "CreateTime": ns(ev.create_time),
        "ModifyTime": ns(ev.modify_time),
    }


def node_name(node: Node) -> str:
    return str(node.attributes.get("hostname") or node.node_id)


def _address(node: Node) -> str:
    return urlsplit(node.endpoint).hostname or "" if node.endpoint else ""


def _drivers(node: Node) -> dict:
    out = {}
    for key, value in node.attributes.items():
        if key.startswith("driver.") and key.count(".") == 1:
            ok = bool(value)
            out[key[7:]] = {"Detected": ok, "Healthy": ok, "HealthDescription": ""}
    return out


def node_stub(node: Node) -> dict:
    """NodeListStub, an entry of GET /v1/nodes."""
    return {
        "ID": node.node_id,
        "Name": node_name(node),
        "Address": _address(node),
        "Datacenter": str(node.attribute("datacenter")),
        "NodeClass": "",
        "Version": "",
        "Drain": node.drain is not None,
        "SchedulingEligibility": "eligible" if node.eligible else "ineligible",
        "Status": "ready" if node.healthy else "down",
        "StatusDescription": "",
        "Drivers": _drivers(node),
        "CreateIndex": index_of(node.last_heartbeat),
        "ModifyIndex": index_of(node.last_heartbeat),
    }


def node(n: Node) -> dict:
    """The full Node of GET /v1/node/<id>."""
    out = node_stub(n)
    drain = n.drain
    out.update(
        {
            "HTTPAddr": urlsplit(n.endpoint).netloc if n.endpoint else "",
            "Attributes": {k: str(v) for k, v in n.attributes.items()},
            "Meta": dict(n.meta),
            "NodeResources": {
                "Cpu": {"CpuShares": n.resources.cpu},
                "Memory": {"MemoryMB": n.resources.memory},
                "MinDynamicPort": n.port_range[0],
                "MaxDynamicPort": n.port_range[1],
            },
            "DrainStrategy": _drain_strategy(drain) if drain else None,
            "LastDrain": None,
        }
    )
    return out


def _drain_strategy(drain: dict) -> dict:
    return {
        "Deadline": ns(drain.get("deadline_s")),
        "IgnoreSystemJobs": bool(drain.get("ignore_system_jobs")),
        "ForceDeadline": _rfc3339(drain.get("deadline")),
        "StartedAt": _rfc3339(drain.get("started")),
    }


def deployment(d: Deployment, canaries: dict[str, list[str]] | None = None) -> dict:
    """A Deployment (GET /v1/deployment/<id>, /v1/job/<id>/deployment);
    ``canaries``: each group's canary allocation ids (``Reads.canaries``)."""
    groups = {}
    for name, g in d.groups.items():
        groups[name] = {
            "Promoted": bool(g.get("promoted")),
            "DesiredCanaries": int(g.get("desired_canaries") or 0),
            "DesiredTotal": int(g.get("desired_total") or 0),
            "PlacedCanaries": list((canaries or {}).get(name, [])),
            "PlacedAllocs": int(g.get("placed") or 0),
            "HealthyAllocs": int(g.get("healthy") or 0),
            "UnhealthyAllocs": int(g.get("unhealthy") or 0),
            "RequireProgressBy": _rfc3339(g.get("progress_deadline")),
        }
    return {
        "ID": d.deployment_id,
        "Namespace": NAMESPACE,
        "JobID": d.job_id,
        "JobVersion": d.job_version,
        "Status": d.status.value,
        "StatusDescription": d.status_description,
        "TaskGroups": groups,
        "CreateIndex": index_of(d.create_time),
        "ModifyIndex": index_of(d.modify_time),
    }


def service_registration(inst: dict, node: Node | None, alloc: Allocation | None) -> dict:
    """A ServiceRegistration (GET /v1/service/<name>) from a catalog instance."""
    t = alloc.create_time if alloc else 0.0
    m = alloc.modify_time if alloc else 0.0
    return {
        "ID": f"_nomad-task-{inst['alloc_id']}-{inst['service']}",
        "ServiceName": inst["service"],
        "Namespace": NAMESPACE,
        "NodeID": inst["node_id"],
        "Datacenter": str(node.attribute("datacenter")) if node else "",
        "JobID": inst["job_id"],
        "AllocID": inst["alloc_id"],
        "Tags": inst["tags"],
        "Address": inst["address"],
        "Port": inst["port"] or 0,
        "CreateIndex": index_of(t),
        "ModifyIndex": index_of(m),
    }
