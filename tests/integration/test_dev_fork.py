"""`orch dev` forks its server and agents from the launcher (orch/dev/zygote.py).

Real zipapp processes. Each forked child must be what ``python3 -S orch.pyz
<role> ...`` was when it was exec'ed: a process of its own in a session of its
own, its own node id, secret and data-dir lock, its role on its command line,
none of the launcher's descriptors; a Ctrl-C (SIGINT to the launcher's process
group, as a terminal sends it) or a ``kill -9`` of the launcher leaves nothing
behind, and the exec path stays available.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
import requests

from harness import START_TIMEOUT, Proc, free_port, pid_alive, wait_until

pytestmark = [pytest.mark.timeout(180)]


def start_dev(tmp: Path, data: Path, name: str, agents: int = 3, env=None) -> tuple[Proc, str]:
    port = free_port()
    args = ["dev", "--agents", str(agents), "--port", str(port), "--data-dir", str(data)]
    args += ["--heartbeat-interval", "0.5"]
    proc = Proc(args, tmp / f"{name}.log", env=env)
    proc.wait_for_output(rf"{agents} nodes healthy in", START_TIMEOUT, stream="stdout")
    return proc, f"http://127.0.0.1:{port}"


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def children_by_role(dev: Proc) -> dict[str, list[int]]:
    """The launcher's children by the role their command line names."""
    roles: dict[str, list[int]] = {}
    for child in psutil.Process(dev.pid).children():
        raw = cmdline(child.pid).rstrip(b"\0")
        words = raw.replace(b"\0", b" ").decode().split(" ")
        assert words[1] == "-S" and words[2].endswith(".pyz"), words
        roles.setdefault(words[3], []).append(child.pid)
    return roles


def open_paths(pid: int) -> set[str]:
    fds = Path(f"/proc/{pid}/fd")
    out = set()
    for fd in fds.iterdir():
        try:
            out.add(os.readlink(fd))
        except OSError:
            pass
    return out


def all_gone(pids) -> bool:
    return not any(pid_alive(pid) for pid in pids)


def test_forked_children_are_separate_processes_and_ctrl_c_leaves_nothing(tmp_path, pyz):
    data = tmp_path / "dev"
    dev, url = start_dev(tmp_path, data, "dev")
    try:
        # Re-run under -S before any import: the children carry no site-packages.
        assert b"-S" in cmdline(dev.pid).split(b"\0")
        roles = children_by_role(dev)
        assert len(roles["server"]) == 1 and len(roles["agent"]) == 3, roles
        pids = roles["server"] + roles["agent"]
        for pid in pids:
            # Forked: the command line was rewritten in place, one string.
            assert b"\0" not in cmdline(pid).rstrip(b"\0")
            assert os.getsid(pid) == pid != os.getsid(dev.pid)
            assert psutil.Process(pid).ppid() == dev.pid
            assert str(data / "orch.lock") not in open_paths(pid)
        dirs = [data / "server", *(data / f"agent-{i}" for i in (1, 2, 3))]
        holders = [int((d / "orch.lock").read_text()) for d in dirs]
        assert sorted(holders) == sorted(pids)
        assert int((data / "orch.lock").read_text()) == dev.pid
        agent_dirs = dirs[1:]
        assert len({(d / "node_id").read_text() for d in agent_dirs}) == 3
        assert len({(d / "node_secret").read_text() for d in agent_dirs}) == 3
        nodes = requests.get(f"{url}/nodes", timeout=5).json()["nodes"]
        assert len({n["node_id"] for n in nodes}) == 3

        pid_file = tmp_path / "task.pid"
        job = {
            "job_id": "held",
            "task_groups": [
                {
                    "name": "g",
                    "tasks": [
                        {
                            "name": "t",
                            "config": {"command": f"echo $$ > {pid_file}; exec sleep 300"},
                        }
                    ],
                }
            ],
        }
        assert requests.post(f"{url}/jobs", json=job, timeout=5).ok
        task = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip()))
        supervisors = [p.pid for a in roles["agent"] for p in psutil.Process(a).children()]

        os.killpg(dev.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
        assert dev.wait(START_TIMEOUT) == 0, dev.log()[-3000:]
        wait_until(lambda: all_gone([*pids, task, *supervisors]), 15, what="every process gone")
        assert "stopping agents, then the server" in dev.stdout()
    finally:
        dev.cleanup()


def test_killing_the_launcher_ends_its_children_and_the_data_dir_starts_again(tmp_path, pyz):
    data = tmp_path / "dev"
    first, url = start_dev(tmp_path, data, "first", agents=2)
    try:
        roles = children_by_role(first)
        pids = roles["server"] + roles["agent"]
        nodes = {n["node_id"] for n in requests.get(f"{url}/nodes", timeout=5).json()["nodes"]}
        first.kill9()
        # PDEATHSIG: each child gets SIGTERM when the launcher dies; their
        # locks, and the launcher's, go with them.
        wait_until(lambda: all_gone(pids), 30, what="the children to exit")
        second, url = start_dev(tmp_path, data, "second", agents=2)
        try:
            again = requests.get(f"{url}/nodes", timeout=5).json()["nodes"]
            assert {n["node_id"] for n in again} == nodes  # kept in the agents' data dirs
            assert int((data / "orch.lock").read_text()) == second.pid
        finally:
            second.cleanup()
    finally:
        first.cleanup()


def test_the_exec_path_stays_available(tmp_path, pyz):
    dev, _ = start_dev(tmp_path, tmp_path / "dev", "dev", agents=1, env={"ORCH_DEV_SPAWN": "exec"})
    try:
        roles = children_by_role(dev)
        assert len(roles["server"]) == 1 and len(roles["agent"]) == 1, roles
        for pid in roles["server"] + roles["agent"]:
            assert cmdline(pid).count(b"\0") > 3  # exec'ed: one string per argument
    finally:
        dev.cleanup()
