"""The docker driver: one container per task, through the `docker` package.

A task's container is named `orch-<alloc id>-<task>` and labelled with
`orch.job_id`, `orch.alloc_id`, `orch.task` and `orch.attempt` (which start of
the task it is), so that a restarted agent (or a test's cleanup) finds it
again, also one it started but had not saved the handle of. Config: `image`,
optional `command` (a string runs through `/bin/sh -c` inside the image, a list
is the argv; `args` are appended), `env`, `port` (host port) published to
`container_port` (default the same number) on the agent's bind address, or on
`host_ip` if the task gives one. Resources: memory MB is a hard
limit (`mem_limit`, swap included, as Nomad does); CPU MHz becomes a CPU
weight, 1000 MHz = 1024 shares (docker's default weight, one core's worth), at
least 2. Output is streamed into the same per-task log files as the exec
driver's.

The engine (found as the docker CLI finds it, probed and cached, the SDK
imported only when a task needs it) is `docker_engine.py`.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import shlex
import threading
import time
from dataclasses import dataclass, field

from orch.agent.drivers import docker_engine
from orch.agent.drivers.base import Driver, ExitResult, TaskContext, oom_error
from orch.agent.drivers.cgroups import cpu_shares  # noqa: F401 (part of this API)
from orch.agent.drivers.docker_engine import (
    API_TIMEOUT,
    AVAILABLE_TTL,
    PING_TIMEOUT,
    PULL_TIMEOUT,
    Engine,
    short,
)
from orch.errors import DriverError

log = logging.getLogger(__name__)

DEFAULT_HOST_IP = "127.0.0.1"  # task ports are published here unless told otherwise
LABEL_JOB, LABEL_ALLOC, LABEL_TASK = "orch.job_id", "orch.alloc_id", "orch.task"
LABEL_ATTEMPT = "orch.attempt"
LOG_DRAIN = 2.0  # after exit, how long the log pumps may take to finish
WAIT_RETRY = 1.0  # engine hiccup while waiting: try again after this
HIDDEN_ENV = ("ORCH_TASK_DIR",)  # a host path, meaningless inside a container
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class DockerHandle:
    """A started container and the threads copying its output to the log files."""

    container_id: str
    name: str
    stdout_path: str
    stderr_path: str
    memory_mb: int = 0
    pumps: list = field(default_factory=list)
    streams: list = field(default_factory=list)
    result: ExitResult | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


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
    """ORCH_* variables (less host paths) with the task's `env` over them."""
    env = {k: str(v) for k, v in ctx.env.items() if k not in HIDDEN_ENV}
    extra = ctx.config.get("env") or {}
    if not isinstance(extra, dict):
        raise DriverError("config.env: must be an object of strings")
    for key, value in extra.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise DriverError(f"config.env.{key}: invalid variable name")
        env[key] = "true" if value is True else "false" if value is False else str(value)
    return env


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
    image = ctx.config.get("image")
    if not isinstance(image, str) or not image.strip():
        raise DriverError("config.image: must be a non-empty string for the docker driver")
    options = {
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
        "ports": build_ports(ctx.config, host_ip),
        "detach": True,
        "stdin_open": False,
        "tty": False,
        # A shell or server as PID 1 ignores SIGTERM; tini forwards it, so a
        # stop is graceful instead of always waiting for the SIGKILL.
        "init": True,
    }
    if ctx.resources.memory > 0:
        options["mem_limit"] = f"{ctx.resources.memory}m"
        options["memswap_limit"] = f"{ctx.resources.memory}m"
    if ctx.resources.cpu > 0:
        options["cpu_shares"] = cpu_shares(ctx.resources.cpu)
    return options


