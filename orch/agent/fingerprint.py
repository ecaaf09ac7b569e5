"""What this node offers: total CPU (MHz) and memory (MB), and its attributes."""

from __future__ import annotations

import logging
import platform
import socket
from dataclasses import dataclass, field

import psutil

from orch.agent.drivers.base import Driver
from orch.structs import Resources

log = logging.getLogger(__name__)

FALLBACK_MHZ = 1000.0  # per core, when the frequency cannot be read
CPUINFO = "/proc/cpuinfo"


@dataclass(frozen=True)
class Fingerprint:
    resources: Resources
    attributes: dict = field(default_factory=dict)


def fingerprint(drivers: dict[str, Driver], *, cpuinfo: str = CPUINFO) -> Fingerprint:
    """Measure the node at register time (drivers again with refresh_drivers)."""
    cores = psutil.cpu_count(logical=True) or 1
    mhz = cpu_mhz(cpuinfo)
    memory_mb = psutil.virtual_memory().total // (1024 * 1024)
    attributes = {
        "os": platform.system().lower(),
        "arch": platform.machine(),
        "hostname": socket.gethostname(),
        "cpu.cores": cores,
        "cpu.frequency": int(mhz),
        "kernel.version": platform.release(),
        "driver.exec": False,
        "driver.docker": False,
    }
    for driver in drivers.values():
        attributes.update(driver.fingerprint())
    return Fingerprint(Resources(cpu=int(cores * mhz), memory=int(memory_mb)), attributes)


def refresh_drivers(fp: Fingerprint, drivers: dict[str, Driver]) -> Fingerprint:
    """The same node with its driver attributes measured again (engine up/down)."""
    attributes = dict(fp.attributes)
    for driver in drivers.values():
        attributes.update(driver.fingerprint())
    if attributes == fp.attributes:
        return fp
    return Fingerprint(fp.resources, attributes)


def cpu_mhz(cpuinfo: str = CPUINFO) -> float:
    """Per-core MHz: /proc/cpuinfo, then psutil (max, then current), then 1000."""
    mhz = _cpuinfo_mhz(cpuinfo)
    if mhz:
        return mhz
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, AttributeError):
        freq = None
    if freq is not None:
        if freq.max and freq.max > 0:
            return float(freq.max)
        if freq.current and freq.current > 0:
            return float(freq.current)
    return FALLBACK_MHZ


def _cpuinfo_mhz(path: str) -> float | None:
    """The highest "cpu MHz" line in /proc/cpuinfo, None when absent."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return None
    values = []
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip() == "cpu MHz":
            try:
                values.append(float(value.strip()))
            except ValueError:
                continue
    best = max(values, default=0.0)
    return best if best > 0 else None
