"""Core data model shared by server, agent and scheduler (stdlib only).

Over 400 lines on purpose: the whole data model in one stdlib-only module (STYLE.md).

Vocabulary follows Nomad: job, task group, task, allocation, evaluation, node,
plan, desired_status (what the server wants) and client_status (what the agent
reports). Status enums are ``str`` so they go to JSON and SQL unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from orch import fastjson
from orch.config import DEFAULT_DATACENTER


def new_id() -> str:
    return str(uuid.uuid4())


def short_id(any_id: str) -> str:
    """An id's short form for logs: its last 8 characters.

    Allocation ids are time-ordered (UUIDv7): their first characters are the
    creation time, shared by every allocation of one evaluation, while the
    end is random."""
    return any_id[-8:]


class JobType(str, Enum):
    BATCH = "batch"
    SERVICE = "service"
    SYSTEM = "system"  # one allocation of each group on every eligible node
    SYSBATCH = "sysbatch"  # system, but each node's copy runs once to completion


class JobStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    LOST = "lost"
    DEAD = "dead"


class DesiredStatus(str, Enum):
    RUN = "run"
    STOP = "stop"


class AllocStatus(str, Enum):
    """Allocation client_status."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"


class TaskStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


class EvalStatus(str, Enum):
    PENDING = "pending"
    COMPLETE = "complete"
    BLOCKED = "blocked"  # some placements failed; retried when capacity appears
    FAILED = "failed"
    CANCELED = "canceled"


class TriggeredBy(str, Enum):
    JOB_REGISTER = "job-register"
    JOB_UPDATE = "job-update"
    JOB_DEREGISTER = "job-deregister"
    JOB_RESTART = "job-restart"
    NODE_UPDATE = "node-update"
    ALLOC_FAILURE = "alloc-failure"
    QUEUED_ALLOCS = "queued-allocs"
    NODE_DRAIN = "node-drain"
    DEPLOYMENT_WATCHER = "deployment-watcher"


# Job types placed per node rather than per count (orch/server/scheduler/system.py).
SYSTEM_TYPES = frozenset({JobType.SYSTEM, JobType.SYSBATCH})

TERMINAL_ALLOC = frozenset(
    {AllocStatus.COMPLETE, AllocStatus.FAILED, AllocStatus.STOPPED, AllocStatus.LOST}
)
TERMINAL_TASK = frozenset({TaskStatus.COMPLETE, TaskStatus.FAILED})
TERMINAL_EVAL = frozenset({EvalStatus.COMPLETE, EvalStatus.FAILED, EvalStatus.CANCELED})
# The hashes' encoder, kept (json.dumps with options builds one per call);
# its output is json.dumps(sort_keys=True)'s, so stored hashes stay valid.
_SORTED_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def _hash_json(body: dict) -> str:
    """The text a spec hash is taken of: json's, sorted (fastjson.sorted_ascii)."""
    text = fastjson.sorted_ascii(body)
    return text if text is not None else _SORTED_JSON(body)


CONSTRAINT_OPERATORS = ("=", "!=", ">", "<", ">=", "<=", "regex")
DRIVERS = ("exec", "docker")


@dataclass(frozen=True)
class Resources:
    cpu: int = 0  # MHz, as Nomad's CPU units
    memory: int = 0  # MB

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.memory + other.memory)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu - other.cpu, self.memory - other.memory)

    def to_dict(self) -> dict:
        return {"cpu": self.cpu, "memory": self.memory}


@dataclass(frozen=True)
class Constraint:
    attribute: str
    operator: str
    value: str

    def to_dict(self) -> dict:
        return {"attribute": self.attribute, "operator": self.operator, "value": self.value}

    def __str__(self) -> str:
        return f"{self.attribute} {self.operator} {self.value}"


