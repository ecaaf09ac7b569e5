"""Leadership on a real PostgreSQL: one leader, terms, self-fencing, the commit fence."""

import logging
import threading
import time

import psycopg
import pytest

from orch.errors import NotLeader
from orch.server.broker import EvalBroker
from orch.server.leadership import LeaderInfo, LeaseLeadership, SoleLeadership
from orch.server.planner import ServerPlanner
from orch.server.state import StateStore
from orch.structs import EvalStatus, Plan, replace
from tests.unit.test_state import alloc, evaluation, job, node

from waiting import wait_for

LEASE = 1.0


def fenced_commit(url: str, fence: tuple) -> bool:
    """What a plan commit does: the fence in its own transaction; whether a row came."""
    with psycopg.connect(url) as conn, conn.transaction():
        return conn.execute(*fence).fetchone() is not None


@pytest.fixture
def pair(postgres_url):
    made = []

    def make(name: str, lease: float = LEASE) -> LeaseLeadership:
        lead = LeaseLeadership(postgres_url, f"http://{name}:4646", lease=lease, server_id=name)
        lead.create_schema()
        made.append(lead)
        return lead

    yield make
    for lead in made:
        lead.stop()


def test_one_leader_and_a_deposed_leaders_commit_is_refused(pair, postgres_url):
    a, b = pair("a"), pair("b")
    assert a.renew_once() and a.is_leader()
    assert not b.renew_once() and not b.is_leader()
    # The follower knows where the leader listens (agents are sent there).
    assert b.leader().url == "http://a:4646" and b.leader().term == a.leader().term
    term = a.leader().term
    fence_a = a.fence()
    assert fenced_commit(postgres_url, fence_a)
    with pytest.raises(NotLeader):
        b.fence()

    # A stalls: no renewal. By its own clock it stops leading before the
    # database lets anyone else in (the margin).
    wait_for(lambda: not a.is_leader(), timeout=LEASE)
    assert not b.renew_once(), "the lease is still A's by the database's clock"
    with pytest.raises(NotLeader):
        a.fence()
    wait_for(b.renew_once, timeout=5 * LEASE, interval=0.05)
    assert b.leader().term == term + 1
    # A's late commit (its fence taken while it led) finds no row: refused.
    assert not fenced_commit(postgres_url, fence_a)
    assert fenced_commit(postgres_url, b.fence())
    # A comes back: it follows the new term, it does not take over.
    assert not a.renew_once()
    assert a.leader().holder == "b" and a.leader().term == term + 1


def test_renewals_keep_the_term(pair):
    # Renewed every LEASE/3 under a lease of 3 * LEASE: a loaded host's stall
    # between two renewals cannot let the lease run out (under LEASE, a stall
    # of 0.67 s could, and the next renewal took a new term).
    a, b = pair("a", lease=3 * LEASE), pair("b", lease=3 * LEASE)
    assert a.renew_once()
    term = a.leader().term
    for _ in range(3):
        time.sleep(LEASE / 3)
        assert a.renew_once() and a.leader().term == term
        assert not b.renew_once()


def test_transitions_on_threads_and_a_clean_handover(pair):
    events: list[tuple[str, str, int]] = []
    lock = threading.Lock()

    def record(name, what):
        def call(term):
            with lock:
                events.append((name, what, term))

        return call

    a, b = pair("a"), pair("b")
    a.start(record("a", "gain"), record("a", "lose"))
    wait_for(a.is_leader, timeout=10)
    b.start(record("b", "gain"), record("b", "lose"))
    time.sleep(LEASE)  # b keeps trying while a renews
    assert not b.is_leader()
    first = a.leader().term
    started = time.monotonic()
    a.stop()  # steps down and releases the lease: b need not wait it out
    wait_for(b.is_leader, timeout=10)
    assert time.monotonic() - started < LEASE + 1.0
    wait_for(lambda: ("b", "gain", first + 1) in events, timeout=5)
    assert events[:2] == [("a", "gain", first), ("a", "lose", first)]


def test_sqlite_server_always_leads():
    sole = SoleLeadership("http://x:1")
    seen = []
    sole.start(lambda t: seen.append(("gain", t)), lambda t: seen.append(("lose", t)))
    assert sole.is_leader() and sole.fence() is None and sole.leader().term == 1
    sole.stop()
    assert seen == [("gain", 1), ("lose", 1)]