class DockerDriver(Driver):
    """Runs tasks as containers on the engine DOCKER_HOST names (or the default)."""

    name = "docker"

    def __init__(
        self,
        *,
        environment: dict | None = None,
        ping_timeout: float = PING_TIMEOUT,
        api_timeout: float = API_TIMEOUT,
        pull_timeout: float = PULL_TIMEOUT,
        available_ttl: float = AVAILABLE_TTL,
        host_ip: str = DEFAULT_HOST_IP,
        now=time.monotonic,
    ):
        self._host_ip = host_ip  # where task ports are published
        self._engine = Engine(
            environment=environment,
            ping_timeout=ping_timeout,
            api_timeout=api_timeout,
            pull_timeout=pull_timeout,
            available_ttl=available_ttl,
            now=now,
        )

    def available(self) -> bool:
        return self._engine.available()

    def unavailable_reason(self) -> str:
        return self._engine.unavailable_reason()

    def fingerprint(self) -> dict:
        return {"driver.docker": self._engine.probe()}

    # -- the Driver interface ------------------------------------------------

    def start(self, ctx: TaskContext) -> DockerHandle:
        options = create_options(ctx, self._host_ip)
        client = self._engine.client()
        self._engine.ensure_image(client, options["image"])
        os.makedirs(os.path.dirname(ctx.stdout_path) or ".", exist_ok=True)
        os.makedirs(os.path.dirname(ctx.stderr_path) or ".", exist_ok=True)
        try:
            container_id = self._engine.create(client, options)
        except DriverError:
            self._engine.images.discard(options["image"])  # it may have been removed
            raise
        if container_id is None:
            # The name is taken. By this very start, made by an agent killed
            # before it saved the handle: take it over. Else a leftover.
            handle = self.find(ctx)
            if handle is not None:
                log.info("container %s of this start already exists: taken over", options["name"])
                return handle
            log.info("removing leftover container %s", options["name"])
            self._remove(client, options["name"])
            container_id = self._engine.create(client, options)
            if container_id is None:
                raise DriverError(
                    f"failed to create container {options['name']}: the name stays taken"
                )
        try:
            client.api.start(container_id)
        except Exception as exc:
            self._remove(client, container_id)
            raise DriverError(f"failed to start container {options['name']}: {short(exc)}")
        handle = DockerHandle(
            container_id=container_id,
            name=options["name"],
            stdout_path=ctx.stdout_path,
            stderr_path=ctx.stderr_path,
            memory_mb=ctx.resources.memory,
        )
        self._pump_logs(client, handle, since=None)
        log.debug(
            "docker started alloc=%s task=%s container=%s",
            ctx.alloc_id,
            ctx.task_name,
            container_id[:12],
        )
        return handle

    def wait(self, handle: DockerHandle, timeout: float | None) -> ExitResult | None:
        if handle.result is not None:
            return handle.result
        try:
            client = self._engine.client()
            status = client.api.wait(handle.container_id, timeout=timeout)
        except DriverError:
            time.sleep(WAIT_RETRY if timeout is None else min(timeout, WAIT_RETRY))
            return None
        except docker_engine.docker.errors.NotFound:
            return self._settle(handle, None) or ExitResult(
                exit_code=None, error=f"container {handle.name} disappeared"
            )
        except (
            docker_engine.requests.RequestException,
            docker_engine.docker.errors.APIError,
        ) as exc:
            if timeout is None:  # the engine hiccuped: the runner asks again
                log.warning("waiting for container %s failed: %s", handle.name, short(exc))
                time.sleep(WAIT_RETRY)
            return None
        result = self._settle(handle, status.get("StatusCode"))
        self._remove(client, handle.container_id, handle)
        return result

    def stop(self, handle: DockerHandle, timeout: float) -> None:
        try:
            client = self._engine.client()
        except DriverError as exc:
            log.warning("cannot stop container %s: %s", handle.name, exc.message)
            return
        try:
            client.api.stop(handle.container_id, timeout=max(0, math.ceil(timeout)))
        except docker_engine.docker.errors.NotFound:
            pass
        except (
            docker_engine.requests.RequestException,
            docker_engine.docker.errors.APIError,
        ) as exc:
            log.warning(
                "stopping container %s failed: %s; removing it by force", handle.name, short(exc)
            )
        self._settle(handle, None)
        self._remove(client, handle.container_id, handle)

    def handle_to_json(self, handle: DockerHandle) -> dict:
        return {
            "driver": self.name,
            "container_id": handle.container_id,
            "name": handle.name,
            "stdout_path": handle.stdout_path,
            "stderr_path": handle.stderr_path,
            "memory_mb": handle.memory_mb,
        }

    def recover(self, handle_json: dict) -> DockerHandle | None:
        container_id = handle_json.get("container_id")
        if handle_json.get("driver") != self.name or not container_id:
            return None
        info = self._engine.inspect(container_id)
        if info is None:
            return None
        return self._attach(
            info,
            handle_json.get("stdout_path"),
            handle_json.get("stderr_path"),
            int(handle_json.get("memory_mb") or 0),
        )

    def find(self, ctx: TaskContext) -> DockerHandle | None:
        """This start's container by name and labels; one never started is started now."""
        if not self.available():
            return None
        info = self._engine.inspect(container_name(ctx.alloc_id, ctx.task_name))
        labels = ((info or {}).get("Config") or {}).get("Labels") or {}
        if (
            info is None
            or labels.get(LABEL_ALLOC) != ctx.alloc_id
            or labels.get(LABEL_TASK) != ctx.task_name
            or labels.get(LABEL_ATTEMPT, "0") != str(ctx.attempt)
        ):
            return None
        if (info.get("State") or {}).get("Status") == "created":
            try:  # created, and the agent died before starting it
                self._engine.client().api.start(info["Id"])
            except (
                DriverError,
                docker_engine.requests.RequestException,
                docker_engine.docker.errors.APIError,
            ) as exc:
                log.warning("cannot start container %s: %s", info["Id"][:12], short(exc))
                return None
        return self._attach(info, ctx.stdout_path, ctx.stderr_path, ctx.resources.memory)

    def _attach(
        self, info: dict, stdout_path: str | None, stderr_path: str | None, memory_mb: int
    ) -> DockerHandle:
        handle = DockerHandle(
            container_id=info["Id"],
            name=info["Name"].lstrip("/"),
            stdout_path=stdout_path or os.devnull,
            stderr_path=stderr_path or os.devnull,
            memory_mb=memory_mb,
        )
        for path in (handle.stdout_path, handle.stderr_path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        # Append only what the container wrote since our last write to the file.
        self._pump_logs(self._engine.client(), handle, since=_mtime(handle.stdout_path))
        return handle

    # -- helpers ---------------------------------------------------------------

    def _pump_logs(self, client, handle: DockerHandle, since: float | None) -> None:
        """Copy the container's output to the log files, from threads of their own.

        `follow` from the start (or `since`) loses nothing, so a task's start
        does not wait for its log streams to open.
        """
        for kind, path in (("stdout", handle.stdout_path), ("stderr", handle.stderr_path)):
            thread = threading.Thread(
                target=self._follow,
                args=(client, handle, kind, path, since),
                daemon=True,
                name=f"docker-{kind}-{handle.container_id[:8]}",
            )
            handle.pumps.append(thread)
            thread.start()

    def _follow(
        self, client, handle: DockerHandle, kind: str, path: str, since: float | None
    ) -> None:
        try:
            stream = client.api.logs(
                handle.container_id,
                stdout=kind == "stdout",
                stderr=kind == "stderr",
                stream=True,
                follow=True,
                since=since,
            )
        except (
            docker_engine.requests.RequestException,
            docker_engine.docker.errors.APIError,
        ) as exc:
            log.warning("no %s from container %s: %s", kind, handle.name, short(exc))
            return
        handle.streams.append(stream)
        _copy(stream, path)

    def _settle(self, handle: DockerHandle, status_code: int | None) -> ExitResult | None:
        """Record how the container ended (once), from its inspected state."""
        with handle.lock:
            if handle.result is not None:
                return handle.result
            state = {}
            try:
                state = self._engine.client().api.inspect_container(handle.container_id)["State"]
            except (
                DriverError,
                docker_engine.requests.RequestException,
                docker_engine.docker.errors.APIError,
            ):
                pass
            if state.get("Running"):
                return None
            code = state.get("ExitCode", status_code)
            if code is None:
                return None
            oom = bool(state.get("OOMKilled"))
            error = state.get("Error") or None
            if oom:
                error = oom_error(handle.memory_mb)
            handle.result = ExitResult(exit_code=code, oom_killed=oom, error=error)
            return handle.result

    def _remove(self, client, container: str, handle: DockerHandle | None = None) -> None:
        if handle is not None:
            # Once the container stopped the follow streams end by themselves;
            # wait for them so every line is in the files before we report.
            for thread in handle.pumps:
                thread.join(LOG_DRAIN)
            for stream in handle.streams:
                _close(stream)
        self._engine.remove(client, container)


def _copy(stream, path: str) -> None:
    """Append a container's output stream to a log file until it ends."""
    try:
        with open(path, "ab") as out:
            for chunk in stream:
                out.write(chunk)
                out.flush()
    except Exception as exc:  # the engine went away, or the file did
        log.debug("log stream to %s ended: %s", path, exc)


def _close(stream) -> None:
    try:
        stream.close()
    except Exception:
        pass


def _mtime(path: str) -> float | None:
    try:
        return os.path.getmtime(path)
    except OSError:
        return None
