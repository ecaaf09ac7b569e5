"""Tasks an `orch dev` run leaves behind: found by their environment, killed.

An agent stops its tasks when it is told to stop, each within its own
kill_timeout; the launcher waits STOP_GRACE for the agents, then kills
them. A task with a longer kill_timeout (or one that ignores SIGTERM under
an agent killed meanwhile) outlived the cluster, running in a data dir
about to be removed. Each task carries ``ORCH_ALLOC_DIR`` under the run's
data dir in its environment, as do its children: those, and only those,
are this run's own.
"""

from __future__ import annotations

import os
import signal

import psutil


def tasks_left(data_dir: str) -> list[psutil.Process]:
    """This run's tasks (and their children) still alive: ours by their env."""
    root = os.path.abspath(data_dir) + os.sep
    uid = os.getuid()
    found = []
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.info["uids"] is None or proc.info["uids"].real != uid:
                continue
            alloc_dir = proc.environ().get("ORCH_ALLOC_DIR", "")
        except (psutil.Error, OSError):
            continue  # gone, or not ours to read
        if alloc_dir.startswith(root):
            found.append(proc)
    return found


def kill_tasks_left(data_dir: str) -> int:
    """SIGKILL every task of this run still alive; how many there were."""
    left = tasks_left(data_dir)
    for proc in left:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=2)
    return len(left)
