"""The per-node pusher against real little agents on loopback."""

import threading
import time

import pytest
from tiny_http import Mute, Recorder, closed_port_url, wait_for

from orch.server.push import Pusher
from orch.structs import Allocation, Job, Resources, Task, TaskGroup

JOB = Job(
    job_id="web",
    task_groups=(
        TaskGroup(
            name="g",
            count=1,
            tasks=(
                Task(
                    name="t",
                    driver="exec",
                    config={"command": "true"},
                    resources=Resources(cpu=100, memory=64),
                ),
            ),
        ),
    ),
)


def alloc(n: int, node: str) -> Allocation:
    return Allocation(
        allocation_id=f"alloc-{n:04d}", job_id="web", task_group="g", node_id=node, index=n
    )


class Harness:
    """A Pusher to the little agents; one call per allocation (the seed's
    route) unless ``batch_max`` says otherwise."""

    def __init__(self, **kwargs):
        kwargs.setdefault("batch_max", 1)
        self.endpoints: dict[str, str] = {}
        self.failed: list = []
        self.suspects: list = []
        self.pusher = Pusher(
            endpoint_of=self.endpoints.get,
            on_failed=lambda a, f: self.failed.append((a, f)),
            on_suspect=lambda n, s: self.suspects.append((n, s)),
            **kwargs,
        )


@pytest.fixture
def closing():
    things = []
    yield things.append
    for thing in things:
        thing.close()


def test_a_hung_node_does_not_delay_a_healthy_one(closing):
    hung, healthy = Mute(), Recorder()
    closing(hung), closing(healthy)
    # Held behind the hung node, the healthy one would wait out a 5 s timeout:
    # far from what 10 loopback calls take, even on a loaded host.
    h = Harness(workers=2, timeout=5.0, retries=3, backoff=0.2)
    closing(h.pusher)
    h.endpoints.update(hung=hung.url, ok=healthy.url)
    h.pusher.place([alloc(i, "hung") for i in range(40)], JOB)
    started = time.monotonic()
    h.pusher.place([alloc(100 + i, "ok") for i in range(10)], JOB)
    assert wait_for(lambda: len(healthy.paths("POST")) == 10, timeout=4.0)
    assert time.monotonic() - started < 4.0  # not behind the hung node's first timeout
    # The hung node's timeouts make it suspect, and retries stop there.
    assert wait_for(lambda: ("hung", True) in h.suspects, timeout=10.0)
    assert ("ok", True) not in h.suspects
    assert h.pusher.suspect("hung") and not h.pusher.suspect("ok")


def test_a_stop_follows_a_place_in_flight(closing):
    def slow(method, path, body):
        if method == "POST":
            time.sleep(0.3)
        return 200, {"message": "ok"}

    agent = Recorder(slow)
    closing(agent)
    h = Harness(workers=4)
    closing(h.pusher)
    h.endpoints["n"] = agent.url
    a = alloc(1, "n")
    h.pusher.place([a], JOB)
    assert wait_for(lambda: agent.calls, timeout=2.0)  # the place is in flight
    h.pusher.stop([a])
    assert wait_for(lambda: len(agent.calls) == 2, timeout=3.0)
    assert [c[0] for c in agent.calls] == ["POST", "DELETE"]
    assert agent.calls[1][1] == f"/allocations/{a.allocation_id}"


def test_a_stop_replaces_a_waiting_place_and_a_later_place_is_ignored(closing):
    gate = threading.Event()

    def gated(method, path, body):
        gate.wait(5)
        return 200, {"message": "ok"}

    agent = Recorder(gated)
    closing(agent)
    h = Harness(workers=1)
    closing(h.pusher)
    h.endpoints["n"] = agent.url
    first, second = alloc(1, "n"), alloc(2, "n")
    h.pusher.place([first, second], JOB)
    assert wait_for(lambda: agent.calls, timeout=2.0)
    h.pusher.stop([second])  # still waiting behind the first
    h.pusher.place([second], JOB)  # a stop is final
    assert h.pusher.busy(second.allocation_id)
    gate.set()
    assert wait_for(lambda: len(agent.calls) == 2, timeout=3.0)
    time.sleep(0.2)
    assert [(c[0], c[1]) for c in agent.calls] == [
        ("POST", "/allocations"),
        ("DELETE", f"/allocations/{second.allocation_id}"),
    ]
    assert wait_for(lambda: not h.pusher.busy(second.allocation_id), timeout=2.0)


