"""Exec task limits: memory through cgroups or the supervisor's RSS watchdog, CPU weight."""

import os
import sys
import time

import pytest

from orch.agent.drivers.base import TaskContext
from orch.agent.drivers.cgroups import Cgroups, cpu_weight
from orch.agent.drivers.exec import ExecDriver
from orch.agent.drivers.exec_config import resolve_user
from orch.errors import DriverError
from orch.structs import Resources

from helpers import read_or_empty
from waiting import live, wait_for

HOG = f'{sys.executable} -c "b = bytearray(200 * 1024 * 1024); import time; time.sleep(5)"'
SMALL = f'{sys.executable} -c "b = bytearray(8 * 1024 * 1024)"'


class NoCgroups(Cgroups):
    """As on a node where the agent may not write any cgroup."""

    def create(self, name, memory_mb, shares):
        return None


@pytest.fixture(params=["cgroups", "watchdog"])
def driver(request):
    if request.param == "cgroups":
        cgroups = Cgroups()
        if cgroups.detect() is None:
            pytest.skip(f"no writable cgroups here: {cgroups.reason}")
        return ExecDriver(cgroups=cgroups)
    return ExecDriver(cgroups=NoCgroups())


def context(tmp_path, command, memory=64):
    task_dir = tmp_path / "t"
    return TaskContext(
        alloc_id="a1",
        job_id="j1",
        task_name="t",
        config={"command": command},
        resources=Resources(100, memory),
        task_dir=str(task_dir),
        stdout_path=str(task_dir / "stdout.log"),
        stderr_path=str(task_dir / "stderr.log"),
        env={},
    )


def test_task_past_its_memory_limit_is_killed_and_says_why(driver, tmp_path):
    handle = driver.start(context(tmp_path, HOG))
    try:
        result = driver.wait(handle, 10)
    finally:
        driver.stop(handle, 0.5)
    assert result is not None, "the memory hog was not killed"
    assert result.oom_killed and result.exit_code == 137
    assert result.error == "OOM killed: memory limit 64 MB exceeded"
    assert not result.successful


def test_task_within_its_memory_limit_completes(driver, tmp_path):
    handle = driver.start(context(tmp_path, SMALL))
    result = driver.wait(handle, 10)
    assert result.exit_code == 0 and not result.oom_killed and result.successful


def real_cgroups():
    cgroups = Cgroups()
    if cgroups.detect() is None:
        pytest.skip(f"no writable cgroups here: {cgroups.reason}")
    made = []
    create = cgroups.create
    cgroups.create = lambda *a: made.append(create(*a)) or made[-1]
    return cgroups, made


def test_task_cgroups_are_reused_by_the_next_task_then_removed(tmp_path):
    cgroups, made = real_cgroups()
    driver = ExecDriver(cgroups=cgroups)
    try:
        for n in range(2):
            handle = driver.start(context(tmp_path / str(n), "exit 0"))
            assert driver.wait(handle, 10).exit_code == 0
        assert len(made) == 2 and made[0] is not None
        assert made[1] == made[0], "the second task made its own cgroups"
        assert all(os.path.isdir(d) for d in made[0].dirs)
        # Different limits: cgroups of their own.
        handle = driver.start(context(tmp_path / "2", "exit 0", memory=32))
        assert driver.wait(handle, 10).exit_code == 0
        assert made[2] != made[0]
    finally:
        driver.close()
    assert not any(os.path.exists(d) for g in made for d in g.dirs)


def test_cgroups_of_an_oom_killed_task_are_removed_not_reused(tmp_path):
    cgroups, made = real_cgroups()
    driver = ExecDriver(cgroups=cgroups)
    try:
        handle = driver.start(context(tmp_path, HOG))
        assert driver.wait(handle, 10).oom_killed
        driver.stop(handle, 0.5)
        deadline = time.monotonic() + 10
        while any(os.path.exists(d) for d in made[0].dirs) and time.monotonic() < deadline:
            time.sleep(0.05)  # the supervisor retries while the cgroup is busy
        assert not any(os.path.exists(d) for d in made[0].dirs)
        handle = driver.start(context(tmp_path / "next", "exit 0"))
        assert driver.wait(handle, 10).exit_code == 0
        assert made[1] != made[0]
    finally:
        driver.close()


def fake_v2(tmp_path, controllers="cpu io memory pids"):
    root, proc = tmp_path / "cg", tmp_path / "proc"
    (root / "agent.scope").mkdir(parents=True)
    proc.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "agent.scope" / "cgroup.subtree_control").write_text("")
    (proc / "cgroup").write_text("0::/agent.scope\n")
    return Cgroups(root=str(root), proc=str(proc)), root / "agent.scope"


