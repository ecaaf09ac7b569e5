"""Two StateStores on one PostgreSQL database: each follows what the other commits."""

import os
import signal
import threading
import time

import pytest

from orch.errors import NotLeader, StorageError
from orch.server.state import StateStore
from orch.structs import DesiredStatus, EvalStatus, Plan, replace
from tests.unit.test_state import alloc, evaluation, job, maker, node

# Skips, saying what to install, on a machine without PostgreSQL.
pytestmark = pytest.mark.usefixtures("postgres_programs")


def wait_until(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"not within {timeout} s: {check}")


def snapshot(store):
    """Everything a store holds in memory, comparable across stores."""
    with store._lock:
        return {
            "nodes": {n.node_id: replace(n, last_heartbeat=0.0) for n in store.list_nodes()},
            "jobs": {j.job_id: j for j in store.list_jobs()},
            "allocs": dict(store._allocs),
            "evals": dict(store._evals),
            "launches": dict(store._launches),
            "free": {n: store.cluster.free(n) for n in store._nodes},
        }


@pytest.fixture
def pair(tmp_path, postgres_url):
    stores = [StateStore(str(tmp_path / name), database=postgres_url) for name in "ab"]
    yield stores
    for store in stores:
        store.close()


def test_interleaved_writes_on_two_servers_converge(pair):
    a, b = pair
    a.upsert_node(node("n1", cpu=1000))
    b.upsert_node(node("n2", cpu=1000))
    a.put_job(job("j1", count=2), evaluation("j1", "e1"))
    b.put_job(job("j2"), evaluation("j2", "e2"))
    # b plans j1 with what a wrote: it caught up under the cluster's lock.
    placed, _, rejected = b.commit_plan(
        Plan(
            eval_id="e1", job_id="j1", place=[alloc("a1", "n1", "j1"), alloc("a2", "n2", "j1", 1)]
        ),
        [replace(evaluation("j1", "e1"), status=EvalStatus.COMPLETE)],
    )
    assert (len(placed), rejected) == (2, 0)
    a.commit_plan(Plan(eval_id="e2", job_id="j2", place=[alloc("a3", "n1", "j2")]), [])
    b.stop_job("j2", evaluation("j2", "e3"))
    a.delete_job("j2")
    b.set_node_scheduling("n2", eligible=False, drain=None)
    wait_until(lambda: snapshot(a) == snapshot(b))
    state = snapshot(a)
    assert set(state["jobs"]) == {"j1"} and set(state["allocs"]) == {"a1", "a2"}
    assert state["free"]["n1"].cpu == 900 and not b.get_node("n2").eligible
    assert a.get_node("n2").eligible is False


def test_a_write_sees_every_committed_change_at_once(pair):
    a, b = pair
    b.backend.stop_following()  # b learns of a's write only by its own catch-up
    a.put_job(job("j1"), evaluation("j1", "e1"))
    # Read-your-writes on a; b's next write computes on a's job.
    assert a.get_job("j1") is not None
    updated, _, changed = b.submit_job(job("j1", count=3), maker("j1"))
    assert changed and updated.version == 1


def test_concurrent_version_bumps_from_two_servers_never_lose_one(pair):
    a, b = pair
    a.submit_job(job("j1", count=1), maker("j1"))
    per_store, errors = 15, []

    def bump(store, base):
        try:
            for i in range(per_store):
                store.submit_job(job("j1", count=base + i), maker("j1"))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(s, base)) for s, base in ((a, 100), (b, 200))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    expected = 2 * per_store
    # The last write may be either's: the other applies it from the log.
    wait_until(lambda: a.get_job("j1").version == b.get_job("j1").version == expected)
    versions = [j.version for j, _ in a.job_versions("j1")]
    assert versions == list(range(expected, expected - a.versions_kept, -1))


def test_evaluations_written_elsewhere_reach_the_listeners(pair):
    a, b = pair
    seen = []
    a.on_remote_evals.append(lambda evals: seen.extend(e.eval_id for e in evals))
    index = a.changes.index
    b.put_job(job("j1"), evaluation("j1", "e1"))
    wait_until(lambda: seen == ["e1"])
    assert a.changes.index > index
    a.put_job(job("j2"), evaluation("j2", "e2"))  # its own: not "remote"
    assert seen == ["e1"]


