"""Access to the docker engine: the SDK loaded lazily, a cached probe, image and container calls.

The engine is found as the docker CLI finds it (DOCKER_HOST, DOCKER_TLS_*).
Whether it answers is probed with a short timeout and cached, so that
`select_driver` and the fingerprint never block a heartbeat. The probe is a
bare `GET /_ping` (orch.transport, over the unix socket or plain tcp); the SDK
(with requests) is imported only when a docker task starts or is recovered,
or for the probe of a TLS or ssh engine. The driver (`docker.py`) reads
`docker` and `requests` from this module at call time, as `_load_sdk`
rebinds them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

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
PING_TIMEOUT = 1.0  # seconds: the engine probe must not slow a heartbeat
AVAILABLE_TTL = 5.0  # seconds a probe result is trusted by select_driver
API_TIMEOUT = 60.0  # create/start/inspect/remove calls
PULL_TIMEOUT = 30.0  # an image pull; no registry may be reachable at all
POOL_SIZE = 64  # each task holds a wait and two log streams


class Engine:
    """One engine: whether it answers (cached), the SDK client, images known present."""

    def __init__(
        self,
        *,
        environment: dict | None = None,
        ping_timeout: float = PING_TIMEOUT,
        api_timeout: float = API_TIMEOUT,
        pull_timeout: float = PULL_TIMEOUT,
        available_ttl: float = AVAILABLE_TTL,
        now=time.monotonic,
    ):
        self._environment = environment
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
        self.images: set[str] = set()  # known to be present on the engine

    # -- availability ----------------------------------------------------------

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
                self.images.clear()  # the next engine may hold other images
            return ok

    def available(self) -> bool:
        """The cached answer while fresh, else a probe now."""
        checked = self._checked_at
        if checked is None or self._now() - checked > self._ttl:
            return self.probe()
        return self._available

    def unavailable_reason(self) -> str:
        return "" if self._available else self._reason

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
            return False, f"docker engine not reachable at {host}: {short(exc)}"

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

    # -- images and containers -----------------------------------------------------

    def ensure_image(self, client, image: str) -> None:
        """The image is local, or is pulled now; else the task fails saying so."""
        if image in self.images:  # seen before: one inspect per image, not per task
            return
        try:
            client.images.get(image)
            self.images.add(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except (requests.RequestException, docker.errors.APIError) as exc:
            raise DriverError(f"cannot inspect image {image}: {short(exc)}") from exc
        repository, tag = docker.utils.parse_repository_tag(image)
        try:
            puller = self._from_env(self._pull_timeout, self._api_version)
            try:
                puller.images.pull(repository, tag=tag or "latest")
            finally:
                puller.close()
            self.images.add(image)
        except Exception as exc:  # noqa: BLE001 - the task fails with the pull's reason, whatever it is
            raise DriverError(
                f"image {image} not found locally and pull failed: {short(exc)}"
            ) from exc

    def create(self, client, options: dict) -> str | None:
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
                f"failed to create container {options['name']}: {short(exc)}"
            ) from exc
        except requests.RequestException as exc:
            raise DriverError(
                f"failed to create container {options['name']}: {short(exc)}"
            ) from exc

    def inspect(self, container: str) -> dict | None:
        """The container's inspected state; None if it is gone or the engine is."""
        try:
            return self.client().api.inspect_container(container)
        except (DriverError, docker.errors.NotFound):
            return None
        except (requests.RequestException, docker.errors.APIError) as exc:
            log.warning("cannot inspect container %s: %s", container[:12], short(exc))
            return None

    def stats(self, container: str) -> dict | None:
        """The engine's one-shot stats of the container; None if it or the engine is gone."""
        try:
            return self.client().api.stats(container, stream=False)
        except (DriverError, docker.errors.NotFound):
            return None
        except (requests.RequestException, docker.errors.APIError) as exc:
            log.warning("cannot read stats of container %s: %s", container[:12], short(exc))
            return None

    def remove(self, client, container: str) -> None:
        """Remove the container by force; one already gone (or going) is fine."""
        try:
            client.api.remove_container(container, force=True)
        except docker.errors.NotFound:
            pass
        except (requests.RequestException, docker.errors.APIError) as exc:
            if getattr(exc, "status_code", None) != 409:  # removal in progress
                log.warning("cannot remove container %s: %s", container, short(exc))


_NEEDS_SDK = object()


def sdk_installed() -> bool:
    """Is the docker SDK importable (without importing it)?"""
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


def short(exc: BaseException) -> str:
    """One line of an engine error: docker's explanation when it has one."""
    explanation = getattr(exc, "explanation", None)
    text = explanation if isinstance(explanation, str) and explanation else str(exc)
    return " ".join(text.split())[:300] or exc.__class__.__name__
