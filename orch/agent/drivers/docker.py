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

The engine is found as the docker CLI finds it (DOCKER_HOST, DOCKER_TLS_*).
Whether it answers is probed with a short timeout and cached, so that
`select_driver` and the fingerprint never block a heartbeat. The probe is a
bare `GET /_ping` (orch.transport, over the unix socket or plain tcp); the SDK
(with requests) is imported only when a docker task starts or is recovered,
or for the probe of a TLS or ssh engine.
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
from typing import Any

from orch.agent.drivers.base import Driver, ExitResult, TaskContext, oom_error
from orch.agent.drivers.cgroups import cpu_shares  # noqa: F401 (part of this API)
from orch.errors import DriverError
from orch.transport import HttpClient


class _NeverRaised(Exception):
    """Stands for the SDK's exceptions until it is imported: no call raises it."""


class _Errors:
    NotFound = ImageNotFound = APIError = _NeverRaised


class _Unloaded:
    """`docker` and `requests` until a task needs the SDK (see `_load_sdk`)."""

    errors = _Errors
    RequestException = _NeverRaised


# The SDK (with requests and urllib3) costs the agent ~10 MB: it is imported
# when a docker task starts or is recovered, not for the engine probe.
# Any: they hold the stand-ins above or the modules, and the SDK ships no types.
docker: Any = _Unloaded
requests: Any = _Unloaded
_create_container_args: Any = None
_sdk_lock = threading.Lock()

log = logging.getLogger(__name__)