def test_stops_and_purges_written_elsewhere_reach_the_listeners(pair):
    a, b = pair
    stops = []
    a.on_remote_stops.append(lambda allocs: stops.append(allocs))
    a.upsert_node(node("n1"))
    a.put_job(job("j1", count=2), evaluation("j1", "e1"))
    a.commit_plan(Plan(eval_id="e1", job_id="j1", place=[alloc("a1"), alloc("a2", index=1)]), [])
    wait_until(lambda: b.get_alloc("a2") is not None)
    b.stop_job("j1", evaluation("j1", "e2"))  # a follower's stop: a pushes it
    wait_until(lambda: len(stops) == 1)
    assert sorted(x.allocation_id for x in stops[0]) == ["a1", "a2"]
    assert all(x.desired_status == DesiredStatus.STOP for x in stops[0])
    b.delete_job("j1")  # the purge: the agents forget them too
    wait_until(lambda: len(stops) == 2)
    assert sorted(x.allocation_id for x in stops[1]) == ["a1", "a2"]
    a.put_job(job("j2"), evaluation("j2", "e3"))
    a.commit_plan(Plan(eval_id="e3", job_id="j2", place=[alloc("a3", job_id="j2")]), [])
    a.stop_job("j2", evaluation("j2", "e4"))  # its own: pushed by its caller
    b.put_job(job("j3"), evaluation("j3", "e5"))  # a later change, applied by a
    wait_until(lambda: a.get_job("j3") is not None)
    assert len(stops) == 2


def test_drains_and_eligibility_changed_elsewhere_reach_the_listeners(pair):
    a, b = pair
    seen = []
    a.on_remote_nodes.append(lambda nodes: seen.append([(n.node_id, n.eligible) for n in nodes]))
    a.upsert_node(node("n1"))
    drain = {"deadline": 1.0e12, "deadline_s": 60.0, "started": 1.0, "ignore_system_jobs": False}
    b.set_node_scheduling("n1", eligible=False, drain=drain)
    wait_until(lambda: seen == [[("n1", False)]])
    assert a.get_node("n1").drain == drain
    b.set_node_scheduling("n1", eligible=True, drain=None)
    wait_until(lambda: len(seen) == 2)
    assert seen[1] == [("n1", True)]


def test_a_fenced_plan_commit_is_refused_when_the_fence_finds_no_row(pair):
    a, b = pair
    a.upsert_node(node("n1"))
    a.put_job(job("j1"), evaluation("j1", "e1"))
    term = {"now": 1}
    a.backend.execute("CREATE TABLE leadership (term BIGINT NOT NULL)")
    a.backend.execute("INSERT INTO leadership VALUES (2)")
    a.fence = lambda: ("SELECT 1 FROM leadership WHERE term = %s", (term["now"],))
    with pytest.raises(NotLeader):
        a.commit_plan(Plan(eval_id="e1", job_id="j1", place=[alloc()]), [])
    assert a.get_alloc("a1") is None and a.cluster.free("n1").cpu == 1000
    term["now"] = 2
    placed, _, _ = a.commit_plan(Plan(eval_id="e1", job_id="j1", place=[alloc()]), [])
    assert len(placed) == 1
    wait_until(lambda: b.get_alloc("a1") is not None)
    # Writes that are not the leader's are not fenced.
    term["now"] = 3
    a.put_job(job("j2"), evaluation("j2", "e2"))


def test_a_lost_database_fails_writes_keeps_reads_and_is_reconnected(tmp_path):
    from orch.dev.postgres import ThrowawayPostgres

    pg = ThrowawayPostgres(str(tmp_path / "pg"))
    pg.start()
    stores = []
    try:
        store = StateStore(str(tmp_path / "a"), database=pg.url)
        stores.append(store)
        store.put_job(job("j1"), evaluation("j1", "e1"))
        port = pg.port
        pg.stop()
        with pytest.raises(StorageError):
            store.put_job(job("j2"), evaluation("j2", "e2"))
        assert store.get_job("j1") is not None and store.get_job("j2") is None
        pg.start(port=port)  # the same data directory, the same address
        store.put_job(job("j3"), evaluation("j3", "e3"))
        other = StateStore(str(tmp_path / "b"), database=pg.url)
        stores.append(other)
        assert sorted(j.job_id for j in other.list_jobs()) == ["j1", "j3"]
        # The follower reconnected too: a write elsewhere reaches the first store.
        other.put_job(job("j4"), evaluation("j4", "e4"))
        wait_until(lambda: store.get_job("j4") is not None, timeout=15)
    finally:
        for s in stores:
            s.close()
        pg.stop()


