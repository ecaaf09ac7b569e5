"""Task drivers and the one place that picks a driver for a task."""

from __future__ import annotations

from orch.agent.drivers.base import Driver
from orch.agent.drivers.docker import DockerDriver
from orch.agent.drivers.docker_config import publish_ip
from orch.agent.drivers.exec import ExecDriver
from orch.errors import DriverError
from orch.structs import Task

DOCKER_FALLBACK = "docker unavailable on this node: running command with the exec driver (fallback)"
DOCKER_NO_COMMAND = "docker driver unavailable and task has no command to fall back on"


def default_drivers(
    task_user: str | None = None, state_dir: str | None = None, bind: str = "127.0.0.1"
) -> dict[str, Driver]:
    """The drivers this node runs, by name; docker answers for its engine.

    `state_dir` (the agent's data dir) names the exec tasks' supervisor, so
    that a restarted agent finds it; docker publishes task ports on `bind`,
    the agent's own address. Raises DriverError when `task_user` does not
    exist.
    """
    return {
        "exec": ExecDriver(user=task_user, state_dir=state_dir),
        "docker": DockerDriver(host_ip=publish_ip(bind)),
    }


def select_driver(task: Task, drivers: dict[str, Driver]) -> tuple[Driver, str | None]:
    """The driver for a task and a note for its events; raises DriverError."""
    driver = drivers.get(task.driver)
    if driver is not None and driver.available():
        return driver, None
    if task.driver == "docker":
        if task.config.get("command") and "exec" in drivers:
            return drivers["exec"], DOCKER_FALLBACK
        reason = driver.unavailable_reason() if driver is not None else ""
        raise DriverError(f"{DOCKER_NO_COMMAND}: {reason}" if reason else DOCKER_NO_COMMAND)
    raise DriverError(f"driver {task.driver} unavailable on this node")