DEFAULT_HOST = "unix:///var/run/docker.sock"
DEFAULT_HOST_IP = "127.0.0.1"  # task ports are published here unless told otherwise
LABEL_JOB, LABEL_ALLOC, LABEL_TASK = "orch.job_id", "orch.alloc_id", "orch.task"
LABEL_ATTEMPT = "orch.attempt"
PING_TIMEOUT = 1.0  # seconds: the engine probe must not slow a heartbeat
AVAILABLE_TTL = 5.0  # seconds a probe result is trusted by select_driver
API_TIMEOUT = 60.0  # create/start/inspect/remove calls
PULL_TIMEOUT = 30.0  # an image pull; no registry may be reachable at all
LOG_DRAIN = 2.0  # after exit, how long the log pumps may take to finish
WAIT_RETRY = 1.0  # engine hiccup while waiting: try again after this
POOL_SIZE = 64  # each task holds a wait and two log streams
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
        self._environment = environment
        self._host_ip = host_ip  # where task ports are published
        self._ping_timeout, self._api_timeout = ping_timeout, api_timeout
        self._pull_timeout, self._ttl, self._now = pull_timeout, available_ttl, now
        self._lock = threading.Lock()
        # docker.DockerClient instances (untyped SDK), made on first use.
        self._probe_client: Any = None
        self._client: Any = None
        self._api_version: str | None = None
        self._available = False
        self._checked_at: float | None = None
        self._reason = "docker engine not probed yet"
        self._images: set[str] = set()  # known to be present on the engine

    # -- engine availability ----------------------------------------------

    def probe(self) -> bool:
        """Ping the engine now (short timeout); updates the cached answer."""
        with self._lock:
            ok, reason = self._ping()
            if ok != self._available:
                log.info(
                    "docker engine %s%s",
                    "available" if ok else "unavailable",
                    "" if ok else f": {reason}",
                )
            self._available, self._reason = ok, reason
            self._checked_at = self._now()
            if not ok:
                self._probe_client = self._client = None
                self._images.clear()  # the next engine may hold other images
            return ok

    def available(self) -> bool:
        checked = self._checked_at
        if checked is None or self._now() - checked > self._ttl:
            return self.probe()
        return self._available

    def unavailable_reason(self) -> str:
        return "" if self._available else self._reason

    def fingerprint(self) -> dict:
        return {"driver.docker": self.probe()}

    def _ping(self) -> tuple[bool, str]:
        if not sdk_installed():
            return False, "the docker python package is not installed"
        env = self._env()
        host = env.get("DOCKER_HOST") or "the default socket"
        try:
            version = ping_engine(env, self._ping_timeout)
            if version is _NEEDS_SDK:  # ssh://, TLS: the SDK's own transports
                version = self._sdk_ping()
            self._api_version = version or self._api_version
            return True, ""
        except Exception as exc:  # noqa: BLE001 - any failure means "no engine here"
            return False, f"docker engine not reachable at {host}: {_short(exc)}"

    def _sdk_ping(self) -> str:
        _load_sdk()
        if self._probe_client is None:
            # Creating a client asks the engine its API version: a ping.
            self._probe_client = self._from_env(self._ping_timeout, None)
        else:
            self._probe_client.ping()
        return self._probe_client.api.api_version

    def _env(self) -> dict:
        return self._environment if self._environment is not None else dict(os.environ)

    def _from_env(self, timeout: float, version: str | None):
        return docker.from_env(
            timeout=timeout, version=version, max_pool_size=POOL_SIZE, environment=self._env()
        )

    def client(self):
        """The engine client for task work; raises DriverError if none answers."""
        try:
            _load_sdk()
        except ImportError as exc:
            raise DriverError(
                f"docker engine unavailable: the docker python package cannot be imported: {exc}"
            ) from exc
        with self._lock:
            if self._client is not None:
                return self._client
        if not self.probe():
            raise DriverError(f"docker engine unavailable: {self._reason}")
        with self._lock:
            if self._client is None:
                self._client = self._from_env(self._api_timeout, self._api_version)
            return self._client

    # -- the Driver interface ------------------------------------------------

    def start(self, ctx: TaskContext) -> DockerHandle:
        options = create_options(ctx, self._host_ip)
        client = self.client()
        self._ensure_image(client, options["image"])
        os.makedirs(os.path.dirname(ctx.stdout_path) or ".", exist_ok=True)
        os.makedirs(os.path.dirname(ctx.stderr_path) or ".", exist_ok=True)
        try:
            container_id = self._create(client, options)
        except DriverError:
            self._images.discard(options["image"])  # it may have been removed
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
            container_id = self._create(client, options)
            if container_id is None:
                raise DriverError(
                    f"failed to create container {options['name']}: the name stays taken"
                )
        try:
            client.api.start(container_id)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the container must not linger
            self._remove(client, container_id)
            raise DriverError(
                f"failed to start container {options['name']}: {_short(exc)}"
            ) from exc
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
            client = self.client()
            status = client.api.wait(handle.container_id, timeout=timeout)
        except DriverError:
            time.sleep(WAIT_RETRY if timeout is None else min(timeout, WAIT_RETRY))
            return None
        except docker.errors.NotFound:
            return self._settle(handle, None) or ExitResult(
                exit_code=None, error=f"container {handle.name} disappeared"
            )
        except (requests.RequestException, docker.errors.APIError) as exc:
            if timeout is None:  # the engine hiccuped: the runner asks again
                log.warning("waiting for container %s failed: %s", handle.name, _short(exc))
                time.sleep(WAIT_RETRY)
            return None
        result = self._settle(handle, status.get("StatusCode"))
        self._remove(client, handle.container_id, handle)
        return result

    def stop(self, handle: DockerHandle, timeout: float) -> None:
        try:
            client = self.client()
        except DriverError as exc:
            log.warning("cannot stop container %s: %s", handle.name, exc.message)
            return
        try:
            client.api.stop(handle.container_id, timeout=max(0, math.ceil(timeout)))
        except docker.errors.NotFound:
            pass
        except (requests.RequestException, docker.errors.APIError) as exc:
            log.warning(
                "stopping container %s failed: %s; removing it by force", handle.name, _short(exc)
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
        info = self._inspect(container_id)
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
        info = self._inspect(container_name(ctx.alloc_id, ctx.task_name))
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
                self.client().api.start(info["Id"])
            except (DriverError, requests.RequestException, docker.errors.APIError) as exc:
                log.warning("cannot start container %s: %s", info["Id"][:12], _short(exc))
                return None
        return self._attach(info, ctx.stdout_path, ctx.stderr_path, ctx.resources.memory)

    def _inspect(self, container: str) -> dict | None:
        try:
            return self.client().api.inspect_container(container)
        except (DriverError, docker.errors.NotFound):
            return None
        except (requests.RequestException, docker.errors.APIError) as exc:
            log.warning("cannot inspect container %s: %s", container[:12], _short(exc))
            return None

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
        self._pump_logs(self.client(), handle, since=_mtime(handle.stdout_path))
        return handle

    # -- helpers ---------------------------------------------------------------

    def _ensure_image(self, client, image: str) -> None:
        """The image is local, or is pulled now; else the task fails saying so."""
        if image in self._images:  # seen before: one inspect per image, not per task
            return
        try:
            client.images.get(image)
            self._images.add(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except (requests.RequestException, docker.errors.APIError) as exc:
            raise DriverError(f"cannot inspect image {image}: {_short(exc)}") from exc
        repository, tag = docker.utils.parse_repository_tag(image)
        try:
            puller = self._from_env(self._pull_timeout, self._api_version)
            try:
                puller.images.pull(repository, tag=tag or "latest")
            finally:
                puller.close()
            self._images.add(image)
        except Exception as exc:  # noqa: BLE001 - the task fails with the pull's reason, whatever it is
            raise DriverError(
                f"image {image} not found locally and pull failed: {_short(exc)}"
            ) from exc

    def _create(self, client, options: dict) -> str | None:
        """Create the container and return its id; None when the name is taken."""
        # The SDK's own translation of run-style options, without the inspect
        # that `containers.create` adds: one engine call per container start.
        args = _create_container_args({**options, "version": client.api._version})
        try:
            return client.api.create_container(**args)["Id"]
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                return None
            raise DriverError(
                f"failed to create container {options['name']}: {_short(exc)}"
            ) from exc
        except requests.RequestException as exc:
            raise DriverError(
                f"failed to create container {options['name']}: {_short(exc)}"
            ) from exc

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
        except (requests.RequestException, docker.errors.APIError) as exc:
            log.warning("no %s from container %s: %s", kind, handle.name, _short(exc))
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
                state = self.client().api.inspect_container(handle.container_id)["State"]
            except (DriverError, requests.RequestException, docker.errors.APIError):
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
        try:
            client.api.remove_container(container, force=True)
        except docker.errors.NotFound:
            pass
        except (requests.RequestException, docker.errors.APIError) as exc:
            if getattr(exc, "status_code", None) != 409:  # removal in progress
                log.warning("cannot remove container %s: %s", container, _short(exc))


_NEEDS_SDK = object()


def sdk_installed() -> bool:
    if docker is not _Unloaded:
        return True
    import importlib.util

    try:
        return importlib.util.find_spec("docker") is not None
    except (ImportError, ValueError):
        return False


def _load_sdk() -> None:
    """Import the docker SDK (once); raises ImportError when it is not installed."""
    global docker, requests, _create_container_args
    if docker is not _Unloaded:
        return
    with _sdk_lock:
        if docker is not _Unloaded:
            return
        import docker as sdk
        import docker.errors  # noqa: F401
        import docker.utils  # noqa: F401
        import requests as http
        from docker.models.containers import _create_container_args as create_args

        _create_container_args = create_args
        requests = http
        docker = sdk


def ping_engine(env: dict, timeout: float):
    """`GET /_ping` on the engine DOCKER_HOST names: its API version ("" if unsaid).

    Plain unix sockets and tcp only: for TLS or ssh, `_NEEDS_SDK`. Raises
    OSError or http.client.HTTPException when the engine does not answer OK.
    """
    host = env.get("DOCKER_HOST") or DEFAULT_HOST
    if host.startswith("unix://"):
        client, url = (
            HttpClient(timeout=timeout, unix_socket=host[len("unix://") :], keep_alive=False),
            "http://localhost/_ping",
        )
    elif host.startswith(("tcp://", "http://")) and not (
        env.get("DOCKER_TLS_VERIFY") or env.get("DOCKER_CERT_PATH")
    ):
        address = host.split("://", 1)[1].split("/", 1)[0]
        if not address.rpartition(":")[0]:
            address += ":2375"
        client, url = HttpClient(timeout=timeout, keep_alive=False), f"http://{address}/_ping"
    else:
        return _NEEDS_SDK
    try:
        resp = client.get(url)
    finally:
        client.close()
    if resp.status_code != 200:
        raise OSError(
            f"engine answered /_ping with {resp.status_code}: "
            f"{resp.content[:64].decode(errors='replace')}"
        )
    return resp.headers.get("Api-Version") or ""


def _copy(stream, path: str) -> None:
    """Append a container's output stream to a log file until it ends."""
    try:
        with open(path, "ab") as out:
            for chunk in stream:
                out.write(chunk)
                out.flush()
    except Exception as exc:  # noqa: BLE001 - a log thread ends quietly: the engine or file went away
        log.debug("log stream to %s ended: %s", path, exc)


def _close(stream) -> None:
    try:
        stream.close()
    except Exception:  # noqa: BLE001 - best effort: the stream may already be broken
        pass


def _mtime(path: str) -> float | None:
    try:
        return os.path.getmtime(path)
    except OSError:
        return None


def _short(exc: BaseException) -> str:
    """One line of an engine error: docker's explanation when it has one."""
    explanation = getattr(exc, "explanation", None)
    text = explanation if isinstance(explanation, str) and explanation else str(exc)
    return " ".join(text.split())[:300] or exc.__class__.__name__