def test_a_deposed_leaders_plan_commit_is_refused_by_the_store(pair, postgres_url, tmp_path):
    a, b = pair("a"), pair("b")
    stores = [StateStore(str(tmp_path / n), database=postgres_url) for n in "ab"]
    try:
        store_a, store_b = stores
        store_a.upsert_node(node("n1"))
        store_a.put_job(job("j1"), evaluation("j1", "e1"))
        assert a.renew_once()
        store_a.fence = a.fence
        placed, _, _ = store_a.commit_plan(Plan(eval_id="e1", job_id="j1", place=[alloc()]), [])
        assert len(placed) == 1
        captured = a.fence()  # what a commit already under way would run
        wait_for(b.renew_once, timeout=5 * LEASE, interval=0.05)
        store_b.fence = b.fence
        late = Plan(eval_id="e1", job_id="j1", place=[alloc("a2")])
        # By its own clock A knows it no longer leads: refused before the database.
        with pytest.raises(NotLeader):
            store_a.commit_plan(late, [])
        # A commit that took its fence while A still led finds another term.
        store_a.fence = lambda: captured
        with pytest.raises(NotLeader):
            store_a.commit_plan(late, [])
        assert store_a.get_alloc("a2") is None
        store_b.catch_up()
        assert store_b.get_alloc("a1") is not None and store_b.get_alloc("a2") is None
        placed, _, _ = store_b.commit_plan(late, [])
        assert [p.allocation_id for p in placed] == ["a2"]
    finally:
        for store in stores:
            store.close()


def test_a_deposed_leaders_evaluation_status_is_refused(pair, postgres_url, tmp_path, caplog):
    a, b = pair("a"), pair("b")
    stores = [StateStore(str(tmp_path / n), database=postgres_url) for n in "ab"]
    try:
        store_a, store_b = stores
        store_a.put_job(job("j1"), evaluation("j1", "e1"))
        store_a.put_job(job("j2"), evaluation("j2", "e2"))
        assert a.renew_once()
        store_a.fence = a.fence
        planner = ServerPlanner(store_a, EvalBroker(), dispatch=None)  # type: ignore[arg-type]
        done = replace(evaluation("j1", "e1"), status=EvalStatus.COMPLETE)
        planner.update_evals([done])  # the leader's verdict is written
        assert store_a.get_eval("e1").status == EvalStatus.COMPLETE
        captured = a.fence()  # what a write already under way would run
        wait_for(b.renew_once, timeout=5 * LEASE, interval=0.05)
        canceled = replace(evaluation("j2", "e2"), status=EvalStatus.CANCELED)
        # By its own clock A no longer leads: refused before the database...
        with pytest.raises(NotLeader):
            planner.update_evals([canceled])
        # ...and a write that took its fence while A led finds another term.
        store_a.fence = lambda: captured
        with pytest.raises(NotLeader):
            planner.update_evals([canceled])
        with caplog.at_level(logging.WARNING, logger="orch.server.planner"):
            planner.fail_eval(evaluation("j2", "e2"), "scheduler error")
        assert "not marked failed, no longer the leader" in caplog.text
        # The evaluation is left, pending, for the new leader.
        assert store_a.get_eval("e2").status == EvalStatus.PENDING
        store_b.catch_up()
        assert [e.eval_id for e in store_b.unfinished_evals()] == ["e2"]
        store_b.fence = b.fence
        store_b.put_evals([canceled], fenced=True)
        assert store_b.get_eval("e2").status == EvalStatus.CANCELED
    finally:
        for store in stores:
            store.close()


def test_a_lease_query_without_answer_does_not_hand_over(pair):
    a = pair("a")
    assert a.renew_once()
    term = a.leader().term
    a._connection().close()  # the next query gets no answer (a broken session)
    assert a.renew_once(), "still the leader until its own deadline"
    assert a.renew_once() and a.leader().term == term  # reconnected, same term


def test_no_leader_is_named_once_the_lease_ran_out(pair):
    """With the database lost, every server named the old leader (and term)
    while none led: what a follower last read, what a leader held."""
    a, b = pair("a"), pair("b")
    assert a.renew_once() and not b.renew_once()
    term = a.leader().term
    assert b.leader().url == "http://a:4646"
    # No renewal and no read (the database is gone): the lease runs out.
    wait_for(lambda: not a.is_leader(), timeout=LEASE)
    assert a.leader() == LeaderInfo(term)
    wait_for(lambda: b.leader() == LeaderInfo(term), timeout=2 * LEASE)