def test_a_commit_reaches_the_other_servers_memory_within_milliseconds(pair):
    a, b = pair
    delays = []
    for n in range(20):
        a.put_job(job(f"j{n}"), evaluation(f"j{n}", f"e{n}"))
        start = time.perf_counter()
        wait_until(lambda n=n: b.get_job(f"j{n}") is not None, timeout=5)
        delays.append(time.perf_counter() - start)
    delays.sort()
    print(f"follower delay p50={delays[10] * 1000:.1f} ms max={delays[-1] * 1000:.1f} ms")
    # NOTIFY wakes the follower: far below the 5 s safety poll even on a loaded host.
    assert delays[10] < 1.0


def test_a_writer_stalled_inside_its_transaction_does_not_block_the_cluster(pair, monkeypatch):
    from orch.server.state import postgres

    a, b = pair
    # A short timeout for this test's new connections (the stalled writer's).
    monkeypatch.setattr(postgres, "STALLED_WRITER_MS", 500)
    a.backend.close()
    a.upsert_node(node("n1"))  # reconnects with the short timeout
    with a._writing():  # holds the cluster's write lock, then stalls
        start = time.monotonic()
        b.put_job(job("j1"), evaluation("j1", "e1"))  # waits, then gets the lock
        waited = time.monotonic() - start
        with pytest.raises(StorageError):
            a._write([(a._UPSERT_JOB, [("j2", "{}")])])
    assert 0.3 < waited < 10
    a.put_job(job("j3"), evaluation("j3", "e3"))  # a stalled server writes again after
    wait_until(lambda: b.get_job("j3") is not None and a.get_job("j1") is not None)


def test_a_jobs_index_moves_on_the_follower_and_both_servers_agree(pair):
    a, b = pair
    a.put_job(job("j1"), evaluation("j1", "e1"))
    wait_until(lambda: b.get_job("j1") is not None)
    wait_until(lambda: b.changes.job_index("j1") == a.changes.job_index("j1"))
    before = b.changes.job_index("j1")
    other = b.changes.job_index("j2")
    a.put_job(job("j1", count=3), evaluation("j1", "e2"))  # a change to j1 only
    wait_until(lambda: b.changes.job_index("j1") > before)
    # The change log's number: the same index on both servers.
    assert b.changes.job_index("j1") == a.changes.job_index("j1")
    assert b.changes.job_index("j2") == other


def _tree(root: int) -> list[int]:
    """``root`` and its children (PostgreSQL's backends, each in its own process group)."""
    pids = [root]
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == root:
                    pids.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def test_a_hung_database_fails_writes_in_bounded_time_and_keeps_reads(tmp_path, monkeypatch):
    from orch.dev.postgres import ThrowawayPostgres
    from orch.server.state import postgres
    from orch.server.state import store as core

    monkeypatch.setattr(postgres, "REPLY_WAIT", 3.0, raising=False)
    monkeypatch.setattr(core, "WRITE_WAIT", 0.5, raising=False)
    pg = ThrowawayPostgres(str(tmp_path / "pg"))
    pg.start()
    frozen: list[int] = []
    try:
        store = StateStore(str(tmp_path / "a"), database=pg.url)
        store.put_job(job("j1"), evaluation("j1", "e1"))
        assert pg.proc is not None
        frozen = _tree(pg.proc.pid)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        failed: list[BaseException] = []

        def stuck_write():
            try:
                store.put_job(job("j2"), evaluation("j2", "e2"))
            except StorageError as exc:
                failed.append(exc)

        writer = threading.Thread(target=stuck_write)
        writer.start()
        time.sleep(0.3)  # it holds the store's lock, waiting for the database
        start = time.monotonic()
        store.settle()  # a read waits a moment, then answers from memory
        assert time.monotonic() - start < 2 and store.get_job("j1") is not None
        start = time.monotonic()
        with pytest.raises(StorageError):
            store.put_job(job("j3"), evaluation("j3", "e3"))  # queued behind it: 503
        assert time.monotonic() - start < 2
        writer.join(timeout=10)
        assert not writer.is_alive() and failed  # the stuck write itself: 503
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        frozen = []
        store.put_job(job("j4"), evaluation("j4", "e4"))  # reconnected
        assert store.get_job("j2") is None and store.get_job("j4") is not None
        store.close()
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        pg.stop()
