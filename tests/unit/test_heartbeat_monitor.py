"""The heartbeat monitor's deadlines, on a fake clock (the thread is not started)."""

import pytest

from orch.server.heartbeat import HeartbeatMonitor


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_a_silent_node_expires_and_a_beating_one_does_not():
    clock = Clock()
    monitor = HeartbeatMonitor(3.0, lambda node: None, now=clock)
    monitor.reset("quiet")
    monitor.reset("busy")
    for _ in range(5):
        clock.t += 1.0
        monitor.reset("busy")
        expired = monitor._expired()
        if clock.t - 1000.0 < 3.0:
            assert expired == []
    assert "quiet" not in monitor._deadlines and "busy" in monitor._deadlines


def test_superseded_deadlines_do_not_set_the_wake_up():
    """After a check, the earliest entry left is a live deadline: the monitor
    sleeps until it, not until the stale deadline of every node that beat."""
    clock = Clock()
    monitor = HeartbeatMonitor(30.0, lambda node: None, now=clock)
    nodes = [f"n{i}" for i in range(100)]
    for node in nodes:
        monitor.reset(node)
    for _ in range(3):  # everyone beats again: 200 stale entries
        clock.t += 1.0
        for node in nodes:
            monitor.reset(node)
    assert monitor._expired() == []
    deadline, node = monitor._heap[0]
    assert monitor._deadlines[node] == deadline == clock.t + 30.0


def test_a_stalled_server_extends_deadlines_instead_of_expiring_nodes():
    """The monitor asked to wake in 1 s and woke 10 s later: the process stood
    still (GIL hog, SIGSTOP), so the nodes' silence is the server's own."""
    clock = Clock()
    monitor = HeartbeatMonitor(3.0, lambda node: None, now=clock)
    monitor.reset("a")
    monitor.reset("b")
    clock.t += 2.0
    monitor.reset("b")
    monitor._sleep_until(clock.t + 1.0)
    clock.t += 11.0
    assert monitor._absorb_stall() == pytest.approx(10.0)
    assert monitor._expired() == []
    # A full TTL from the wake (more than old deadline + stall): the
    # heartbeats queued meanwhile are answered after the monitor wakes.
    assert monitor._deadlines == {"a": pytest.approx(1016.0), "b": pytest.approx(1016.0)}
    clock.t = 1016.5
    assert sorted(monitor._expired()) == ["a", "b"]


def test_without_the_stall_check_the_same_wake_expires_both():
    clock = Clock()
    monitor = HeartbeatMonitor(3.0, lambda node: None, now=clock)
    monitor.reset("a")
    monitor.reset("b")
    clock.t += 11.0
    assert sorted(monitor._expired()) == ["a", "b"]


def test_an_ordinary_wake_changes_nothing():
    clock = Clock()
    monitor = HeartbeatMonitor(3.0, lambda node: None, now=clock)
    monitor.reset("a")
    monitor._sleep_until(clock.t + 1.0)
    clock.t += 1.1
    assert monitor._absorb_stall() == 0.0
    assert monitor._deadlines == {"a": 1003.0}


def test_a_short_delay_under_load_does_not_postpone_expiry():
    """Waking 1 s late with a 3 s TTL is scheduling noise: deadlines stand."""
    clock = Clock()
    monitor = HeartbeatMonitor(3.0, lambda node: None, now=clock)
    monitor.reset("a")
    monitor._sleep_until(clock.t + 2.5)
    clock.t += 3.5
    assert monitor._absorb_stall() == 0.0
    assert monitor._expired() == ["a"]
