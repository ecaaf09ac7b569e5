"""A network partition between the server and an agent, with real links.

The test builds its own network: a bridge on the host (the server binds its
address, 10.213.0.1) and one network namespace per agent, joined to the
bridge by a veth pair (10.213.0.2, 10.213.0.3). Cutting an agent off is
`ip link set <its host-side veth> down`; healing is `up`. Everything made
here (processes, namespaces, links) is removed at teardown, failure or not.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time

import pytest
import requests

from harness import Cluster, pid_alive, wait_until
from test_end_to_end import job_body, submit

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="needs root and iproute2 (network namespaces)",
    ),
]

SUBNET = "10.213.0"
SERVER_ADDR = f"{SUBNET}.1"
AGENT_PORT = 7000
TOKEN = "partition-test-token"
NODE_TTL = 3.0
HEARTBEAT = 0.5


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=10)


class Net:
    """A bridge and per-agent namespaces; names carry this process's PID."""

    def __init__(self):
        tag = f"{os.getpid() % 100000:05d}"
        self.bridge = f"obr{tag}"
        self.namespaces: dict[str, str] = {}  # agent name -> netns
        self.host_veths: dict[str, str] = {}  # agent name -> host-side veth
        self.addrs: dict[str, str] = {}
        self.tag = tag
        self.made: list[tuple[str, str]] = []  # ("link"|"netns", name)

    def setup_bridge(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", self.bridge))
        ip("addr", "add", f"{SERVER_ADDR}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add_agent(self, name: str, host_number: int) -> str:
        ns = f"orch-{self.tag}-{name}"
        host_side, ns_side = f"oh{name}{self.tag}", f"on{name}{self.tag}"
        addr = f"{SUBNET}.{host_number}"
        ip("netns", "add", ns)
        self.made.append(("netns", ns))
        ip("link", "add", host_side, "type", "veth", "peer", "name", ns_side)
        self.made.append(("link", host_side))
        ip("link", "set", ns_side, "netns", ns)
        ip("link", "set", host_side, "master", self.bridge)
        ip("link", "set", host_side, "up")
        ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ns_side)
        ip("-n", ns, "link", "set", ns_side, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        self.namespaces[name], self.host_veths[name] = ns, host_side
        self.addrs[name] = addr
        return ns

    def cut(self, name: str) -> None:
        ip("link", "set", self.host_veths[name], "down")

    def heal(self, name: str) -> None:
        ip("link", "set", self.host_veths[name], "up")

    def teardown(self) -> None:
        for kind, name in reversed(self.made):
            if kind == "netns":
                ip("netns", "del", name, check=False)
            else:
                ip("link", "del", name, check=False)


@pytest.fixture
def net():
    n = Net()
    try:
        try:
            n.setup_bridge()
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot create network devices here: {exc.stderr}")
        yield n
    finally:
        n.teardown()


@pytest.fixture
def cluster(tmp_path, pyz, net):
    c = Cluster(
        tmp_path, node_ttl=NODE_TTL, heartbeat_interval=HEARTBEAT, bind=SERVER_ADDR, token=TOKEN
    )
    try:
        yield c
    finally:
        c.stop_all()


def start_ns_agent(cluster: Cluster, net: Net, name: str, host_number: int) -> str:
    ns = net.add_agent(name, host_number)
    addr = net.addrs[name]
    return cluster.start_agent(
        name,
        "--bind",
        addr,
        "--port",
        str(AGENT_PORT),
        "--advertise",
        f"http://{addr}:{AGENT_PORT}",
        prefix=["ip", "netns", "exec", ns],
    )


class CopyWatch(threading.Thread):
    """Samples the live copies of a task every 50 ms; keeps the longest
    stretch during which more than one ran, and the last such moment."""

    def __init__(self, cluster: Cluster, tag: str):
        super().__init__(daemon=True)
        self.cluster, self.tag = cluster, tag
        self.stop_event = threading.Event()
        self.overlap_since: float | None = None
        self.last_overlap_end: float | None = None
        self.longest = 0.0
        self.max_copies = 0

    def run(self) -> None:
        while not self.stop_event.wait(0.05):
            live = [p for p in self.cluster.task_pids(self.tag).values() if pid_alive(p)]
            now = time.monotonic()
            self.max_copies = max(self.max_copies, len(live))
            if len(live) > 1:
                if self.overlap_since is None:
                    self.overlap_since = now
                self.longest = max(self.longest, now - self.overlap_since)
            elif self.overlap_since is not None:
                self.overlap_since = None
                self.last_overlap_end = now

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


def test_partitioned_agent_is_replaced_and_its_stale_copy_stopped(cluster, net):
    cluster.start_server()
    # Unauthenticated requests are refused on this non-loopback bind.
    assert requests.get(f"{cluster.url}/jobs", timeout=5).status_code == 401

    node_a = start_ns_agent(cluster, net, "a", 2)
    submit(cluster, job_body("one", cluster.pid_command("one"), type_="service"))
    submit(cluster, job_body("two", cluster.pid_command("two"), count=2, type_="service"))
    cluster.wait_job("one", "running")
    cluster.wait_job("two", "running")
    first = cluster.live_allocs("one")[0]
    assert first["node_id"] == node_a
    node_b = start_ns_agent(cluster, net, "b", 3)
    original = wait_until(lambda: cluster.task_pids("one").get(first["allocation_id"]))
    assert pid_alive(original)
    watch = CopyWatch(cluster, "one")
    watch.start()

    cut = time.monotonic()
    log_at_cut = len(cluster.agents["a"].log())
    net.cut("a")
    wait_until(
        lambda: not cluster.node(node_a)["healthy"], timeout=NODE_TTL + 10, what="node a unhealthy"
    )
    unhealthy_after = time.monotonic() - cut
    lost = cluster.get(f"/allocations/{first['allocation_id']}").json()
    assert lost["status"] == "lost" and lost["desired_status"] == "stop"

    def replaced():
        live = [a for a in cluster.live_allocs("one") if a["status"] == "running"]
        if len(live) == 1 and live[0]["node_id"] == node_b:
            pid = cluster.task_pids("one").get(live[0]["allocation_id"])
            return live[0] if pid and pid_alive(pid) else None
        return None

    replacement = wait_until(replaced, timeout=NODE_TTL + 20, what="replacement running on b")
    replaced_after = time.monotonic() - cut
    assert replacement["previous_allocation"] == first["allocation_id"]
    for alloc in cluster.live_allocs("two"):
        assert alloc["node_id"] == node_b
    cluster.wait_job("two", "running", timeout=20)
    assert len([a for a in cluster.live_allocs("two") if a["status"] == "running"]) == 2
    # The agent cannot hear the server: its copy runs on, a stale copy, after
    # the agent has seen its heartbeats fail.
    wait_until(
        lambda: re.search(r"heartbeat .*failed", cluster.agents["a"].log()[log_at_cut:]),
        timeout=NODE_TTL + 10,
        what="agent a's heartbeats failing",
    )
    assert pid_alive(original)

    heal = time.monotonic()
    net.heal("a")
    wait_until(
        lambda: cluster.node(node_a)["healthy"], timeout=NODE_TTL + 10, what="node a healthy again"
    )
    back_after = time.monotonic() - heal
    wait_until(
        lambda: not pid_alive(original), timeout=NODE_TTL + 15, what="stale copy on a stopped"
    )
    stale_stopped_after = time.monotonic() - heal
    # And nothing comes back: node a keeps heartbeating (each exchange would
    # be where the server hands it a copy again) while the watch looks on.
    seen = cluster.node(node_a)["last_heartbeat"]
    wait_until(
        lambda: cluster.node(node_a)["last_heartbeat"] >= seen + NODE_TTL,
        timeout=NODE_TTL + 15,
        what="node a heartbeating after the heal",
    )
    watch.stop()

    live = [p for p in cluster.task_pids("one").values() if pid_alive(p)]
    assert live == [cluster.task_pids("one")[replacement["allocation_id"]]]
    assert [a["allocation_id"] for a in cluster.live_allocs("one")] == [
        replacement["allocation_id"]
    ]
    live_two = [p for p in cluster.task_pids("two").values() if pid_alive(p)]
    assert len(live_two) == 2
    assert {a["node_id"] for a in cluster.live_allocs("two")} == {node_b}
    # Two copies ran only while a was cut off and until the heal was noticed.
    assert watch.overlap_since is None
    assert watch.max_copies == 2
    assert (
        watch.last_overlap_end is not None
        and watch.last_overlap_end - heal <= stale_stopped_after + 0.5
    )
    print(
        f"\npartition: node unhealthy {unhealthy_after:.2f}s after the cut, "
        f"replacement running {replaced_after:.2f}s after the cut "
        f"(ttl {NODE_TTL}s, heartbeat {HEARTBEAT}s); after the heal the node "
        f"was healthy in {back_after:.2f}s and the stale copy stopped in "
        f"{stale_stopped_after:.2f}s; two copies overlapped {watch.longest:.2f}s "
        f"(the partition itself)"
    )


STOP_AFTER = 2.0


def test_a_cut_off_agent_stops_its_tasks_after_disconnect_stop_after(cluster, net):
    """Nomad's stop_after_client_disconnect: the stale copy does not wait for the heal."""
    cluster.start_server()
    node_a = start_ns_agent(cluster, net, "a", 2)
    submit(
        cluster,
        job_body(
            "lone",
            cluster.pid_command("lone"),
            type_="service",
            disconnect={"stop_after": f"{STOP_AFTER:g}s"},
        ),
    )
    cluster.wait_job("lone", "running")
    first = cluster.live_allocs("lone")[0]
    assert first["node_id"] == node_a
    original = wait_until(lambda: cluster.task_pids("lone").get(first["allocation_id"]))
    node_b = start_ns_agent(cluster, net, "b", 3)
    time.sleep(STOP_AFTER + 1.0)  # in contact, nothing stops however long
    assert pid_alive(original)

    cut = time.monotonic()
    net.cut("a")
    wait_until(
        lambda: not pid_alive(original),
        timeout=STOP_AFTER + 10,
        interval=0.05,
        what="the cut-off copy stopped",
    )
    stopped_after = time.monotonic() - cut
    # The agent counts from its last answer, up to a heartbeat before the cut.
    assert stopped_after <= STOP_AFTER + 1.5, stopped_after

    def replaced():
        live = [a for a in cluster.live_allocs("lone") if a["status"] == "running"]
        return live[0] if len(live) == 1 and live[0]["node_id"] == node_b else None

    replacement = wait_until(replaced, timeout=NODE_TTL + 20, what="replacement on b")
    net.heal("a")
    wait_until(
        lambda: cluster.node(node_a)["healthy"], timeout=NODE_TTL + 10, what="node a healthy again"
    )
    time.sleep(NODE_TTL)  # and the stopped copy stays stopped
    live = [p for p in cluster.task_pids("lone").values() if pid_alive(p)]
    assert live == [cluster.task_pids("lone")[replacement["allocation_id"]]]
    print(
        f"\ndisconnect.stop_after {STOP_AFTER:g}s: the cut-off copy stopped "
        f"{stopped_after:.2f}s after the cut"
    )