@dataclass(frozen=True)
class Task:
    name: str
    driver: str  # "exec" or "docker"
    config: dict = field(default_factory=dict, hash=False, compare=True)
    resources: Resources = Resources()
    # dispatch_payload.file: where a dispatched job's payload is written
    # (relative to the task dir); None when the task takes no payload.
    payload_file: str | None = None
    # How it is stopped (orch.validation.kill): a signal name and the seconds
    # before SIGKILL; None: the agent's defaults (SIGTERM, its kill_timeout).
    kill_signal: str | None = None
    kill_timeout: float | None = None

    def to_dict(self) -> dict:
        out: dict[str, object] = {
            "name": self.name,
            "driver": self.driver,
            "config": self.config,
            "resources": self.resources.to_dict(),
        }
        if self.payload_file is not None:
            out["dispatch_payload"] = {"file": self.payload_file}
        # Left out when unset, so that spec hashes stay as they were.
        if self.kill_signal is not None:
            out["kill_signal"] = self.kill_signal
        if self.kill_timeout is not None:
            out["kill_timeout"] = self.kill_timeout
        return out


@dataclass(frozen=True)
class UpdateStrategy:
    """The ``update`` block: how allocations are replaced when a job changes.

    Durations are seconds. System jobs use max_parallel (copies replaced at
    a time); the rest is validated and stored for rolling service updates.
    """

    max_parallel: int = 1
    health_check: str = "checks"  # checks | task_states | manual
    min_healthy_time: float = 10.0
    healthy_deadline: float = 300.0
    progress_deadline: float = 600.0
    auto_revert: bool = False
    canary: int = 0
    auto_promote: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Port:
    """One ``network.ports`` entry: a static host port, or dynamic (static None)."""

    label: str
    static: int | None = None
    to: int | None = None  # the port inside the task (docker); None: the host port

    def to_dict(self) -> dict:
        out: dict[str, object] = {"label": self.label}
        if self.static is not None:
            out["static"] = self.static
        if self.to is not None:
            out["to"] = self.to
        return out


def total_resources(tasks) -> Resources:
    """What a set of tasks reserves together on one node."""
    total = Resources()
    for task in tasks:
        total = total + task.resources
    return total


