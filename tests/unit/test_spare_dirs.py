"""Emptied allocation dirs kept and reused (orch.agent.spare), and when the agent may."""

import os

import pytest

from orch.agent.agent import Agent
from orch.agent.drivers.cgroups import Cgroups
from orch.agent.spare import SpareDirs
from orch.agent.spec import parse_alloc
from orch.agent.state import AgentStore
from orch.config import AgentConfig

from waiting import wait_for


def alloc_tree(path, tasks=("t",)):
    """An allocation's dir as the agent leaves it: alloc.json, logs, a run record."""
    os.makedirs(path)
    with open(os.path.join(path, "alloc.json"), "w") as f:
        f.write("{}")
    for task in tasks:
        os.mkdir(os.path.join(path, task))
        for name in ("stdout.log", "stderr.log", ".orch-run-0.json"):
            with open(os.path.join(path, task, name), "w") as f:
                f.write("x")
    return path


def test_an_emptied_dir_is_reused_with_its_task_dirs_for_the_same_task_names(tmp_path):
    spares = SpareDirs(str(tmp_path / "spare"))
    old = alloc_tree(str(tmp_path / "allocs" / "a1"), tasks=("web", "db"))
    inode = os.stat(old).st_ino
    assert spares.give(old) and len(spares) == 1
    assert not os.path.exists(old)
    assert not spares.take(str(tmp_path / "allocs" / "a2"), ("web",))  # other task names
    new = str(tmp_path / "allocs" / "a3")
    assert spares.take(new, ("db", "web"))
    assert os.stat(new).st_ino == inode and len(spares) == 0
    assert sorted(os.listdir(new)) == ["db", "web"]
    assert os.listdir(os.path.join(new, "web")) == os.listdir(os.path.join(new, "db")) == []
    assert not spares.take(str(tmp_path / "allocs" / "a4"), ("db", "web"))  # none left


def test_a_task_dir_with_dirs_of_its_own_is_not_kept(tmp_path):
    spares = SpareDirs(str(tmp_path / "spare"))
    old = alloc_tree(str(tmp_path / "a1"))
    os.makedirs(os.path.join(old, "t", "cache", "deep"))
    assert not spares.give(old)
    assert os.path.isdir(os.path.join(old, "t", "cache", "deep"))  # left to the caller
    assert len(spares) == 0


