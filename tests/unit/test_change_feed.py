"""The change feed: bump/wait, close, and which store writes bump it."""

from __future__ import annotations

import threading
import time

from orch.server.changes import ChangeFeed
from orch.server.planner import new_eval
from orch.server.state import StateStore
from orch.structs import Job, Node, Resources, Task, TaskGroup


def test_wait_returns_at_once_when_already_past():
    feed = ChangeFeed()
    feed.bump()
    start = time.monotonic()
    # Bounds far below the timeouts: a wake-up told from a timeout however loaded the host.
    assert feed.wait(0, timeout=30) == 1
    assert time.monotonic() - start < 10


def test_wait_times_out_with_the_index_unchanged():
    feed = ChangeFeed()
    start = time.monotonic()
    assert feed.wait(0, timeout=0.2) == 0
    assert time.monotonic() - start >= 0.19


def test_a_bump_wakes_a_waiter():
    feed = ChangeFeed()
    got = []
    waiter = threading.Thread(target=lambda: got.append(feed.wait(0, timeout=30)))
    waiter.start()
    time.sleep(0.05)
    start = time.monotonic()
    feed.bump()
    waiter.join(30)
    assert got == [1]
    assert time.monotonic() - start < 10


def test_close_wakes_waiters_for_good():
    feed = ChangeFeed()
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (feed.wait(0, timeout=30), done.set()))
    waiter.start()
    feed.close()
    assert done.wait(5)
    assert feed.closed
    start = time.monotonic()
    feed.wait(0, timeout=30)  # returns at once once closed
    assert time.monotonic() - start < 10


def _job(job_id="web", count=1) -> Job:
    task = Task("t", "exec", {"command": "true"}, Resources(cpu=10, memory=10))
    return Job(job_id, (TaskGroup("g", count, (task,)),))


def test_store_writes_bump_and_a_heartbeat_does_not(tmp_path):
    store = StateStore(str(tmp_path))
    feed = store.changes
    before = feed.index
    store.submit_job(_job(), lambda t: new_eval("web", t, time.time()))
    after_submit = feed.index
    assert after_submit > before
    node = Node("n1", resources=Resources(cpu=100, memory=100), endpoint="http://127.0.0.1:1")
    store.upsert_node(node)
    after_node = feed.index
    assert after_node > after_submit
    store.touch_node("n1", time.time(), {})  # a heartbeat that changes nothing
    assert feed.index == after_node
    # An unchanged submit writes nothing: no change either.
    store.submit_job(_job(), lambda t: new_eval("web", t, time.time()))
    assert feed.index == after_node
    store.update_allocs([])  # nothing to write
    store._write([("DELETE FROM jobs WHERE job_id = ?", [])])
    assert feed.index == after_node
    store.delete_job("web")
    assert feed.index > after_node
    store.close()
    assert feed.closed


def test_readers_of_a_write_are_woken_once_the_store_lock_is_free(tmp_path):
    """A reader woken while the write still holds the lock would only sleep
    again on it (``settle``): the wake comes after the release, and comes
    for writes that touch no job too (list readers)."""
    store = StateStore(str(tmp_path))
    feed = store.changes
    woken: list[tuple[set | None, bool]] = []
    real_wake = feed.wake

    def recording_wake(jobs):
        woken.append((set(jobs), store._lock._is_owned()))
        real_wake(jobs)

    feed.wake = recording_wake
    job_waiter = threading.Event()
    with feed._cond:
        feed._watchers["web"] = {job_waiter}
    store.submit_job(_job(), lambda t: new_eval("web", t, time.time()))
    assert woken == [({"web"}, False)]
    assert job_waiter.is_set()
    node = Node("n1", resources=Resources(cpu=100, memory=100), endpoint="http://127.0.0.1:1")
    listed = []
    waiter = threading.Thread(target=lambda: listed.append(feed.wait(feed.index, timeout=10)))
    waiter.start()
    time.sleep(0.05)
    store.upsert_node(node)
    waiter.join(5)
    assert woken[1] == (set(), False) and listed == [feed.index]
    # Nested write blocks wake once, on the outer block's way out.
    with store._writing():
        store.upsert_node(node.__class__("n2", resources=node.resources, endpoint=node.endpoint))
        store.delete_job("web")
        assert len(woken) == 2
    assert len(woken) == 3 and woken[2] == ({"web"}, False)
    store.close()