@dataclass(frozen=True)
class TaskGroup:
    name: str
    count: int
    tasks: tuple[Task, ...]
    constraints: tuple[Constraint, ...] = ()
    # disconnect.stop_after: seconds a cut-off agent keeps running the tasks.
    stop_after: float | None = None
    # migrate.max_parallel: allocations of the group moved off a draining
    # node at a time (a drain only; not part of the spec hash).
    migrate_max_parallel: int = 1
    meta: dict = field(default_factory=dict, hash=False, compare=True)  # wins over job meta
    # The group's update block, already merged over the job's (group wins).
    update: UpdateStrategy | None = None
    # Validated service dicts (orch.validation.services): name, port, tags, checks.
    services: tuple = field(default=(), hash=False, compare=True)
    # network.ports: host ports the scheduler reserves per allocation.
    ports: tuple[Port, ...] = ()
    # Seconds between leaving the service catalog and the tasks' kill_signal.
    shutdown_delay: float = 0.0
    # The restart block (orch.validation.restart), complete; None: the agent's policy.
    restart: dict | None = field(default=None, hash=False, compare=True)

    @property
    def resources(self) -> Resources:
        """The group's demand: the sum of its tasks' resources."""
        return total_resources(self.tasks)

    @property
    def drivers(self) -> frozenset[str]:
        return frozenset(t.driver for t in self.tasks)

    def spec_hash(self) -> str:
        """Hash of everything but count: equal hashes keep allocations on update."""
        body: dict[str, object] = {
            "tasks": [t.to_dict() for t in self.tasks],
            "constraints": [c.to_dict() for c in self.constraints],
        }
        if self.stop_after is not None:
            # Agents learn it from the allocation: a change places new ones.
            # (Left out when unset, so that existing hashes stay as they were.)
            body["disconnect"] = {"stop_after": self.stop_after}
        if self.meta:
            body["meta"] = self.meta  # tasks see it in their environment
        if self.services:
            body["services"] = list(self.services)  # the agent runs their checks
        if self.ports:
            body["network"] = self.network_dict()  # a port change places new copies
        if self.restart is not None:
            body["restart"] = self.restart  # agents learn it from the allocation
        raw = _hash_json(body)
        return hashlib.sha1(raw.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        out = {
            "name": self.name,
            "count": self.count,
            "tasks": [t.to_dict() for t in self.tasks],
            "constraints": [c.to_dict() for c in self.constraints],
        }
        if self.stop_after is not None:
            out["disconnect"] = {"stop_after": self.stop_after}
        if self.migrate_max_parallel != 1:
            # Left out at the default, so that specs (and their equality) stay as they were.
            out["migrate"] = {"max_parallel": self.migrate_max_parallel}
        if self.meta:
            out["meta"] = self.meta
        if self.update is not None:
            # Left out of spec_hash: changing how to update replaces nothing.
            out["update"] = self.update.to_dict()
        if self.services:
            out["services"] = [dict(s) for s in self.services]
        if self.ports:
            out["network"] = self.network_dict()
        if self.shutdown_delay:
            # Not in spec_hash: how old copies are stopped replaces nothing.
            out["shutdown_delay"] = self.shutdown_delay
        if self.restart is not None:
            out["restart"] = dict(self.restart)
        return out

    def network_dict(self) -> dict:
        return {"ports": [p.to_dict() for p in self.ports]}


@dataclass
class Job:
    job_id: str
    task_groups: tuple[TaskGroup, ...]
    type: JobType = JobType.BATCH
    constraints: tuple[Constraint, ...] = ()  # job-level, apply to every group
    stopped: bool = False  # set by DELETE /jobs/<id>
    version: int = 0  # bumped on every PUT
    submit_time: float = 0.0
    status: JobStatus = JobStatus.PENDING  # derived, cached by the server
    meta: dict = field(default_factory=dict)  # tasks see ORCH_META_<KEY>
    # The periodic block as validated (orch.validation.periodic); None: not periodic.
    periodic: dict | None = None
    # The parameterized block (orch.validation.parameterized); None: not dispatchable.
    parameterized: dict | None = None
    parent_id: str | None = None  # the periodic or parameterized job that launched it
    payload: str = ""  # a dispatched child's payload, base64
    # The idempotency token it was dispatched with: a dispatch of the same
    # parent with the same token answers with this child, launching nothing.
    dispatch_token: str = ""

    @property
    def is_parent(self) -> bool:
        """A periodic or parameterized job: never placed, it launches children."""
        return self.periodic is not None or self.parameterized is not None

    update: UpdateStrategy | None = None  # job-level update block
    # Bumped by `orch job rollout`: part of every group's allocation hash, so
    # all copies are replaced under the update rules without a spec change.
    rollout: int = 0

    def group(self, name: str) -> TaskGroup | None:
        for tg in self.task_groups:
            if tg.name == name:
                return tg
        return None

    def update_for(self, group: TaskGroup) -> UpdateStrategy:
        """The update strategy a group follows: its own, the job's, or the default."""
        return group.update or self.update or DEFAULT_UPDATE

    def to_dict(self) -> dict:
        """The seed's job body plus our optional fields."""
        out = {
            "job_id": self.job_id,
            "type": self.type.value,
            "task_groups": [tg.to_dict() for tg in self.task_groups],
            "constraints": [c.to_dict() for c in self.constraints],
            "status": self.status.value,
            "stopped": self.stopped,
            "version": self.version,
            "submit_time": self.submit_time,
            **({"update": self.update.to_dict()} if self.update is not None else {}),
        }
        # Left out when unset: a job without them keeps its seed shape.
        for key in (
            "meta",
            "periodic",
            "parameterized",
            "parent_id",
            "payload",
            "dispatch_token",
            "rollout",
        ):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out

    def spec(self) -> dict:
        """What was submitted: to_dict without the fields the server sets."""
        out = self.to_dict()
        for key in ("status", "stopped", "version", "submit_time"):
            del out[key]
        return out


DEFAULT_UPDATE = UpdateStrategy()


@dataclass
class Node:
    node_id: str
    region: str = "global"
    resources: Resources = Resources()  # total capacity
    healthy: bool = True
    endpoint: str = ""
    attributes: dict = field(default_factory=dict)  # fingerprinted: os, arch, driver.exec, ...
    meta: dict = field(default_factory=dict)
    last_heartbeat: float = 0.0
    # Reported usage of the machine (heartbeat "cpu_used"/"memory_used").
    usage: dict = field(default_factory=dict)
    # sha256 of the secret its agent registered with (Nomad's node SecretID):
    # stored, never shown; "" for a node registered without one.
    secret_digest: str = field(default="", repr=False)
    # Scheduling eligibility: an ineligible node gets no new placements and
    # keeps what it runs. Set by the operator or a drain; a register keeps it.
    eligible: bool = True
    # The drain under way, or None: {"deadline_s", "deadline" (unix time),
    # "started", "ignore_system_jobs"} (orch.server.drainer).
    drain: dict | None = None
    drain_complete: float | None = None  # when the last drain ended
    # Host ports the scheduler may hand out as dynamic ports (agent --port-range).
    port_range: tuple[int, int] = (20000, 32000)

    def computed_class(self) -> str:
        """Nodes with equal class answer every feasibility check the same way."""
        # Per-node attributes (hostname, unique.*) would make every node its own
        # class; constraints on them are checked node by node instead.
        attributes = {
            k: v
            for k, v in self.attributes.items()
            if k != "hostname" and not k.startswith("unique.")
        }
        body = {"region": self.region, "attributes": attributes, "meta": self.meta}
        raw = _hash_json(body)
        return hashlib.sha1(raw.encode()).hexdigest()[:16]

    def attribute(self, name: str) -> Any:
        """Resolve a constraint attribute; None when the node lacks it."""
        if name == "region":
            return self.region
        if name == "datacenter":  # every node is in one, as in Nomad
            return self.attributes.get("datacenter", DEFAULT_DATACENTER)
        if name == "node_id":
            return self.node_id
        if name.startswith("meta."):
            return self.meta.get(name[5:])
        if name in self.attributes:
            return self.attributes[name]
        if name.startswith("attr."):
            return self.attributes.get(name[5:])
        return None

    def to_dict(self) -> dict:
        return {
            "node_id": self.node_id,
            "region": self.region,
            "resources": self.resources.to_dict(),
            "healthy": self.healthy,
            "endpoint": self.endpoint,
            "attributes": self.attributes,
            "meta": self.meta,
            "last_heartbeat": self.last_heartbeat,
            "usage": self.usage,
            **({"secret_digest": self.secret_digest} if self.secret_digest else {}),
            "eligibility": "eligible" if self.eligible else "ineligible",
            "drain": self.drain,
            "drain_complete": self.drain_complete,
            "port_range": f"{self.port_range[0]}-{self.port_range[1]}",
        }


@dataclass
class TaskState:
    """One task inside an allocation, as the agent reports it."""

    status: TaskStatus = TaskStatus.PENDING
    start_time: float | None = None
    end_time: float | None = None
    exit_code: int | None = None
    error: str | None = None
    restarts: int = 0
    events: list = field(default_factory=list)  # [{"time": t, "type": s, "message": s}]

    def to_dict(self) -> dict:
        return {
            "status": self.status.value,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "exit_code": self.exit_code,
            "error": self.error,
            "restarts": self.restarts,
            "events": self.events,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TaskState:
        return cls(
            status=TaskStatus(d.get("status") or "pending"),
            start_time=d.get("start_time"),
            end_time=d.get("end_time"),
            exit_code=d.get("exit_code"),
            error=d.get("error"),
            restarts=int(d.get("restarts") or 0),
            events=list(d.get("events") or []),
        )


@dataclass
class Allocation:
    allocation_id: str
    job_id: str
    task_group: str
    node_id: str
    index: int  # slot within the group: 0..count-1
    resources: Resources = Resources()  # the group's demand, reserved on the node
    desired_status: DesiredStatus = DesiredStatus.RUN
    client_status: AllocStatus = AllocStatus.PENDING
    description: str = ""  # why the status is what it is
    tasks: dict = field(default_factory=dict)  # task name -> TaskState
    start_time: float | None = None
    end_time: float | None = None
    create_time: float = 0.0
    modify_time: float = 0.0
    job_version: int = 0
    group_hash: str = ""  # TaskGroup.spec_hash() it was placed for
    eval_id: str = ""
    previous_allocation: str | None = None  # the one it replaces
    reschedule_count: int = 0  # how many replacements led here
    # Marked by a node drain (Nomad's DesiredTransition.Migrate): the
    # scheduler places a replacement and keeps this one until the drainer
    # stops it, once the replacement runs.
    migrate: bool = False
    # What the agent's health checks say: "healthy", "unhealthy" or None
    # (unknown: no checks, or no result yet), and the last result of each
    # check by "<service>/<check>": {"status", "output", "time"}.
    health: str | None = None
    checks: dict = field(default_factory=dict)
    # Host ports reserved for it: [{"label", "value", "to"}] (to: None unless mapped).
    ports: list = field(default_factory=list)
    # When the server saw `health` turn healthy (None: not healthy now); a
    # deployment counts the copy healthy min_healthy_time after it.
    healthy_since: float | None = None

    @property
    def name(self) -> str:
        return f"{self.job_id}.{self.task_group}[{self.index}]"

    def terminal(self) -> bool:
        return self.client_status in TERMINAL_ALLOC

    def holds_resources(self) -> bool:
        """Does this allocation still occupy its node's capacity?"""
        return self.desired_status == DesiredStatus.RUN and self.client_status not in TERMINAL_ALLOC

    def to_dict(self) -> dict:
        """Seed fields (status = client_status) plus Nomad's two axes."""
        return {
            "allocation_id": self.allocation_id,
            "job_id": self.job_id,
            "task_group": self.task_group,
            "node_id": self.node_id,
            "name": self.name,
            "index": self.index,
            "status": self.client_status.value,
            "client_status": self.client_status.value,
            "desired_status": self.desired_status.value,
            "description": self.description,
            "resources": self.resources.to_dict(),
            "start_time": self.start_time,
            "end_time": self.end_time,
            "create_time": self.create_time,
            "modify_time": self.modify_time,
            "job_version": self.job_version,
            "group_hash": self.group_hash,
            "eval_id": self.eval_id,
            "previous_allocation": self.previous_allocation,
            "reschedule_count": self.reschedule_count,
            "migrate": self.migrate,
            "tasks": {n: ts.to_dict() for n, ts in self.tasks.items()},
            "health": self.health,
            "checks": self.checks,
            **({"ports": self.ports} if self.ports else {}),
            "healthy_since": self.healthy_since,
        }


@dataclass
class Evaluation:
    eval_id: str
    job_id: str
    triggered_by: TriggeredBy
    status: EvalStatus = EvalStatus.PENDING
    status_description: str = ""
    placed: int = 0  # allocations placed by this eval
    queued: int = 0  # placements still wanted (not placed)
    # reason -> count, e.g. {"memory exhausted": 3, "constraint region = eu": 2}
    failures: dict = field(default_factory=dict)
    # group name -> {"wanted": n, "placed": n, "failed": n}
    groups: dict = field(default_factory=dict)
    node_id: str | None = None  # for node-update evals
    create_time: float = 0.0
    modify_time: float = 0.0
    # group -> up to a few nodes that lacked room, nearest misses first:
    # [{"node_id", "reason", "needs": {cpu, memory}, "free": {cpu, memory}}]
    failed_nodes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "evaluation_id": self.eval_id,
            "job_id": self.job_id,
            "triggered_by": self.triggered_by.value,
            "status": self.status.value,
            "status_description": self.status_description,
            "placed": self.placed,
            "queued": self.queued,
            "failures": self.failures,
            "groups": self.groups,
            "node_id": self.node_id,
            "create_time": self.create_time,
            "modify_time": self.modify_time,
            "failed_nodes": self.failed_nodes,
        }


@dataclass
class Plan:
    """What one evaluation decided, committed in one transaction."""

    eval_id: str
    job_id: str
    place: list[Allocation] = field(default_factory=list)  # new allocations
    stop: list[tuple[str, str]] = field(default_factory=list)  # (alloc id, reason)
    # Failed placements: group name -> {"wanted": n, "failures": {reason: n}}
    failed: dict = field(default_factory=dict)


class DeploymentStatus(str, Enum):
    RUNNING = "running"
    SUCCESSFUL = "successful"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class Deployment:
    """A rolling update of one job version (Nomad's deployment).

    ``groups``: group name -> {desired_total, desired_canaries, placed_canaries,
    placed, healthy, unhealthy, promoted, progress_deadline (a time)}.
    """

    deployment_id: str
    job_id: str
    job_version: int
    status: DeploymentStatus = DeploymentStatus.RUNNING
    status_description: str = ""
    groups: dict = field(default_factory=dict)
    create_time: float = 0.0
    modify_time: float = 0.0

    @property
    def active(self) -> bool:
        return self.status == DeploymentStatus.RUNNING

    def to_dict(self) -> dict:
        return {
            "deployment_id": self.deployment_id,
            "job_id": self.job_id,
            "job_version": self.job_version,
            "status": self.status.value,
            "status_description": self.status_description,
            "groups": {name: dict(g) for name, g in self.groups.items()},
            "create_time": self.create_time,
            "modify_time": self.modify_time,
        }


def replace(obj, **changes):
    """``dataclasses.replace(obj, **changes)``, by copying the attributes.

    dataclasses.replace calls ``__init__`` with every field: 10 us for an
    Allocation, against ~1.7 here, and the server replaces a few records per
    job (bench/README.md, issue #17). The copy is the same object for these
    classes: every field is an init field with nothing to re-run (no
    ``__post_init__``, no ``init=False`` field, no slots) and an instance
    holds only its fields. Any other class, or a name that is not an init
    field, goes to dataclasses.replace, which builds it or raises. A copy's
    attributes read a little slower (~30 ns, against ~18 for an instance
    built by ``__init__``): ~300 reads to undo what one copy saves."""
    cls = obj.__class__
    fields = _COPYABLE.get(cls)
    if fields is None:
        fields = _COPYABLE[cls] = _copyable_fields(cls)
    if not fields or not fields.issuperset(changes):
        return dataclasses.replace(obj, **changes)
    new = object.__new__(cls)
    # Filled in place (a frozen class's too: no __setattr__), not given a
    # copied dict: the instance keeps its class's shared-key layout, and
    # reading its attributes later stays ~2x faster.
    attributes = new.__dict__
    attributes.update(obj.__dict__)
    attributes.update(changes)
    return new


# class -> its init fields' names, or an empty set: not copyable (replace above)
_COPYABLE: dict[type, frozenset[str]] = {}


def _copyable_fields(cls: type) -> frozenset[str]:
    if not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__"):
        return frozenset()
    if "__slots__" in cls.__dict__:
        return frozenset()
    fields = dataclasses.fields(cls)
    if not fields or not all(f.init for f in fields):
        return frozenset()
    return frozenset(f.name for f in fields)
