"""`orch dev` kills the tasks that outlived their agents (a kill_timeout past
its grace), and only those of its own run: found by their environment."""

from __future__ import annotations

import contextlib
import os
import subprocess

import psutil

from orch.dev.leftovers import kill_tasks_left, tasks_left

from waiting import wait_for


def sleeper(alloc_dir: str) -> subprocess.Popen:
    env = dict(os.environ, ORCH_ALLOC_DIR=alloc_dir)
    # A task in its own session, with a child of its own, as the supervisor starts them.
    return subprocess.Popen(["/bin/sh", "-c", "sleep 60 & wait"], env=env, start_new_session=True)


def test_only_the_runs_own_tasks_are_killed(tmp_path):
    run = tmp_path / "orch-dev-1"
    ours = sleeper(str(run / "agent-0" / "allocs" / "a1"))
    other = sleeper(str(tmp_path / "orch-dev-10" / "allocs" / "a1"))  # a prefix, not ours
    try:
        # The shell and its sleep, once the shell has started it.
        assert wait_for(lambda: len(tasks_left(str(run))) == 2)
        assert kill_tasks_left(str(run)) == 2
        assert not psutil.pid_exists(ours.pid)  # killed (and reaped by the wait)
        assert other.poll() is None
        assert kill_tasks_left(str(run)) == 0
    finally:
        for proc in (ours, other):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
