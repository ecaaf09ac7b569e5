"""The docker task's `config`, turned into the container's create options.

Config: `image`, optional `command` (a string runs through `/bin/sh -c`
inside the image, a list is the argv; `args` are appended), `env`, `port`
(host port) published to `container_port` (default the same number) on the
agent's bind address, or on `host_ip` if the task gives one. The group's
network ports the scheduler reserved are published the same way, each host
port to its `to` (or the same number). `${ORCH_...}` in command, args and
env is interpolated with the container's view (task dir /local, alloc dir /alloc). Resources:
memory MB is a hard limit (`mem_limit`, swap included, as Nomad does); CPU
MHz becomes a CPU weight, 1000 MHz = 1024 shares (docker's default weight,
one core's worth), at least 2. The container's name and labels let a
restarted agent find it again.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import shlex
from typing import Any

from orch.agent import taskenv
from orch.agent.drivers.base import TaskContext
from orch.agent.drivers.cgroups import cpu_shares
from orch.errors import DriverError

DEFAULT_HOST_IP = "127.0.0.1"  # task ports are published here unless told otherwise
LABEL_JOB, LABEL_ALLOC, LABEL_TASK = "orch.job_id", "orch.alloc_id", "orch.task"
LABEL_ATTEMPT = "orch.attempt"
# The task dir is mounted here (Nomad's /local): the dispatch payload file and
# anything else the agent puts there reach the container.
TASK_DIR_IN_CONTAINER = "/local"
ALLOC_DIR_IN_CONTAINER = "/alloc"  # the allocation's dir, as Nomad's
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]")


def container_name(alloc_id: str, task: str) -> str:
    return _NAME_BAD.sub("_", f"orch-{alloc_id}-{task}")


def build_command(config: dict) -> list[str] | None:
    """The container's argv; None keeps the image's CMD. Raises DriverError."""
    command, args = config.get("command"), config.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise DriverError("config.args: must be a list of strings")
    if command is None:
        return list(args) or None
    if isinstance(command, str) and command.strip():
        return ["/bin/sh", "-c", " ".join([command] + [shlex.quote(a) for a in args])]
    if isinstance(command, list) and command and all(isinstance(c, str) for c in command):
        return list(command) + list(args)
    raise DriverError("config.command: must be a non-empty string or list of strings")


def build_environment(ctx: TaskContext) -> dict[str, str]:
    """ORCH_* variables (the task dir as the container sees it) with the task's `env` over them."""
    env = container_env(ctx.env)
    extra = ctx.config.get("env") or {}
    if not isinstance(extra, dict):
        raise DriverError("config.env: must be an object of strings")
    for key, value in extra.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise DriverError(f"config.env.{key}: invalid variable name")
        env[key] = "true" if value is True else "false" if value is False else str(value)
    return env


def container_env(orch_env: dict) -> dict[str, str]:
    """The agent's ORCH_* variables with the dirs as the container mounts them."""
    env = {k: str(v) for k, v in orch_env.items()}
    for prefix in ("ORCH_", "NOMAD_"):  # NOMAD_* twins: orch.agent.taskenv.nomad_env
        if f"{prefix}TASK_DIR" in env:
            env[f"{prefix}TASK_DIR"] = TASK_DIR_IN_CONTAINER
        if f"{prefix}ALLOC_DIR" in env:
            env[f"{prefix}ALLOC_DIR"] = ALLOC_DIR_IN_CONTAINER
    return env


def network_ports(ports, host_ip: str) -> dict:
    """The group's reserved host ports: each published to its `to` (or the same) port."""
    return {f"{p.get('to') or p['value']}/tcp": (host_ip, p["value"]) for p in ports}


def build_ports(config: dict, host_ip: str = DEFAULT_HOST_IP) -> dict | None:
    """`port` on the host -> `container_port` (default the same) over TCP,
    published on `host_ip` (the agent's bind address) unless the task's
    config names its own `host_ip`: a task is not put on every interface
    of the node by default, as docker's bare `-p PORT` would."""
    host = config.get("port")
    if host is None:
        return None
    inner = config.get("container_port") or host
    for key, value in (("port", host), ("container_port", inner)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise DriverError(f"config.{key}: must be an integer in 1..65535")
    address = config.get("host_ip", host_ip)
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        raise DriverError("config.host_ip: must be an IP address, e.g. 0.0.0.0") from None
    return {f"{inner}/tcp": (address, host)}


def publish_ip(bind: str) -> str:
    """The host address to publish ports on for an agent bound to ``bind``:
    the same one, so a loopback agent keeps its tasks on loopback too."""
    try:
        return str(ipaddress.ip_address(bind))
    except ValueError:
        return DEFAULT_HOST_IP  # a host name: keep to loopback


def create_options(ctx: TaskContext, host_ip: str = DEFAULT_HOST_IP) -> dict:
    """Keyword arguments for `containers.create`, from the task's context."""
    ctx = dataclasses.replace(
        ctx, config=taskenv.interpolate_config(ctx.config, container_env(ctx.env))
    )
    published = network_ports(ctx.ports, host_ip)
    published.update(build_ports(ctx.config, host_ip) or {})
    image = ctx.config.get("image")
    if not isinstance(image, str) or not image.strip():
        raise DriverError("config.image: must be a non-empty string for the docker driver")
    options: dict[str, Any] = {
        "image": image,
        "command": build_command(ctx.config),
        "name": container_name(ctx.alloc_id, ctx.task_name),
        "labels": {
            LABEL_JOB: ctx.job_id,
            LABEL_ALLOC: ctx.alloc_id,
            LABEL_TASK: ctx.task_name,
            LABEL_ATTEMPT: str(ctx.attempt),
        },
        "environment": build_environment(ctx),
        "ports": published or None,
        "detach": True,
        "stdin_open": False,
        "tty": False,
        # A shell or server as PID 1 ignores SIGTERM; tini forwards it, so a
        # stop is graceful instead of always waiting for the SIGKILL.
        "init": True,
    }
    if ctx.task_dir:
        options["volumes"] = {ctx.task_dir: {"bind": TASK_DIR_IN_CONTAINER, "mode": "rw"}}
        alloc_dir = ctx.env.get("ORCH_ALLOC_DIR")
        if alloc_dir:
            options["volumes"][alloc_dir] = {"bind": ALLOC_DIR_IN_CONTAINER, "mode": "rw"}
    if ctx.resources.memory > 0:
        options["mem_limit"] = f"{ctx.resources.memory}m"
        options["memswap_limit"] = f"{ctx.resources.memory}m"
    if ctx.resources.cpu > 0:
        options["cpu_shares"] = cpu_shares(ctx.resources.cpu)
    return options
