"""The docker driver: one container per task, through the `docker` package.

A task's container is named `orch-<alloc id>-<task>` and labelled with
`orch.job_id`, `orch.alloc_id`, `orch.task` and `orch.attempt` (which start of
the task it is), so that a restarted agent (or a test's cleanup) finds it
again, also one it started but had not saved the handle of. How the task's
`config` and resources become the container's options is `docker_config.py`.
Output is streamed into the same per-task log files as the exec driver's.

The engine (found as the docker CLI finds it, probed and cached, the SDK
imported only when a task needs it) is `docker_engine.py`.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from orch.agent.drivers import docker_engine
from orch.agent.drivers.base import Driver, ExitResult, TaskContext, oom_error
from orch.agent.drivers.docker_config import (
    DEFAULT_HOST_IP,
    LABEL_ALLOC,
    LABEL_ATTEMPT,
    LABEL_TASK,
    container_name,
    create_options,
)
from orch.agent.drivers.docker_engine import Engine, short
from orch.errors import DriverError

log = logging.getLogger(__name__)

LOG_DRAIN = 2.0  # after exit, how long the log pumps may take to finish
WAIT_RETRY = 1.0  # engine hiccup while waiting: try again after this


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


class DockerDriver(Driver):
    """Runs tasks as containers on the engine DOCKER_HOST names (or the default)."""

    name = "docker"

    def __init__(self, *, host_ip: str = DEFAULT_HOST_IP, **engine_options: Any):
        """``engine_options``: Engine's keywords (environment, timeouts, now)."""
        self._host_ip = host_ip  # where task ports are published
        self._engine = Engine(**engine_options)

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
        if ctx.task_dir:
            os.makedirs(ctx.task_dir, exist_ok=True)  # mounted at /local
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
        except Exception as exc:  # noqa: BLE001 - whatever failed, the container must not linger
            self._remove(client, container_id)
            raise DriverError(f"failed to start container {options['name']}: {short(exc)}") from exc
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

    def stop(self, handle: DockerHandle, timeout: float, sig: int = signal.SIGTERM) -> None:
        try:
            client = self._engine.client()
        except DriverError as exc:
            log.warning("cannot stop container %s: %s", handle.name, exc.message)
            return
        try:
            grace = max(0, math.ceil(timeout))
            if sig != signal.SIGTERM:
                # The engine's stop sends the image's StopSignal: another
                # signal goes by kill and our own wait; then stop kills at once.
                self._signal_and_wait(client, handle, sig, timeout)
                grace = 0
            client.api.stop(handle.container_id, timeout=grace)
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

    def _signal_and_wait(self, client, handle: DockerHandle, sig: int, timeout: float) -> None:
        """Send `sig` to the container; wait up to `timeout` for it to exit."""
        client.api.kill(handle.container_id, signal=signal.Signals(sig).name)
        try:
            client.api.wait(handle.container_id, timeout=max(1, math.ceil(timeout)))
        except docker_engine.requests.RequestException:
            log.info(
                "container %s ignored %s for %.1fs: killing it",
                handle.name,
                signal.Signals(sig).name,
                timeout,
            )

    def stats(self, handle: DockerHandle) -> dict | None:
        """The engine's one-shot stats of the task's container (None: unavailable)."""
        return self._engine.stats(handle.container_id)

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
