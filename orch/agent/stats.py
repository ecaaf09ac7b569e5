"""Measured resource use of an allocation's tasks, taken when asked.

As Nomad's client stats endpoint: measured on demand (a UI page, a CLI
call), never carried in heartbeats. An exec task is its process tree (RSS
summed, CPU from two samples SAMPLE_S apart); a docker task is the engine's
one-shot stats. A task with no running process reports zeros.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import psutil

from orch.agent.drivers import procs
from orch.agent.drivers.docker import DockerDriver, DockerHandle
from orch.agent.drivers.exec import ExecHandle

if TYPE_CHECKING:
    from orch.agent.allocrunner import AllocRunner

log = logging.getLogger(__name__)

SAMPLE_S = 0.1  # between the two CPU samples of exec tasks (all tasks share one wait)
MB = 1024 * 1024


def idle() -> dict:
    """The figures of a task with nothing running."""
    return {"memory_rss_mb": 0.0, "cpu_percent": 0.0, "pids": 0}


def alloc_stats(alloc: AllocRunner) -> dict:
    """{"tasks": {name: figures}, "total": figures, "time": t} measured now."""
    live = {name: runner.live_handle() for name, runner in alloc.tasks.items()}
    tasks: dict[str, dict] = {name: idle() for name in live}
    trees: dict[str, list[psutil.Process]] = {}
    for name, found in live.items():
        if found is None:
            continue
        driver, handle = found
        if isinstance(handle, ExecHandle):
            trees[name] = _tree(handle.pid)
        elif isinstance(handle, DockerHandle) and isinstance(driver, DockerDriver):
            tasks[name] = docker_figures(driver.stats(handle))
    if trees:
        tasks.update(_measure_trees(trees))
    return {"tasks": tasks, "total": _total(tasks.values()), "time": time.time()}


def _tree(pid: int) -> list[psutil.Process]:
    """The task's leader and everything below it (gone: empty)."""
    try:
        leader = psutil.Process(pid)
    except psutil.Error:
        return []
    return [leader, *procs.descendants(pid)]


def _cpu_seconds(proc: psutil.Process) -> float | None:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return None  # ended between listing and reading
    return times.user + times.system


def _measure_trees(trees: dict[str, list[psutil.Process]]) -> dict[str, dict]:
    """Every tree's RSS now and CPU percent over SAMPLE_S, with one shared wait."""
    first = {name: [_cpu_seconds(p) for p in tree] for name, tree in trees.items()}
    started = time.monotonic()
    time.sleep(SAMPLE_S)
    elapsed = max(time.monotonic() - started, 1e-3)
    out = {}
    for name, tree in trees.items():
        rss, cpu, pids = 0, 0.0, 0
        for proc, before in zip(tree, first[name], strict=True):
            after = _cpu_seconds(proc)
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                rss += proc.memory_info().rss
            except psutil.Error:
                continue
            pids += 1
            if before is not None and after is not None:
                cpu += max(after - before, 0.0)
        out[name] = {
            "memory_rss_mb": round(rss / MB, 2),
            "cpu_percent": round(100.0 * cpu / elapsed, 1),
            "pids": pids,
        }
    return out


def docker_figures(raw: Any) -> dict:
    """Figures from the engine's one-shot stats (a malformed answer: zeros)."""
    if not isinstance(raw, dict):
        return idle()
    try:
        mem = raw.get("memory_stats") or {}
        cpu, pre = raw.get("cpu_stats") or {}, raw.get("precpu_stats") or {}
        used = (cpu.get("cpu_usage") or {}).get("total_usage", 0)
        used -= (pre.get("cpu_usage") or {}).get("total_usage", 0)
        system = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
        cores = cpu.get("online_cpus") or 1
        percent = 100.0 * used / system * cores if used > 0 and system > 0 else 0.0
        return {
            "memory_rss_mb": round(float(mem.get("usage") or 0) / MB, 2),
            "cpu_percent": round(percent, 1),
            "pids": int((raw.get("pids_stats") or {}).get("current") or 0),
        }
    except (TypeError, ValueError, AttributeError) as exc:
        log.warning("unreadable container stats: %s", exc)
        return idle()


def _total(figures) -> dict:
    total = idle()
    for f in figures:
        total["memory_rss_mb"] = round(total["memory_rss_mb"] + f["memory_rss_mb"], 2)
        total["cpu_percent"] = round(total["cpu_percent"] + f["cpu_percent"], 1)
        total["pids"] += f["pids"]
    return total