def test_stops_of_many_allocations_racing_their_places_all_arrive(closing):
    agent = Recorder()
    closing(agent)
    h = Harness(workers=4)
    closing(h.pusher)
    h.endpoints["n"] = agent.url
    allocs = [alloc(i, "n") for i in range(300)]
    h.pusher.place(allocs, JOB)
    h.pusher.stop(allocs)
    assert wait_for(lambda: len(agent.paths("DELETE")) == 300, timeout=10.0)
    # Each allocation placed on the agent was stopped after it.
    order = {}
    for method, path, body, _, _ in agent.calls:
        key = body["allocation_id"] if method == "POST" else path.rsplit("/", 1)[1]
        order.setdefault(key, []).append(method)
    assert all(methods in (["DELETE"], ["POST", "DELETE"]) for methods in order.values())


def test_a_refused_push_fails_at_once_and_makes_the_node_suspect(closing):
    # A retry would wait out a 30 s backoff first: failing within the 10 s
    # wait says there was none, however slow the loaded host.
    h = Harness(retries=3, backoff=30.0)
    closing(h.pusher)
    h.endpoints["n"] = closed_port_url()
    h.pusher.place([alloc(1, "n")], JOB)
    assert wait_for(lambda: h.failed, timeout=10.0), "no retry after a refusal"
    assert h.failed[0][1].refused
    assert h.suspects == [("n", True)]


def test_a_suspect_node_is_cleared_by_a_push_or_a_quiet_heartbeat(closing):
    agent = Recorder()
    closing(agent)
    # A hold a loaded host cannot outlast between the mark and the next line.
    hold = 3.0
    h = Harness(suspect_hold=hold)
    closing(h.pusher)
    h.endpoints["n"] = closed_port_url()
    h.pusher.place([alloc(1, "n")], JOB)
    assert wait_for(lambda: h.pusher.suspect("n"), timeout=3.0)
    h.pusher.heartbeat_ok("n")  # within the hold: still suspect
    assert h.pusher.suspect("n")
    h.endpoints["n"] = agent.url
    h.pusher.place([alloc(2, "n")], JOB)
    assert wait_for(lambda: not h.pusher.suspect("n"), timeout=3.0)
    assert h.suspects == [("n", True), ("n", False)]
    # Suspect again, then a heartbeat after the hold with nothing queued clears it.
    h.endpoints["n"] = closed_port_url()
    before = time.monotonic()  # the node is marked suspect after this
    h.pusher.place([alloc(3, "n")], JOB)
    assert wait_for(lambda: h.pusher.suspect("n"), timeout=3.0)
    assert wait_for(
        lambda: (h.pusher.heartbeat_ok("n"), not h.pusher.suspect("n"))[1], timeout=hold + 4.0
    )
    assert time.monotonic() - before >= hold  # not before the hold ran out


def test_idle_node_workers_retire(closing, monkeypatch):
    import orch.server.push as push

    monkeypatch.setattr(push, "IDLE_S", 0.1)
    agent = Recorder()
    closing(agent)
    h = Harness()
    closing(h.pusher)
    h.endpoints["n"] = agent.url
    before = threading.active_count()
    h.pusher.place([alloc(i, "n") for i in range(20)], JOB)
    assert wait_for(lambda: len(agent.calls) == 20, timeout=3.0)
    assert wait_for(lambda: threading.active_count() <= before, timeout=3.0)


def test_a_place_no_longer_wanted_when_its_turn_comes_is_not_sent(closing):
    agent = Recorder()
    closing(agent)
    unwanted = {"alloc-0002"}
    h = Harness(wanted=lambda a: a.allocation_id not in unwanted)
    closing(h.pusher)
    h.endpoints["n"] = agent.url
    h.pusher.place([alloc(1, "n"), alloc(2, "n"), alloc(3, "n")], JOB)
    assert wait_for(lambda: len(agent.calls) == 2, timeout=3.0)
    assert wait_for(lambda: not h.pusher.busy("alloc-0002", "n"), timeout=3.0)
    assert sorted(c[2]["allocation_id"] for c in agent.calls) == ["alloc-0001", "alloc-0003"]
    assert h.failed == []


def test_a_refusal_after_the_agent_went_away_mid_call_is_not_certain(closing):
    agent = Recorder(close_silently=True)
    h = Harness(workers=1, retries=3, backoff=0.05)
    closing(h.pusher)
    h.endpoints["n"] = agent.url
    h.pusher.place([alloc(1, "n")], JOB)
    assert wait_for(lambda: len(agent.calls) == 1, timeout=3.0)
    agent.close()  # the worker still keeps its connection to it
    h.pusher.place([alloc(2, "n")], JOB)
    assert wait_for(lambda: h.failed, timeout=3.0)
    failure = h.failed[0][1]
    assert not failure.refused, "it may have taken the call before it went away"
    assert h.pusher.suspect("n")


def batch_agent(refuse=()):
    """Answers POST /allocations/batch as orch's agent does, refusing some ids."""

    def answer(method, path, body):
        if path != "/allocations/batch":
            return 200, {"message": "ok"}
        results = {}
        for item in body["allocations"]:
            alloc_id = item["allocation_id"]
            results[alloc_id] = {"error": "no"} if alloc_id in refuse else "accepted"
        return 200, {"message": "Allocations accepted", "allocations": results}

    return answer


