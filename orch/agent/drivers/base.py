"""The task driver interface: how the agent starts, watches and stops a task.

A driver owns one kind of process (a local process group, a container). Its
handle is opaque to the runner; the runner only passes it back to the driver.
"""

from __future__ import annotations

import abc
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orch.errors import DriverError
from orch.structs import Resources


@dataclass(frozen=True)
class TaskContext:
    """Everything a driver needs to start one task of one allocation."""

    alloc_id: str
    job_id: str
    task_name: str
    config: dict
    resources: Resources
    task_dir: str
    stdout_path: str
    stderr_path: str
    env: dict = field(default_factory=dict)  # ORCH_* variables set by the agent
    attempt: int = 0  # which start of the task this is (its restarts so far)
    # The allocation's reserved host ports: ({"label", "value", "to"}, ...).
    ports: tuple = ()


def oom_error(memory_mb: int) -> str:
    """A task's error when it was killed for its memory, naming the limit."""
    return f"OOM killed: memory limit {memory_mb} MB exceeded"


@dataclass(frozen=True)
class ExitResult:
    """How a task's process ended."""

    exit_code: int | None
    signal: int | None = None
    oom_killed: bool = False
    error: str | None = None
    # Nothing of the run was left when it ended (its cgroups were empty):
    # no process of it can still use the allocation's dirs.
    contained: bool = field(default=False, compare=False)

    @property
    def successful(self) -> bool:
        return self.exit_code == 0 and self.error is None

    def describe(self) -> str:
        """One line for the task's "Terminated" event."""
        parts = [f"Exit Code: {self.exit_code}"]
        if self.signal:
            parts.append(f"Signal: {self.signal}")
        if self.oom_killed:
            parts.append("OOM Killed: true")
        if self.error and self.exit_code is None:
            parts = [self.error]
        return ", ".join(parts)


class Driver(abc.ABC):
    """A task driver; one instance serves every task of its kind on the node."""

    name: str = ""
    # Does a task's exit outlive the agent (kept where `find` and `recover`
    # read it again, as the exec driver's run records)? Then an allocation
    # whose tasks completed need not be written at once: a restarted agent
    # learns how they ended from the driver.
    keeps_exits: bool = False
    # Can it start a task without a thread waiting on it (`start_notified`)?
    notifies: bool = False

    @abc.abstractmethod
    def start(self, ctx: TaskContext) -> Any:
        """Start the task without waiting for it; raises errors.DriverError."""

    def start_notified(
        self,
        ctx: TaskContext,
        on_started: Callable[[Any, DriverError | None], None],
        on_exit: Callable[[ExitResult], None],
    ) -> None:
        """Start the task and return: `on_started(handle, None)` (or `(None,
        error)`) and then `on_exit(result)` are called when that happens,
        never while a caller waits on them. Only where `notifies` is True."""
        raise NotImplementedError(f"the {self.name} driver does not notify")

    @abc.abstractmethod
    def wait(self, handle: Any, timeout: float | None) -> ExitResult | None:
        """Block until the task exits (None: forever); None if still running."""

    @abc.abstractmethod
    def stop(self, handle: Any, timeout: float, sig: int = signal.SIGTERM) -> None:
        """Send `sig`, SIGKILL after timeout seconds; returns once it is dead."""

    @abc.abstractmethod
    def handle_to_json(self, handle: Any) -> dict:
        """A JSON-able description of the handle, kept to reattach after a restart."""

    @abc.abstractmethod
    def recover(self, handle_json: dict) -> Any | None:
        """A handle for a task started by an earlier agent, None if it is gone."""

    def find(self, ctx: TaskContext) -> Any | None:
        """A handle for the task's process found by its name alone, if the driver can."""
        return None

    def was_started(self, ctx: TaskContext) -> bool:
        """Did this start (ctx.attempt) of the task happen, even if `find`
        finds nothing of it now (its process gone without a trace)?"""
        return False

    def available(self) -> bool:
        """Can it start tasks now? Cheap (cached); False sends docker tasks to exec."""
        return True

    def unavailable_reason(self) -> str:
        """Why available() is False, for the task's error; empty otherwise."""
        return ""

    def fingerprint(self) -> dict:
        """Node attributes this driver contributes, e.g. {"driver.exec": True}."""
        return {f"driver.{self.name}": True}

    def close(self) -> None:  # noqa: B027 - a hook: most drivers hold nothing to let go of
        """The agent is leaving: let go of what the driver holds (tasks run on)."""
