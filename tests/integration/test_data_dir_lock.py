"""One process per data dir: a second server, agent or `orch dev` on it exits at once.

Real zipapp processes. The first holds an flock on ``<data dir>/orch.lock``
(its PID written in it); the second exits non-zero naming the dir and that
PID. After ``kill -9`` of the holder nothing stale is left: the kernel freed
the lock, and a new process on the dir starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from harness import START_TIMEOUT, GiveUp, Proc, free_port, wait_until

pytestmark = [pytest.mark.timeout(180)]


def start_server(tmp: Path, data_dir: Path, name: str) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(["server", "--port", str(port), "--data-dir", str(data_dir)], tmp / f"{name}.log")
    url = f"http://127.0.0.1:{port}"

    def up():
        if not proc.alive():
            raise GiveUp(f"{name} exited:\n{proc.log()[-3000:]}")
        try:
            return requests.get(f"{url}/health", timeout=1).ok
        except requests.RequestException:
            return False

    wait_until(up, START_TIMEOUT, what=f"{name} /health")
    return proc, url


def refused(proc: Proc, data_dir: Path, holder: Proc) -> str:
    """The second process's exit: non-zero, naming the dir and the holder's PID."""
    code = proc.wait(START_TIMEOUT)
    assert code is not None, f"a second process on {data_dir} is still running"
    out = proc.log()
    assert code != 0, out
    assert str(data_dir) in out and f"pid {holder.pid}" in out, out
    return out


def test_one_server_and_one_agent_per_data_dir(tmp_path, pyz):
    procs: list[Proc] = []
    try:
        data = tmp_path / "server"
        first, _ = start_server(tmp_path, data, "first")
        procs.append(first)
        assert (data / "orch.lock").read_text().strip() == str(first.pid)
        second = Proc(["server", "--port", "0", "--data-dir", str(data)], tmp_path / "second.log")
        procs.append(second)
        refused(second, data, first)
        assert first.alive()

        first.kill9()  # no clean-up: the kernel drops the lock with the process
        third, url = start_server(tmp_path, data, "third")
        procs.append(third)

        agent_dir = tmp_path / "agent"
        agent_args = ["agent", "--server", url, "--port", "0", "--data-dir", str(agent_dir)]
        agent = Proc(agent_args, tmp_path / "agent.log")
        procs.append(agent)
        wait_until(lambda: (agent_dir / "node_id").exists(), START_TIMEOUT, what="agent up")
        other = Proc(agent_args, tmp_path / "agent-2.log")
        procs.append(other)
        refused(other, agent_dir, agent)
        assert agent.alive()
    finally:
        for proc in procs:
            proc.cleanup()


def test_one_dev_cluster_per_data_dir(tmp_path, pyz):
    data = tmp_path / "dev"
    args = ["dev", "--agents", "1", "--port", "0", "--data-dir", str(data)]
    first = Proc(args, tmp_path / "dev-1.log")
    try:
        lock = data / "orch.lock"
        wait_until(lambda: lock.exists() and lock.read_text().strip(), START_TIMEOUT, what="lock")
        second = Proc(args, tmp_path / "dev-2.log")
        try:
            refused(second, data, first)
        finally:
            second.cleanup()
        assert first.alive(), first.log()[-3000:]
    finally:
        first.cleanup()