def held_node(answer, closing):
    """(agent, harness, gate): a little agent whose answers wait for the gate,
    and a batching pusher to it as node "n". The first call holds the node, so
    the wishes made meanwhile wait together behind it."""
    gate = threading.Event()

    def held(method, path, body):
        gate.wait(5)
        return answer(method, path, body)

    agent = Recorder(held)
    closing(agent)
    h = Harness(workers=1, batch_max=64)
    closing(h.pusher)
    h.endpoints["n"] = agent.url
    return agent, h, gate


def test_places_waiting_for_a_node_go_out_as_one_batch(closing):
    agent, h, gate = held_node(batch_agent(refuse={"alloc-0007"}), closing)
    h.pusher.place([alloc(0, "n")], JOB)
    assert wait_for(lambda: len(agent.calls) == 1)
    h.pusher.place([alloc(i, "n") for i in range(1, 11)], JOB)
    gate.set()
    assert wait_for(lambda: h.pusher.stats["placed"] == 10 and len(h.failed) == 1)
    assert agent.paths("POST") == ["/allocations", "/allocations/batch"]
    batch = agent.calls[1][2]["allocations"]
    assert [a["allocation_id"] for a in batch] == [f"alloc-{i:04d}" for i in range(1, 11)]
    ((failed, failure),) = h.failed
    assert failed.allocation_id == "alloc-0007" and failure.refused


def test_an_agent_without_the_batch_route_gets_one_call_each(closing):
    agent, h, gate = held_node(
        lambda method, path, body: (
            (404, {"error": "not found"}) if path.endswith("/batch") else (200, {})
        ),
        closing,
    )
    h.pusher.place([alloc(0, "n")], JOB)
    assert wait_for(lambda: len(agent.calls) == 1)
    h.pusher.place([alloc(i, "n") for i in range(1, 6)], JOB)
    gate.set()
    assert wait_for(lambda: h.pusher.stats["placed"] == 6)
    assert agent.paths("POST") == ["/allocations", "/allocations/batch"] + ["/allocations"] * 5
    assert h.failed == []


def stop_agent(missing=(), broken=()):
    """Answers POST /allocations/stop as orch's agent does."""

    def answer(method, path, body):
        if path != "/allocations/stop":
            return 200, {"message": "ok"}
        results = {}
        for alloc_id in body["allocations"]:
            if alloc_id in broken:
                results[alloc_id] = {"error": "no"}
            else:
                results[alloc_id] = "not_found" if alloc_id in missing else "stopped"
        return 200, {"message": "Allocations stopped and removed", "allocations": results}

    return answer


def test_stops_waiting_for_a_node_go_out_as_one_batch(closing):
    agent, h, gate = held_node(stop_agent(missing={"alloc-0003"}, broken={"alloc-0005"}), closing)
    h.pusher.stop([alloc(0, "n")])
    assert wait_for(lambda: len(agent.calls) == 1)
    h.pusher.stop([alloc(i, "n") for i in range(1, 8)])
    h.pusher.place([alloc(8, "n")], JOB)  # a place behind them is not in their batch
    gate.set()
    assert wait_for(lambda: h.pusher.stats["stopped"] == 7 and h.pusher.stats["placed"] == 1)
    assert [c[:2] for c in agent.calls] == [
        ("DELETE", "/allocations/alloc-0000"),
        ("POST", "/allocations/stop"),
        ("POST", "/allocations"),
    ]
    assert agent.calls[1][2]["allocations"] == [f"alloc-{i:04d}" for i in range(1, 8)]
    assert h.failed == []  # a stop that failed is logged; nothing to place elsewhere
    assert not h.pusher.busy("alloc-0005", "n")


def test_an_agent_without_the_batch_stop_route_gets_one_delete_each(closing):
    agent, h, gate = held_node(
        lambda method, path, body: (
            (405, {"error": "method not allowed"}) if path.endswith("/stop") else (200, {})
        ),
        closing,
    )
    h.pusher.stop([alloc(0, "n")])
    assert wait_for(lambda: len(agent.calls) == 1)
    h.pusher.stop([alloc(i, "n") for i in range(1, 4)])
    gate.set()
    assert wait_for(lambda: h.pusher.stats["stopped"] == 4)
    paths = [c[1] for c in agent.calls]
    assert paths == ["/allocations/alloc-0000", "/allocations/stop"] + [
        f"/allocations/alloc-{i:04d}" for i in range(1, 4)
    ]
    # From then on that node gets one DELETE a stop, without asking again.
    h.pusher.stop([alloc(i, "n") for i in range(4, 6)])
    assert wait_for(lambda: h.pusher.stats["stopped"] == 6)
    assert all(c[1] != "/allocations/stop" for c in agent.calls[5:])
