"""How a task is stopped: task ``kill_signal``/``kill_timeout``, group ``shutdown_delay``.

As Nomad's: the allocation leaves the service catalog, waits
``shutdown_delay``, sends ``kill_signal`` to its tasks and, after
``kill_timeout``, SIGKILL. Absent fields keep the agent's defaults
(SIGTERM, its ``kill_timeout``), so a job without them stops as before.
"""

from __future__ import annotations

import signal

from orch.validation import fields
from orch.validation.fields import fail

# Signals a task may ask for; SIGKILL and SIGSTOP are not graceful.
KILL_SIGNALS = (
    "SIGTERM",
    "SIGINT",
    "SIGQUIT",
    "SIGHUP",
    "SIGUSR1",
    "SIGUSR2",
    "SIGWINCH",
    "SIGABRT",
    "SIGALRM",
)
DEFAULT_KILL_SIGNAL = "SIGTERM"
MAX_KILL_TIMEOUT = 600.0  # 10m: longer would hold an agent's shutdown hostage
MAX_SHUTDOWN_DELAY = 600.0


def kill_signal(value, path: str) -> str | None:
    """A signal name from KILL_SIGNALS ("SIGINT" or "INT"); None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name in KILL_SIGNALS:
            return name
    fail(path, f"must be one of {', '.join(KILL_SIGNALS)}")


def kill_timeout(value, path: str) -> float | None:
    """Seconds between kill_signal and SIGKILL (0..10m); None when absent."""
    return _bounded(value, path, MAX_KILL_TIMEOUT)


def shutdown_delay(value, path: str) -> float:
    """Seconds between leaving the catalog and kill_signal (0..10m); 0 when absent."""
    return _bounded(value, path, MAX_SHUTDOWN_DELAY) or 0.0


def _bounded(value, path: str, maximum: float) -> float | None:
    if value is None:
        return None
    seconds = fields.duration(value, path)
    if not 0 <= seconds <= maximum:
        fail(path, f"must be from 0 to {maximum / 60:g}m")
    return seconds


def signal_number(name: str | None) -> int:
    """The signal to send for a task's kill_signal (SIGTERM when unset)."""
    return int(getattr(signal, name or DEFAULT_KILL_SIGNAL))
