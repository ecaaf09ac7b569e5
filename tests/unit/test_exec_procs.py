"""orch.agent.drivers.procs: a process's create time as psutil gives it, read cheaply."""

import shutil
import subprocess

import psutil

from orch.agent.drivers import procs


def test_create_time_is_psutils_and_tells_a_process_from_a_later_one(tmp_path):
    # ") x (" in the name: the stat line's fields are counted after the last ")".
    program = tmp_path / "a) x (b"
    shutil.copy(shutil.which("sleep"), program)
    proc = subprocess.Popen([str(program), "30"])
    try:
        assert psutil.Process(proc.pid).name() == "a) x (b"
        ours = procs.create_time(proc.pid)
        assert ours is not None
        assert abs(ours - psutil.Process(proc.pid).create_time()) < 0.02
        assert procs.alive(proc.pid, ours)
        assert not procs.alive(proc.pid, ours - 5.0)  # another process with this pid
    finally:
        proc.kill()
        proc.wait()
    assert procs.create_time(proc.pid) is None  # gone (reaped)
