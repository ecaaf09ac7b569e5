"""What a task gets from its job beyond the driver's basics: environment and payload.

Kept in one place, apart from the runner, so that exec and docker tasks see
the same ``ORCH_*`` variables (``task_env``), the same ``${ORCH_...}``
interpolation of their config (``interpolate_config``) and the same payload file.

Interpolation: ``${NAME}`` in ``command``, ``args`` and ``env`` values is
replaced by the task's variable NAME when the agent sets it (every such
variable starts with ``ORCH_``, each also as ``NOMAD_``); any other ``${...}`` or ``$`` is left as
written (no escapes), so a shell command keeps its own ``$VARS``.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import os
import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from orch.errors import DriverError

if TYPE_CHECKING:  # the drivers import this module: no runtime cycle
    from orch.agent.drivers.base import TaskContext
    from orch.agent.spec import AllocSpec
    from orch.config import AgentConfig
    from orch.structs import Task

log = logging.getLogger(__name__)

_NOT_ENV = re.compile(r"[^A-Za-z0-9_]")
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def task_env(
    spec: AllocSpec, task: Task, config: AgentConfig, *, alloc_dir: str, task_dir: str
) -> dict[str, str]:
    """Every ORCH_* variable of one task (host paths: docker maps the dirs, docker_config)."""
    env = {
        "ORCH_ALLOC_ID": spec.allocation_id,
        "ORCH_ALLOC_INDEX": str(spec.index),
        "ORCH_ALLOC_NAME": spec.name,
        "ORCH_JOB_ID": spec.job_id,
        "ORCH_GROUP_NAME": spec.task_group,
        "ORCH_TASK_GROUP": spec.task_group,  # the seed's name, kept
        "ORCH_TASK_NAME": task.name,
        "ORCH_ALLOC_DIR": alloc_dir,
        "ORCH_TASK_DIR": task_dir,
        "ORCH_CPU_LIMIT": str(task.resources.cpu),
        "ORCH_MEMORY_LIMIT": str(task.resources.memory),
        "ORCH_REGION": config.region,
        "ORCH_DC": config.datacenter,
    }
    env.update(port_env(spec.ports, advertise_ip(config)))
    env.update(meta_env(spec.meta))
    env.update(nomad_env(env))
    return env


# Nomad's names orch has no ORCH_ twin for. NOMAD_REGION is Nomad's default
# region, one orch server being one Nomad region (orch's node region, ORCH_REGION,
# is a label of its own); NOMAD_DC comes from ORCH_DC.
NOMAD_REGION = "global"


def nomad_env(env: dict[str, str]) -> dict[str, str]:
    """Every ``ORCH_*`` variable also as ``NOMAD_*`` (job files written for Nomad)."""
    nomad = {f"NOMAD_{k[5:]}": v for k, v in env.items() if k.startswith("ORCH_")}
    nomad["NOMAD_SHORT_ALLOC_ID"] = env["ORCH_ALLOC_ID"][:8]
    nomad["NOMAD_JOB_NAME"] = env["ORCH_JOB_ID"]
    nomad["NOMAD_REGION"] = NOMAD_REGION
    return nomad


def port_env(ports, ip: str) -> dict[str, str]:
    """ORCH_PORT_ (the task's side: ``to`` if mapped), ORCH_HOST_PORT_, ORCH_IP_, ORCH_ADDR_."""
    env = {}
    for port in ports:
        label, host = port["label"], port["value"]
        env[f"ORCH_PORT_{label}"] = str(port.get("to") or host)
        env[f"ORCH_HOST_PORT_{label}"] = str(host)
        env[f"ORCH_IP_{label}"] = ip
        env[f"ORCH_ADDR_{label}"] = f"{ip}:{host}"
    return env


def advertise_ip(config: AgentConfig) -> str:
    """The address others reach this node's tasks on: --advertise's host, else --bind.

    A wildcard bind (0.0.0.0, ::) names no address: loopback then."""
    return _advertise_ip(config.advertise, config.bind)


# Every task's environment asks; parsing the URL and the address each time
# was a few percent of the push thread's Python at batch rates.
@functools.lru_cache(maxsize=16)
def _advertise_ip(advertise: str | None, bind: str) -> str:
    host = urlsplit(advertise).hostname if advertise else None
    host = host or bind
    try:
        if ipaddress.ip_address(host).is_unspecified:
            return "127.0.0.1"
    except ValueError:
        pass  # a host name: given as it is
    return host


def interpolate(value: str, env: dict) -> str:
    """``${NAME}`` replaced by env[NAME]; unknown names stay as written."""
    if "${" not in value:
        return value
    return _REFERENCE.sub(lambda m: str(env.get(m.group(1), m.group(0))), value)


def interpolate_config(config: dict, env: dict) -> dict:
    """A copy of the task config with ``command``, ``args`` and ``env`` values interpolated."""
    out = dict(config)
    command = config.get("command")
    if isinstance(command, str):
        out["command"] = interpolate(command, env)
    elif isinstance(command, list):
        out["command"] = [interpolate(c, env) if isinstance(c, str) else c for c in command]
    args = config.get("args")
    if isinstance(args, list):
        out["args"] = [interpolate(a, env) if isinstance(a, str) else a for a in args]
    extra = config.get("env")
    if isinstance(extra, dict):
        out["env"] = {k: interpolate(v, env) if isinstance(v, str) else v for k, v in extra.items()}
    return out


def interpolated(ctx: TaskContext) -> TaskContext:
    """The context with its config interpolated against its own env (as the driver sees it)."""
    if not _references(ctx.config):
        return ctx  # most configs have no ${...}: no copies, no dataclass rebuilt
    return dataclasses.replace(ctx, config=interpolate_config(ctx.config, ctx.env))


def _references(config: dict) -> bool:
    """Might `interpolate_config` change anything (a "${" in command, args or env)?"""
    command, args, extra = config.get("command"), config.get("args"), config.get("env")
    values: list = [command]
    if isinstance(command, list):
        values += command
    if isinstance(args, list):
        values += args
    if isinstance(extra, dict):
        values += extra.values()
    return any(isinstance(v, str) and "${" in v for v in values)


def meta_env(meta: dict) -> dict[str, str]:
    """``ORCH_META_<key>`` for each meta key, as given and upper-cased (as Nomad).

    '.' and '-' (allowed in meta keys) become '_' in the variable name."""
    env = {}
    for key, value in meta.items():
        name = _NOT_ENV.sub("_", key)
        env[f"ORCH_META_{name}"] = str(value)
        env[f"ORCH_META_{name.upper()}"] = str(value)
    return env


def write_payload(task_dir: str, relative: str | None, payload: bytes) -> None:
    """Write a dispatched job's payload to the task's dispatch_payload file.

    DriverError when it cannot be written: the task fails to start, as with
    any other start failure."""
    if relative is None or not payload:
        return
    path = os.path.normpath(os.path.join(task_dir, relative))
    # The name was checked (relative, no '..'); checked again here because
    # the agent may be called without the server.
    if not path.startswith(os.path.normpath(task_dir) + os.sep):
        raise DriverError(f"dispatch_payload.file {relative!r} leaves the task dir")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as out:
            out.write(payload)
        os.replace(tmp, path)
    except OSError as exc:
        raise DriverError(f"cannot write dispatch_payload.file {relative!r}: {exc}") from exc
    log.debug("payload written path=%s bytes=%d", path, len(payload))
