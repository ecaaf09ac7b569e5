"""The heartbeat monitor's deadlines, on a fake clock (the thread is not started)."""
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
    for _ in range(3):                  # everyone beats again: 200 stale entries
        clock.t += 1.0
        for node in nodes:
            monitor.reset(node)
    assert monitor._expired() == []
    deadline, node = monitor._heap[0]
    assert monitor._deadlines[node] == deadline == clock.t + 30.0