def test_a_symlink_in_it_goes_but_not_what_it_points_at(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    spares = SpareDirs(str(tmp_path / "spare"))
    old = alloc_tree(str(tmp_path / "a1"))
    os.symlink(outside, os.path.join(old, "t", "link"))
    os.symlink(outside, os.path.join(old, "link2"))
    assert spares.give(old)
    assert (outside / "keep.txt").read_text() == "mine"


LOGS = ("stdout.log", "stderr.log")


def created(path, data=b""):
    """A file as the task supervisor creates a log (O_CREAT, 0o644 under the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, data)
    os.close(fd)
    return os.stat(path).st_ino


def test_logs_left_empty_stay_for_the_next_task_and_the_rest_goes(tmp_path):
    spares = SpareDirs(str(tmp_path / "spare"), keep_empty=LOGS)
    old = str(tmp_path / "a1")
    os.makedirs(os.path.join(old, "t"))
    empty = created(os.path.join(old, "t", "stdout.log"))
    created(os.path.join(old, "t", "stderr.log"), b"it said something")
    created(os.path.join(old, "t", ".orch-run-0.json"))  # empty, but not a log
    created(os.path.join(old, "alloc.json"))
    assert spares.give(old)
    new = str(tmp_path / "a2")
    assert spares.take(new, ("t",))
    assert os.listdir(new) == ["t"]
    assert os.listdir(os.path.join(new, "t")) == ["stdout.log"]
    # The next task's supervisor opens it as it would create it: the same file, empty.
    assert created(os.path.join(new, "t", "stdout.log"), b"next\n") == empty
    with open(os.path.join(new, "t", "stdout.log"), "rb") as f:
        assert f.read() == b"next\n"


def test_an_empty_log_a_task_changed_is_not_kept(tmp_path):
    spares = SpareDirs(str(tmp_path / "spare"), keep_empty=LOGS)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    trees = []
    for i, change in enumerate(("mode", "link", "symlink")):
        task_dir = tmp_path / f"a{i}" / "t"
        task_dir.mkdir(parents=True)
        log = task_dir / "stdout.log"
        if change == "symlink":
            created(str(elsewhere / "target"))
            os.symlink(elsewhere / "target", log)
        else:
            created(str(log))
        if change == "mode":
            os.chmod(log, 0o666)  # others could write the next job's log
        if change == "link":
            os.link(log, elsewhere / "peek")  # another name would see the next job's output
        trees.append(str(tmp_path / f"a{i}"))
    for tree in trees:
        assert spares.give(tree)
        assert spares.take(tree + "-next", ("t",))
        assert os.listdir(os.path.join(tree + "-next", "t")) == []
    assert (elsewhere / "target").exists() and os.stat(elsewhere / "peek").st_nlink == 1


def test_without_keep_empty_every_file_goes(tmp_path):
    spares = SpareDirs(str(tmp_path / "spare"))
    old = str(tmp_path / "a1")
    os.makedirs(os.path.join(old, "t"))
    created(os.path.join(old, "t", "stdout.log"))
    assert spares.give(old) and spares.take(str(tmp_path / "a2"), ("t",))
    assert os.listdir(tmp_path / "a2" / "t") == []


def test_no_more_than_the_limit_are_kept(tmp_path):
    spares = SpareDirs(str(tmp_path / "spare"), limit=1)
    assert spares.give(alloc_tree(str(tmp_path / "a1")))
    second = alloc_tree(str(tmp_path / "a2"))
    assert not spares.give(second) and os.path.isdir(second)
    assert len(spares) == 1


def test_an_earlier_agents_spares_are_removed(tmp_path):
    first = SpareDirs(str(tmp_path / "spare"))
    assert first.give(alloc_tree(str(tmp_path / "a1")))
    SpareDirs(str(tmp_path / "spare"))
    assert os.listdir(tmp_path / "spare") == []


def test_the_store_reuses_only_what_it_is_told_it_may(tmp_path):
    store = AgentStore(str(tmp_path))
    store.save_alloc("a1", {"x": 1}, ("t",))
    os.mkdir(store.task_dir("a1", "t"))
    store.remove_alloc("a1")  # not known to be left alone: removed
    assert len(store.spares) == 0 and not os.path.exists(store.alloc_dir("a1"))
    store.save_alloc("a2", {"x": 2}, ("t",))
    os.mkdir(store.task_dir("a2", "t"))
    inode = os.stat(store.alloc_dir("a2")).st_ino
    store.remove_alloc("a2", reuse=True)
    assert len(store.spares) == 1
    store.save_alloc("a3", {"x": 3}, ("t",))
    assert os.stat(store.alloc_dir("a3")).st_ino == inode
    assert os.path.isdir(store.task_dir("a3", "t"))
    assert store.load_allocs() == [{"x": 3}]  # the spares are not allocations


def cgroup_agent(tmp_path, **config):
    if Cgroups().detect() is None:
        pytest.skip("no writable cgroups here: runs are contained only with them")
    return Agent(
        AgentConfig(server="http://127.0.0.1:9", data_dir=str(tmp_path), gc_keep=0, **config)
    )


def batch(alloc_id, command):
    return parse_alloc(
        {
            "allocation_id": alloc_id,
            "job_id": "j1",
            "job_type": "batch",
            "task_group": {
                "name": "g",
                "tasks": [
                    {
                        "name": "t",
                        "config": {"command": command},
                        "resources": {"cpu": 10, "memory": 16},
                    }
                ],
            },
        }
    )


def collected(agent, alloc_id):
    agent.submit(batch(alloc_id, agent_command[alloc_id]))
    runner = agent.get(alloc_id)
    assert runner.wait(10), "the task did not end"
    agent.acknowledged({alloc_id})
    assert wait_for(lambda: not os.path.exists(agent.store.alloc_dir(alloc_id)))
    return runner


# "escaped": out of the task's process group (which the supervisor kills), still in its
# cgroups; the task ends once the file says its child has left the group.
ESCAPE = "setsid sh -c 'touch escaped; exec sleep 3' & while [ ! -e escaped ]; do sleep 0.01; done"
agent_command = {"clean": "exit 0", "again": "true", "escaped": ESCAPE, "says": "echo hi"}


def test_an_allocation_whose_tasks_left_nothing_gives_its_dirs_to_the_next(tmp_path):
    agent = cgroup_agent(tmp_path)
    try:
        runner = collected(agent, "clean")
        assert runner.contained and len(agent.store.spares) == 1
        runner = collected(agent, "again")  # took the spare, gave it back
        assert runner.contained and len(agent.store.spares) == 1
    finally:
        agent.shutdown(stop_tasks=True)


def test_the_next_allocation_logs_into_the_empty_logs_of_the_last(tmp_path):
    agent = cgroup_agent(tmp_path)
    try:
        collected(agent, "clean")  # printed nothing: its logs stay in the spare
        agent.submit(batch("says", agent_command["says"]))
        assert agent.get("says").wait(10)
        stdout = agent.log_path("says", "t", "stdout")
        with open(stdout, "rb") as f:
            assert f.read() == b"hi\n"  # its own output only
        assert os.path.getsize(agent.log_path("says", "t", "stderr")) == 0
        agent.acknowledged({"says"})
        assert wait_for(lambda: len(agent.store.spares) == 1)
        spare_task_dir = os.path.join(
            agent.store.spares.path, os.listdir(agent.store.spares.path)[0], "t"
        )
        assert os.listdir(spare_task_dir) == ["stderr.log"]  # the one that held output went
    finally:
        agent.shutdown(stop_tasks=True)


def test_one_that_left_a_process_in_its_cgroups_is_removed_not_reused(tmp_path):
    agent = cgroup_agent(tmp_path)
    try:
        runner = collected(agent, "escaped")
        assert not runner.contained and len(agent.store.spares) == 0
    finally:
        agent.shutdown(stop_tasks=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="running a task as another user needs root")
def test_dirs_a_task_user_owned_are_removed_not_reused(tmp_path):
    agent = cgroup_agent(tmp_path, task_user="nobody")
    try:
        runner = collected(agent, "clean")
        assert runner.contained and len(agent.store.spares) == 0
    finally:
        agent.shutdown(stop_tasks=True)


def test_a_burst_of_200_allocations_is_all_kept_and_all_reused(tmp_path):
    """A node's dirs peak in a burst (bench/e2e.py's batch: ~190 a node):
    every one is kept when the burst is collected, and the next burst makes none."""
    store = AgentStore(str(tmp_path))
    burst = [f"a{i}" for i in range(200)]
    for alloc_id in burst:  # all live at once
        store.save_alloc(alloc_id, {"x": 1}, ("t",))
        os.mkdir(store.task_dir(alloc_id, "t"))
    inodes = {os.stat(store.alloc_dir(a)).st_ino for a in burst}
    for alloc_id in burst:
        store.remove_alloc(alloc_id, reuse=True)
    assert len(store.spares) == 200 and os.listdir(store.allocs_dir) == []
    for alloc_id in (f"b{i}" for i in range(200)):
        store.save_alloc(alloc_id, {"x": 2}, ("t",))
        assert os.stat(store.alloc_dir(alloc_id)).st_ino in inodes  # a spare, not a mkdir
        assert os.path.isdir(store.task_dir(alloc_id, "t"))
    assert len(store.spares) == 0
