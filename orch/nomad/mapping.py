"""The field mapping between Nomad's job JSON and orch's job body, in one place.

``FIELDS``: each Nomad block -> its fields, with their orch names and how the
value converts. ``orch.nomad.translate`` reads it Nomad -> orch; the ``/v1``
reads can read it orch -> Nomad. The semantic differences (constraint
targets, operators, drivers, datacenters) are the tables below it; README
"Coming from Nomad" documents them.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

NS = 1_000_000_000  # Nomad's JSON durations are integer nanoseconds


class Field(NamedTuple):
    """One Nomad field: its orch name and the kind of conversion."""

    nomad: str
    orch: str
    # "value" copies; "seconds" turns nanoseconds into seconds; a block name
    # (a key of FIELDS) converts a nested object, "list:<block>" a list of
    # them; other kinds are handled by the translator of the enclosing block.
    kind: str = "value"


FIELDS: dict[str, tuple[Field, ...]] = {
    "Job": (
        Field("ID", "job_id"),
        Field("Type", "type"),
        Field("Constraints", "constraints", "constraints"),
        Field("Datacenters", "constraints", "datacenters"),
        Field("Meta", "meta"),
        Field("Update", "update", "update"),
        Field("Periodic", "periodic", "Periodic"),
        Field("ParameterizedJob", "parameterized", "ParameterizedJob"),
        Field("TaskGroups", "task_groups", "list:TaskGroup"),
    ),
    "TaskGroup": (
        Field("Name", "name"),
        Field("Count", "count"),
        Field("Constraints", "constraints", "constraints"),
        Field("Meta", "meta"),
        Field("Update", "update", "update"),
        Field("Networks", "network", "networks"),
        Field("Services", "services", "list:Service"),
        Field("ShutdownDelay", "shutdown_delay", "seconds"),
        Field("Migrate", "migrate", "Migrate"),
        Field("RestartPolicy", "restart", "RestartPolicy"),
        Field("Tasks", "tasks", "list:Task"),
    ),
    "Task": (
        Field("Name", "name"),
        Field("Driver", "driver", "driver"),
        Field("Config", "config", "config"),
        Field("Env", "env", "env"),  # orch keeps a task's env in its config
        Field("Resources", "resources", "Resources"),
        Field("KillTimeout", "kill_timeout", "seconds"),
        Field("KillSignal", "kill_signal"),
        Field("DispatchPayload", "dispatch_payload", "DispatchPayload"),
        # orch has these on the group: a task's are lifted into its group's.
        Field("Constraints", "constraints", "group"),
        Field("Services", "services", "group"),
        Field("ShutdownDelay", "shutdown_delay", "group"),
        Field("Meta", "meta", "group"),
        Field("RestartPolicy", "restart", "group"),
    ),
    "Update": (
        Field("MaxParallel", "max_parallel"),
        Field("HealthCheck", "health_check"),
        Field("MinHealthyTime", "min_healthy_time", "seconds"),
        Field("HealthyDeadline", "healthy_deadline", "seconds"),
        Field("ProgressDeadline", "progress_deadline", "seconds"),
        Field("AutoRevert", "auto_revert"),
        Field("Canary", "canary"),
        Field("AutoPromote", "auto_promote"),
    ),
    "Periodic": (
        Field("Specs", "crons", "specs"),
        Field("Spec", "crons", "specs"),
        Field("TimeZone", "time_zone"),
        Field("ProhibitOverlap", "prohibit_overlap"),
        Field("Enabled", "enabled"),
    ),
    "ParameterizedJob": (
        Field("MetaRequired", "meta_required"),
        Field("MetaOptional", "meta_optional"),
        Field("Payload", "payload"),
    ),
    "Migrate": (Field("MaxParallel", "max_parallel"),),
    "RestartPolicy": (
        Field("Attempts", "attempts"),
        Field("Interval", "interval", "seconds"),
        Field("Delay", "delay", "seconds"),
        Field("Mode", "mode"),
    ),
    "Service": (
        Field("Name", "name"),
        Field("PortLabel", "port"),
        Field("Tags", "tags"),
        Field("Checks", "checks", "list:Check"),
        Field("CheckRestart", "check_restart", "CheckRestart"),
    ),
    "Check": (
        Field("Name", "name"),
        Field("Type", "type"),
        Field("Path", "path"),
        Field("Interval", "interval", "seconds"),
        Field("Timeout", "timeout", "seconds"),
        Field("Command", "command", "command"),
        Field("Args", "command", "command"),
        Field("CheckRestart", "check_restart", "CheckRestart"),
    ),
    "CheckRestart": (Field("Limit", "limit"), Field("Grace", "grace", "seconds")),
    "Resources": (Field("CPU", "cpu"), Field("MemoryMB", "memory")),
    "Port": (Field("Label", "label"), Field("Value", "static"), Field("To", "to")),
    "DispatchPayload": (Field("File", "file"),),
}

# Fields the Nomad server sets or that describe the job, not its work: read
# and never translated (a job read from Nomad registers as it is).
READ_ONLY = frozenset(
    {
        "Name",
        "Status",
        "StatusDescription",
        "Stable",
        "Version",
        "SubmitTime",
        "CreateIndex",
        "ModifyIndex",
        "JobModifyIndex",
        "Dispatched",
        "DispatchIdempotencyToken",
        "ParentID",
        "Payload",
        "VersionTag",
    }
)

# Nomad fields orch has no counterpart for, at the default Nomad's API
# fills in: accepted (orch behaves as Nomad does at that default).
DEFAULTS: dict[str, dict[str, Any]] = {
    "Job": {
        "Region": "global",
        "Namespace": "default",
        "Priority": 50,
        "Stop": False,
        "AllAtOnce": False,
        "NodePool": "default",
    },
    "TaskGroup": {"EphemeralDisk": {"SizeMB": 300}, "Consul": {"Cluster": "default"}},
    "Task": {
        "LogConfig": {"MaxFiles": 10, "MaxFileSizeMB": 10},
        # The workload identity Nomad (1.7+) gives every task.
        "Identity": {"Audience": ["nomadproject.io"], "Name": "default"},
    },
    "Update": {"Stagger": 30 * NS},
    "Migrate": {"HealthCheck": "checks", "MinHealthyTime": 10 * NS, "HealthyDeadline": 300 * NS},
    "Periodic": {"SpecType": "cron"},
    "Network": {"Mode": "host"},
    "Service": {
        "Provider": "nomad",
        "AddressMode": "auto",
        "Cluster": "default",
        "OnUpdate": "require_healthy",
    },
    "Check": {
        "Method": "GET",
        "Protocol": "http",
        "AddressMode": "host",
        "OnUpdate": "require_healthy",
    },
    "Port": {"HostNetwork": "default"},
}

# A group's ReschedulePolicy as Nomad fills it in, per job type (system jobs'
# is all zero): accepted, as orch reschedules failed allocations by itself
# (orch.server.scheduler.reconcile); any other policy is refused.
RESCHEDULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "service": {
        "Delay": 30 * NS,
        "DelayFunction": "exponential",
        "MaxDelay": 3600 * NS,
        "Unlimited": True,
    },
    "batch": {"Attempts": 1, "Interval": 86400 * NS, "Delay": 5 * NS, "DelayFunction": "constant"},
}

# Constraint targets: Nomad's interpolations -> orch's node attributes.
ATTRIBUTES = {
    "${attr.kernel.name}": "os",
    "${attr.kernel.version}": "kernel.version",
    "${attr.cpu.arch}": "arch",
    "${attr.cpu.numcores}": "cpu.cores",
    "${attr.cpu.frequency}": "cpu.frequency",
    "${attr.unique.hostname}": "hostname",
    "${attr.driver.docker}": "driver.docker",
    "${attr.driver.exec}": "driver.exec",
    "${attr.driver.raw_exec}": "driver.exec",
    "${node.unique.name}": "hostname",
    "${node.unique.id}": "node_id",
    "${node.datacenter}": "datacenter",
    "${node.region}": "region",
}
META_TARGET = re.compile(r"\$\{meta\.([A-Za-z0-9_.-]+)\}")
# Go's architecture names (Nomad's cpu.arch) -> the kernel's (orch's arch).
ARCHES = {"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "arm": "armv7l"}
OPERATORS = {
    "=": "=",
    "==": "=",
    "is": "=",
    "!=": "!=",
    "not": "!=",
    ">": ">",
    ">=": ">=",
    "<": "<",
    "<=": "<=",
    "regexp": "regex",
}
DRIVERS = {"exec": "exec", "raw_exec": "exec", "docker": "docker"}
# Task config keys orch's drivers understand, per Nomad driver.
CONFIG_KEYS = {
    "exec": ("command", "args"),
    "raw_exec": ("command", "args"),
    "docker": ("image", "command", "args", "ports"),
}
ANY_DATACENTER = "*"