def test_cgroup_v2_task_limits(tmp_path):
    cgroups, base = fake_v2(tmp_path)
    assert cgroups.detect() == "v2"
    assert (base / "cgroup.subtree_control").read_text() == "+memory +cpu"
    group = cgroups.create("a1-t", 64, 1024)
    task = base / "orch" / "a1-t"
    assert (task / "memory.max").read_text() == str(64 * 1024 * 1024)
    assert (task / "cpu.weight").read_text() == str(cpu_weight(1024))
    assert group.procs == (str(task / "cgroup.procs"),)
    assert group.oom_files == (str(task / "memory.events"),)


def test_cgroup_v2_without_memory_controller_falls_back(tmp_path):
    cgroups, _ = fake_v2(tmp_path, controllers="cpu pids")
    (tmp_path / "proc" / "mounts").write_text("")
    assert cgroups.detect() is None
    assert "without the memory controller" in cgroups.reason
    assert cgroups.create("a1-t", 64, 1024) is None


def test_cgroup_v1_task_limits(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc"
    (root / "memory" / "box").mkdir(parents=True)
    (root / "cpu,cpuacct").mkdir(parents=True)
    proc.mkdir()
    (proc / "mounts").write_text(
        f"cgroup {root}/memory cgroup rw,relatime,memory 0 0\n"
        f"cgroup {root}/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n"
        f"cgroup2 {root}/unified cgroup2 rw 0 0\n"
    )
    (proc / "cgroup").write_text("4:memory:/box\n1:cpu,cpuacct:/\n0::/\n")
    cgroups = Cgroups(root=str(root), proc=str(proc))
    assert cgroups.detect() == "v1"
    group = cgroups.create("a1-t", 64, 512)
    mem, cpu = root / "memory" / "box" / "orch" / "a1-t", root / "cpu,cpuacct" / "orch" / "a1-t"
    assert (mem / "memory.limit_in_bytes").read_text() == str(64 * 1024 * 1024)
    assert (cpu / "cpu.shares").read_text() == "512"
    assert group.procs == (str(mem / "cgroup.procs"), str(cpu / "cgroup.procs"))
    assert group.oom_files == (str(mem / "memory.oom_control"),)


def test_no_cgroups_at_all(tmp_path):
    (tmp_path / "proc").mkdir()
    cgroups = Cgroups(root=str(tmp_path / "none"), proc=str(tmp_path / "proc"))
    assert cgroups.detect() is None
    assert "no cgroup v1 memory hierarchy" in cgroups.reason


def test_cpu_weight_mapping():
    assert cpu_weight(2) == 1 and cpu_weight(1024) == 39 and cpu_weight(262144) == 10000


def test_unknown_task_user_is_a_driver_error():
    with pytest.raises(DriverError, match="task user no-such-user-xyz does not exist"):
        resolve_user("no-such-user-xyz")


@pytest.mark.skipif(os.geteuid() != 0, reason="running a task as another user needs root")
def test_task_runs_as_the_task_user(tmp_path):
    driver = ExecDriver(cgroups=NoCgroups(), user="nobody")
    ctx = context(tmp_path, "id -u; id -g; touch own-file")
    result = driver.wait(driver.start(ctx), 10)
    assert result.exit_code == 0
    user = resolve_user("nobody")
    with open(ctx.stdout_path) as f:
        assert f.read().split() == [str(user["uid"]), str(user["gid"])]
    assert os.stat(os.path.join(ctx.task_dir, "own-file")).st_uid == user["uid"]


def test_agent_with_an_unknown_task_user_does_not_start(tmp_path):
    import threading

    from orch.agent.main import serve
    from orch.config import AgentConfig

    config = AgentConfig(
        server="http://127.0.0.1:9", data_dir=str(tmp_path), task_user="no-such-user-xyz"
    )
    assert serve(config, threading.Event()) == 1


def test_stale_empty_task_cgroups_are_swept_at_detection(tmp_path, monkeypatch):
    cgroups, base = fake_v2(tmp_path)
    parent = base / "orch"
    for name, procs in (("old-empty", ""), ("old-busy", "123\n"), ("young-empty", "")):
        (parent / name).mkdir(parents=True)
        (parent / name / "cgroup.procs").write_text(procs)
    for name in ("old-empty", "old-busy"):
        os.utime(parent / name, (1000, 1000))
    removed = []
    monkeypatch.setattr(os, "rmdir", lambda path: removed.append(os.path.basename(path)))
    assert cgroups.detect() == "v2"
    assert removed == ["old-empty"]


def test_an_earlier_agents_empty_cgroups_are_swept_at_any_age(tmp_path, monkeypatch):
    # A killed agent's idle pool: the next agent of the same data dir (the
    # same owner tag) takes it back at once; another agent's young ones stay.
    cgroups, base = fake_v2(tmp_path)
    cgroups = Cgroups(root=cgroups._root, proc=cgroups._proc, owner="d1")
    parent = base / "orch"
    for name, procs in (("d1-a-t", ""), ("d1-b-t", "123\n"), ("d2-c-t", ""), ("d1x-t", "")):
        (parent / name).mkdir(parents=True)
        (parent / name / "cgroup.procs").write_text(procs)
    removed = []
    monkeypatch.setattr(os, "rmdir", lambda path: removed.append(os.path.basename(path)))
    assert cgroups.detect() == "v2"
    assert removed == ["d1-a-t"]
    group = cgroups.create("a9-t", 64, 1024)
    assert group is not None and os.path.basename(group.dirs[0]) == "d1-a9-t"


def test_agents_of_one_data_dir_share_an_owner_tag(tmp_path):
    from orch.agent.tasksup.client import data_dir_tag, supervisor_name

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    os.symlink(tmp_path / "a", tmp_path / "link")
    assert data_dir_tag(str(tmp_path / "a")) == data_dir_tag(str(tmp_path / "link"))
    assert data_dir_tag(str(tmp_path / "a")) != data_dir_tag(str(tmp_path / "b"))
    assert supervisor_name(str(tmp_path / "a")).endswith(data_dir_tag(str(tmp_path / "a")))


def test_a_task_runs_in_its_cgroups_and_its_supervisor_goes_back_home(tmp_path):
    cgroups = Cgroups()
    if cgroups.detect() is None:
        pytest.skip(f"no writable cgroups here: {cgroups.reason}")
    driver = ExecDriver(cgroups=cgroups)
    try:
        ctx = context(tmp_path, "cat /proc/self/cgroup")
        handle = driver.start(ctx)
        assert driver.wait(handle, 10).successful
        mine = open(ctx.stdout_path).read()
        with open(f"/proc/{handle.supervisor_pid}/cgroup") as f:
            supervisor = f.read()
    finally:
        driver.close()
    # Every controller the task was limited by names its cgroup (a1-t-<id>).
    limited = [line for line in mine.splitlines() if "a1-t-" in line]
    assert limited and any("memory" in line or line.startswith("0::") for line in limited)
    assert "a1-t-" not in supervisor


def test_a_run_is_contained_only_when_its_cgroups_were_empty_at_its_end(driver, tmp_path):
    handle = driver.start(context(tmp_path, "exit 0"))
    result = driver.wait(handle, 10)
    assert result.exit_code == 0
    # Without cgroups nothing says no process of it is left.
    assert result.contained is not isinstance(driver._cgroups, NoCgroups)


def _detached(pidfile) -> str:
    """A daemon out of the task's process group and session, its pid in `pidfile`."""
    return (
        f"( setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' & ); "
        f"while [ ! -s {pidfile} ]; do sleep 0.02; done"
    )


def _kill_if_left(pidfile) -> None:
    try:
        os.kill(int(pidfile.read_text()), 9)
    except (OSError, ValueError):
        pass


@pytest.mark.parametrize("end", ["exit", "stop"])
def test_what_a_task_detached_dies_at_its_end(tmp_path, end):
    # setsid or a double fork leaves the process group, never the cgroup:
    # the end of the task kills what is left there (Nomad's exec driver does),
    # before the pool hands the cgroup to the next task.
    cgroups, made = real_cgroups()
    driver = ExecDriver(cgroups=cgroups)
    pidfile = tmp_path / "daemon.pid"
    tail = "exit 0" if end == "exit" else "sleep 300"
    try:
        handle = driver.start(context(tmp_path, f"{_detached(pidfile)}; {tail}"))
        assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
        daemon = int(pidfile.read_text())
        if end == "stop":
            assert live(daemon)
            driver.stop(handle, 1.0)
        assert driver.wait(handle, 10) is not None
        assert wait_for(lambda: not live(daemon))
        assert not any(read_or_empty(os.path.join(d, "cgroup.procs")).strip() for d in made[0].dirs)
    finally:
        _kill_if_left(pidfile)
        driver.close()
