"""The supervisor's cgroup joins and kept cgroup files (`orch/agent/tasksup/limits.py`)."""

import os

import pytest

from orch.agent.tasksup.limits import CgroupFiles, join_targets, open_join


def _group(root, *names):
    root.mkdir(parents=True)
    for name in names:
        (root / name).write_text("")
    return str(root / "cgroup.procs")


def test_v1_joins_by_the_tasks_file_and_v2_by_cgroup_procs_both_ways(tmp_path):
    v1 = _group(tmp_path / "v1", "tasks", "cgroup.procs")
    v2 = _group(tmp_path / "v2", "cgroup.procs")
    pid = str(os.getpid()).encode()
    assert join_targets(v1) == [(str(tmp_path / "v1" / "tasks"), b"0"), (v1, pid)]
    assert join_targets("/somewhere/else") == [("/somewhere/else", pid)]
    # The kept files and the one-off fd follow the same rule.
    for join in (lambda: CgroupFiles().join([v1, v2]), lambda: _join_once([v1, v2])):
        for name in ("v1/tasks", "v1/cgroup.procs", "v2/cgroup.procs"):
            (tmp_path / name).write_text("")
        join()
        assert (tmp_path / "v1" / "tasks").read_text() == "0"
        assert (tmp_path / "v1" / "cgroup.procs").read_text() == ""
        assert (tmp_path / "v2" / "cgroup.procs").read_bytes() == pid


def _join_once(procs_files):
    for procs in procs_files:
        fd, data = open_join(procs)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def test_a_v2_cgroup_procs_written_and_read_keeps_one_fd_each_way(tmp_path, monkeypatch):
    procs = _group(tmp_path / "v2", "cgroup.procs")
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (opened.append(p), real_open(p, *a, **k))[1])
    files = CgroupFiles()
    for _ in range(3):  # three tasks in the same pooled cgroup: join, then "empty?"
        files.join([procs])
        assert files.read(procs) is not None
    # Once to write, once to read (no ping-pong), and v2's missing tasks file tried once.
    assert opened == [procs[: -len("cgroup.procs")] + "tasks", procs, procs]
    kept = list(files._fds.values())
    files.forget_dirs([str(tmp_path / "v2")])
    assert files._fds == {}
    for fd in kept:
        with pytest.raises(OSError):
            os.fstat(fd)
