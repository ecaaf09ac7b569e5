"""The eval broker: one job in flight, coalescing, blocking, delays, nack."""

import time

from orch.server.broker import EvalBroker
from orch.structs import Evaluation, TriggeredBy


def ev(job, n=0):
    return Evaluation(eval_id=f"{job}-{n}", job_id=job, triggered_by=TriggeredBy.JOB_REGISTER)


def test_one_job_in_flight_and_coalesced_handout():
    broker = EvalBroker()
    broker.enqueue(ev("a", 1))
    token, evals = broker.dequeue(0.1)
    assert [e.eval_id for e in evals] == ["a-1"]
    broker.enqueue(ev("a", 2))
    broker.enqueue(ev("a", 3))
    assert broker.dequeue(0.05) is None  # job a is in flight
    broker.ack(token)
    token, evals = broker.dequeue(0.1)
    assert [e.eval_id for e in evals] == ["a-2", "a-3"]


def test_other_jobs_proceed_while_one_is_in_flight():
    broker = EvalBroker()
    broker.enqueue(ev("a"))
    broker.enqueue(ev("b"))
    t1, e1 = broker.dequeue(0.1)
    t2, e2 = broker.dequeue(0.1)
    assert {e1[0].job_id, e2[0].job_id} == {"a", "b"}


def test_blocked_eval_returns_on_unblock_and_rides_with_new_work():
    broker = EvalBroker()
    blocked = ev("a", 1)
    broker.block(blocked)
    assert broker.dequeue(0.02) is None
    assert broker.unblock() == 1
    token, evals = broker.dequeue(0.1)
    assert evals == [blocked]
    broker.ack(token)
    broker.block(blocked)
    broker.enqueue(ev("a", 2))
    _, evals = broker.dequeue(0.1)
    assert [e.eval_id for e in evals] == ["a-1", "a-2"]


def test_nack_redelivers_then_gives_up():
    broker = EvalBroker(max_deliveries=2)
    broker.enqueue(ev("a"))
    token, _ = broker.dequeue(0.1)
    assert broker.nack(token) == []
    token, evals = broker.dequeue(0.1)
    assert [e.eval_id for e in evals] == ["a-0"]
    assert [e.eval_id for e in broker.nack(token)] == ["a-0"]
    assert broker.dequeue(0.02) is None


def test_delayed_eval_waits_for_its_time():
    broker = EvalBroker()
    broker.enqueue_delayed(ev("a"), time.time() + 0.15)
    assert broker.dequeue(0.05) is None
    start = time.monotonic()
    assert broker.dequeue(5.0) is not None
    assert time.monotonic() - start < 4.0


def test_cancel_job_drops_queued_and_blocked():
    broker = EvalBroker()
    broker.enqueue(ev("a", 1))
    broker.block(ev("b", 1))
    assert [e.eval_id for e in broker.cancel_job("a")] == ["a-1"]
    assert [e.eval_id for e in broker.cancel_job("b")] == ["b-1"]
    assert broker.dequeue(0.02) is None


def test_cancel_job_drops_delayed_evaluations_and_keeps_others():
    broker = EvalBroker()
    broker.enqueue_delayed(ev("a", 1), time.time() + 0.05)
    broker.enqueue_delayed(ev("b", 1), time.time() + 0.05)
    assert [e.eval_id for e in broker.cancel_job("a")] == ["a-1"]
    token, evals = broker.dequeue(2.0)
    assert [e.eval_id for e in evals] == ["b-1"]
    broker.ack(token)
    assert broker.dequeue(0.1) is None
