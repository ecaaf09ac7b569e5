"""orch.agent.drivers.procs: create times read cheaply; group members from one
shared walk of /proc, unless the leader answers; descendants from the task's
own subtree."""

import os
import shutil
import signal
import subprocess
import threading
import time

import psutil
import pytest

from orch.agent.drivers import procs

from waiting import wait_for


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


def _own_session(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except ProcessLookupError:
        return False


def test_group_members_and_descendants_come_from_a_walk_begun_after_the_question():
    # A group leader with a child in its group and one that left it (setsid).
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 30 & setsid sleep 30 & wait"], start_new_session=True
    )
    try:
        # Both children forked, and the second has called setsid: until then
        # it is still in the leader's group (seen once on a loaded host).
        assert wait_for(
            lambda: (
                len(kids := procs.descendants(leader.pid)) == 2
                and any(_own_session(p.pid) for p in kids)
            )
        )
        kids = procs.descendants(leader.pid)
        assert {p.ppid() for p in kids} == {leader.pid}
        states = procs.group_states(leader.pid)
        assert len(states) == 2  # the leader and the child that stayed; not the setsid one
        assert procs.group_alive(leader.pid)
        # A process started after an earlier walk is in the next answer: no
        # caller is served rows older than its question.
        procs.PROC_SCAN.rows()
        late = subprocess.Popen(["sleep", "30"], start_new_session=True)
        try:
            assert len(procs.group_states(late.pid)) == 1
            assert procs.group_alive(late.pid)
        finally:
            late.kill()
            late.wait()
    finally:
        for proc in procs.descendants(leader.pid):
            proc.kill()
        leader.kill()
        leader.wait()
    # SIGKILL takes effect asynchronously: the member killed last may still
    # be exiting (not yet a zombie) for a moment on a loaded host.
    assert wait_for(lambda: not procs.group_alive(leader.pid))


def test_threads_asking_together_share_walks(monkeypatch):
    walks = []
    real = procs._walk_proc

    def counted():
        walks.append(1)
        time.sleep(0.05)  # long enough for the others to ask meanwhile
        return real()

    monkeypatch.setattr(procs, "_walk_proc", counted)
    scan = procs.ProcScan()
    start = threading.Barrier(16)
    answers = []

    def ask():
        start.wait()
        answers.append(scan.rows())

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 16 and all(any(r[0] == os.getpid() for r in a) for a in answers)
    # One walk begun before the others asked, one after at most: never one each.
    assert len(walks) <= 2


def _count_walks(monkeypatch) -> list[int]:
    walks: list[int] = []
    real = procs._walk_proc

    def counted():
        walks.append(1)
        return real()

    monkeypatch.setattr(procs, "_walk_proc", counted)
    return walks


def _kill_tree(leader: subprocess.Popen) -> None:
    for proc in procs.descendants(leader.pid):
        proc.kill()
    leader.kill()
    leader.wait()


@pytest.mark.skipif(
    not procs._HAS_CHILDREN_FILES, reason="no /proc/<pid>/task/<tid>/children in this kernel"
)
def test_descendants_come_from_the_tasks_own_subtree_as_a_walk_finds_them(monkeypatch):
    # A child in the group, and one that left it (setsid) with a child of its own.
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 30 & setsid sh -c 'sleep 30 & wait' & wait"],
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: len(procs.descendants(leader.pid)) == 3)
        walks = _count_walks(monkeypatch)
        ours = {p.pid for p in procs.descendants(leader.pid)}
        assert walks == []  # the subtree's children files, not all of /proc
        by_walk = procs._walked_children()
        walked, todo = set(), list(by_walk(leader.pid))
        while todo:
            walked.add(todo[-1])
            todo.extend(by_walk(todo.pop()))
        assert ours == walked and len(walks) == 1
        assert procs.descendants(2**22 + 1) == []  # no such process
    finally:
        _kill_tree(leader)


def test_group_alive_asks_the_leader_first_and_walks_only_when_it_is_gone(monkeypatch):
    walks = _count_walks(monkeypatch)
    alone = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert procs.group_alive(alone.pid)
        assert walks == []  # its leader is alive: no walk of /proc
    finally:
        alone.kill()
        alone.wait()
    assert not procs.group_alive(alone.pid)
    # The leader ended (a zombie until waited for), a member lives on: only
    # a walk finds it.
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 30 & echo $!"], stdout=subprocess.PIPE, start_new_session=True
    )
    member = int(leader.stdout.readline())
    leader.stdout.close()
    try:
        assert wait_for(lambda: procs._leader_state(leader.pid) in (None, "Z"))
        assert procs.group_alive(leader.pid)
        assert walks
    finally:
        os.kill(member, signal.SIGKILL)
        leader.wait()
    assert wait_for(lambda: not procs.group_alive(leader.pid))
