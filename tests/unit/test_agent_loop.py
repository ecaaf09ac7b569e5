"""Register + heartbeat against a tiny recording HTTP server (http.server)."""

import json
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orch.agent.agent import Agent
from orch.agent.allocrunner import AllocRunner
from orch.agent.spec import parse_alloc
from orch.config import AgentConfig

from waiting import wait_for

REGISTER_KEYS = {
    "node_id",
    "region",
    "resources",
    "healthy",
    "endpoint",
    "attributes",
    "meta",
    "port_range",  # issue #11: the dynamic port range
    "secret_id",
}
# The seed's heartbeat keys, the node's secret and the beat's number.
HEARTBEAT_KEYS = {"node_id", "resources", "healthy", "timestamp", "allocations", "secret_id", "seq"}
ALLOC_KEYS = {"status", "start_time", "end_time", "tasks"}
TASK_KEYS = {"status", "start_time", "end_time", "error", "exit_code", "restarts", "events"}


class FakeServer:
    """Records every request; answers 404 to the first `fail_heartbeats` heartbeats."""

    def __init__(self, port=0, fail_heartbeats=0, acks=False):
        self.requests = []  # (arrival time, path, body, headers)
        self.fail_heartbeats = fail_heartbeats
        # acks: answer numbered beats as orch's server does (ack, resync);
        # drop_beats: that many beats with reports answered 500 once recorded;
        # resync: that many beats answered with resync.
        self.acks = acks
        self.drop_beats = 0
        self.resync = 0
        self.unavailable = False  # every request answered 503, as with no leader
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with fake.lock:
                    fake.requests.append(
                        (time.time(), self.path, json.loads(raw), dict(self.headers))
                    )
                    status, answer = 200, {"message": "ok"}
                    if fake.unavailable:
                        status, answer = 503, {"error": "no leader elected yet"}
                    elif self.path == "/heartbeat" and fake.fail_heartbeats > 0:
                        fake.fail_heartbeats -= 1
                        status, answer = 404, {"error": "unknown node"}
                    elif self.path == "/heartbeat" and fake.acks:
                        status, answer = fake.answer(fake.requests[-1][2])
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def answer(self, beat):
        """A numbered beat's answer (lock held)."""
        if self.drop_beats > 0 and beat["allocations"]:
            self.drop_beats -= 1
            return 500, {"error": "lost"}
        resync = self.resync > 0
        self.resync -= resync
        return 200, {"message": "Heartbeat received", "ack": beat["seq"], "resync": resync}

    def bodies(self, path):
        with self.lock:
            return [(t, body) for t, p, body, _ in self.requests if p == path]

    def paths(self):
        with self.lock:
            return [p for _, p, _, _ in self.requests]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    made = []

    def make(**kw):
        server = FakeServer(**kw)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def agents():
    made = []

    def make(server_url, tmp_path, **kw):
        config = AgentConfig(
            server=server_url, data_dir=str(tmp_path), meta={"rack": "r1"}, kill_timeout=1.0, **kw
        )
        agent = Agent(config)
        made.append(agent)
        agent.start_loop("http://127.0.0.1:5555")
        return agent

    yield make
    for agent in made:
        agent.shutdown(stop_tasks=True)


def alloc(alloc_id, command, cpu=100, memory=64):
    return parse_alloc(_body(alloc_id, command, cpu, memory))


def _body(alloc_id, command, cpu=100, memory=64):
    return {
        "allocation_id": alloc_id,
        "job_id": "j1",
        "task_group": {
            "name": "g",
            "tasks": [
                {
                    "name": "t",
                    "config": {"command": command},
                    "resources": {"cpu": cpu, "memory": memory},
                }
            ],
        },
    }


def test_register_and_heartbeat_bodies(servers, agents, tmp_path):
    server = servers()
    agent = agents(server.url, tmp_path, heartbeat_interval=0.05)
    assert wait_for(lambda: len(server.bodies("/heartbeat")) >= 2)
    _, reg = server.bodies("/register")[0]
    assert set(reg) == REGISTER_KEYS
    assert reg["node_id"] == agent.node_id and reg["region"] == "global"
    assert reg["endpoint"] == "http://127.0.0.1:5555" and reg["healthy"] is True
    assert set(reg["resources"]) == {"cpu", "memory"}
    assert reg["resources"]["cpu"] > 0 and reg["resources"]["memory"] > 0
    assert reg["meta"] == {"rack": "r1"}
    attrs = reg["attributes"]
    # driver.docker answers for the engine on this machine (CI runs one).
    assert attrs["driver.exec"] is True and isinstance(attrs["driver.docker"], bool)
    assert {"os", "arch", "hostname", "cpu.cores", "kernel.version"} <= set(attrs)
    _, hb = server.bodies("/heartbeat")[0]
    assert set(hb) == HEARTBEAT_KEYS
    assert set(hb["resources"]) == {"cpu", "memory", "cpu_used", "memory_used"}
    assert hb["resources"]["cpu"] == reg["resources"]["cpu"]
    assert hb["resources"]["cpu_used"] == 0 and hb["allocations"] == {}
    assert hb["healthy"] is True and isinstance(hb["timestamp"], float)
    # The node's secret: the same in both, kept in the data dir for the agent only.
    secret_path = tmp_path / "node_secret"
    assert reg["secret_id"] == hb["secret_id"] == secret_path.read_text().strip()
    assert len(reg["secret_id"]) == 64 and secret_path.stat().st_mode & 0o777 == 0o600


def test_task_change_sends_a_heartbeat_at_once(servers, agents, tmp_path):
    server = servers()
    agent = agents(server.url, tmp_path, heartbeat_interval=30.0)
    assert wait_for(lambda: len(server.bodies("/heartbeat")) == 1)
    agent.submit(alloc("a1", "sleep 0.3", cpu=250, memory=100))
    runner = agent.get("a1")
    assert runner.wait(5)

    def first(status):
        for t, body in server.bodies("/heartbeat"):
            entry = body["allocations"].get("a1")
            if entry and entry["status"] == status:
                return t, body
        return None, None

    assert wait_for(lambda: first("complete")[0] is not None, 5.0)
    t_running, body = first("running")
    state = runner.tasks["t"].state
    # The interval is 30 s: a heartbeat this soon can only be the on-change one.
    assert t_running - state.start_time < 5.0
    entry = body["allocations"]["a1"]
    assert set(entry) == ALLOC_KEYS and set(entry["tasks"]["t"]) == TASK_KEYS
    assert body["resources"]["cpu_used"] == 250 and body["resources"]["memory_used"] == 100
    assert body["resources"]["cpu"] == agent.fingerprint.resources.cpu - 250
    t_complete, body = first("complete")
    assert t_complete - state.end_time < 5.0
    assert body["allocations"]["a1"]["tasks"]["t"]["exit_code"] == 0
    assert body["resources"]["cpu_used"] == 0
    # A burst of changes is coalesced: far fewer heartbeats than state changes.
    assert len(server.bodies("/heartbeat")) <= 6


def test_404_heartbeat_registers_again(servers, agents, tmp_path):
    server = servers(fail_heartbeats=1)
    agents(server.url, tmp_path, heartbeat_interval=30.0)
    # At once, not at the 30 s interval: 10 s leaves a loaded host its stalls.
    assert wait_for(lambda: len(server.bodies("/heartbeat")) >= 2, 10.0)
    assert server.paths()[:4] == ["/register", "/heartbeat", "/register", "/heartbeat"]


def test_registers_once_the_server_comes_up(servers, agents, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="orch.agent.loop")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    agent = agents(f"http://127.0.0.1:{port}", tmp_path, heartbeat_interval=30.0)
    # The server comes up only once the agent has found it down and is retrying.
    assert wait_for(lambda: "to register, retrying" in caplog.text, 5.0)
    assert not agent.loop.wait_registered(0)
    server = servers(port=port)
    up = time.monotonic()
    assert agent.loop.wait_registered(2.0)
    assert time.monotonic() - up < 2.5  # backoff is capped at 1 s
    # The first beat follows the registration, not the 30 s interval.
    assert wait_for(lambda: server.bodies("/heartbeat"), 10.0)


def test_bearer_token(servers, agents, tmp_path):
    server = servers()
    agents(server.url, tmp_path, heartbeat_interval=30.0, token="s3cret")
    assert wait_for(lambda: len(server.bodies("/heartbeat")) >= 1)
    with server.lock:
        headers = [h for _, _, _, h in server.requests]
    assert all(h.get("Authorization") == "Bearer s3cret" for h in headers)


def test_stop_ends_the_loop(servers, agents, tmp_path):
    server = servers()
    agent = agents(server.url, tmp_path, heartbeat_interval=0.02)
    assert wait_for(lambda: len(server.bodies("/heartbeat")) >= 2)
    count = len(server.bodies("/heartbeat"))
    agent.loop.stop()
    # stop() returns once the loop's thread has ended: nothing can send after it.
    assert not agent.loop._thread.is_alive()
    assert len(server.bodies("/heartbeat")) <= count + 1  # at most the one in flight


def test_finished_allocations_are_sent_until_the_server_has_them(servers, agents, tmp_path):
    server = servers()
    agent = agents(server.url, tmp_path, heartbeat_interval=0.1)
    agent.submit(alloc("done", "true"))
    assert agent.get("done").wait(5)

    def beats_with(alloc_id):
        return [b for _, b in server.bodies("/heartbeat") if alloc_id in b["allocations"]]

    assert wait_for(
        lambda: any(b["allocations"]["done"]["status"] == "complete" for b in beats_with("done")),
        5.0,
    )
    seen = len(server.bodies("/heartbeat"))
    assert wait_for(lambda: len(server.bodies("/heartbeat")) >= seen + 3, 5.0)
    later = server.bodies("/heartbeat")[seen:]
    assert all("done" not in body["allocations"] for _, body in later)


def test_what_a_heartbeat_reports_is_on_disk_first_or_in_the_run_record(servers, agents, tmp_path):
    """Between arrival and end, state is written by the loop before it reports
    it, unless the driver keeps it: an exec task's start is in its run record."""
    server = servers()
    agent = agents(server.url, tmp_path, heartbeat_interval=30.0, restart_delay=30.0)
    agent.submit(alloc("a1", "sleep 30"))
    assert wait_for(lambda: _reported(server, "a1", "running"), 5.0)
    with open(tmp_path / "allocs" / "a1" / "alloc.json") as f:
        doc = json.load(f)
    assert doc["tasks"]["t"]["status"] == "pending" and not doc["handles"]  # as it arrived
    # An agent restarted from that file finds the very process running.
    runner = agent.get("a1")
    restored = AllocRunner.restore(doc, runner.spec, agent.config, agent.drivers, agent.store)
    assert restored.status().value == "running"
    assert restored.tasks["t"]._handle.pid == runner.tasks["t"]._handle.pid
    # A restart count is no driver's to keep: on disk before it is reported.
    agent.submit(parse_alloc({**_body("a2", "exit 3"), "job_type": "service"}))

    def restarted() -> bool:
        return any(
            body["allocations"].get("a2", {}).get("tasks", {}).get("t", {}).get("restarts")
            for _, body in server.bodies("/heartbeat")
        )

    assert wait_for(restarted, 5.0)
    with open(tmp_path / "allocs" / "a2" / "alloc.json") as f:
        assert json.load(f)["tasks"]["t"]["restarts"] == 1


def test_a_stream_of_changes_is_reported_in_spaced_heartbeats(servers, agents, tmp_path):
    from orch.agent.loop import MIN_SPACING

    server = servers()
    agent = agents(server.url, tmp_path, heartbeat_interval=30.0)
    assert wait_for(lambda: len(server.bodies("/heartbeat")) == 1)
    started = time.monotonic()
    while time.monotonic() - started < 0.5:
        agent.loop.notify()  # a change every millisecond
        time.sleep(0.001)
    took = time.monotonic() - started
    beats = [t for t, _ in server.bodies("/heartbeat")[1:]]
    assert beats, "changes must be reported"
    # One heartbeat per MIN_SPACING at most (one more for the one in flight).
    assert len(beats) <= took / MIN_SPACING + 2


def test_acknowledged_finished_allocations_beyond_gc_keep_are_collected(servers, agents, tmp_path):
    server = servers()
    agent = agents(server.url, tmp_path, heartbeat_interval=0.05, gc_keep=3)
    for i in range(10):
        agent.submit(alloc(f"b{i}", "true"))
        assert agent.get(f"b{i}").wait(5)
    # Every allocation reached the server as complete before it was collected.
    assert wait_for(
        lambda: all(
            any(
                b["allocations"].get(f"b{i}", {}).get("status") == "complete"
                for _, b in server.bodies("/heartbeat")
            )
            for i in range(10)
        ),
        5.0,
    )
    assert wait_for(lambda: len(agent.allocations()) == 3, 5.0)
    kept = sorted(r.spec.allocation_id for r in agent.allocations())
    assert kept == ["b7", "b8", "b9"]  # the newest stay, for their logs
    # Nothing else is remembered (the loop thread may be finishing the removal).
    assert wait_for(lambda: agent.loop._acked == set(kept) and agent.store._removed == set())
    assert sorted(os.listdir(tmp_path / "allocs")) == kept


def test_a_cut_off_agent_stops_tasks_after_disconnect_stop_after(servers, agents, tmp_path):
    server = servers()
    agent = agents(server.url, tmp_path, heartbeat_interval=0.05)
    spec = parse_alloc(
        {
            "allocation_id": "svc",
            "job_id": "j1",
            "job_type": "service",
            "task_group": {
                "name": "g",
                "disconnect": {"stop_after": 0.5},
                "tasks": [{"name": "t", "config": {"command": "sleep 300"}}],
            },
        }
    )
    agent.submit(spec)
    agent.submit(alloc("plain", "sleep 300"))  # no stop_after: left running
    assert wait_for(lambda: agent.get("svc").tasks["t"].handle_json is not None)
    time.sleep(1.0)  # in contact: nothing stops
    assert agent.get("svc").status().value == "running"
    server.close()
    cut = time.monotonic()
    assert agent.get("svc").wait(5.0)
    assert time.monotonic() - cut < 0.5 + 1.5  # stop_after + a small margin
    state = agent.get("svc").tasks["t"].state
    assert state.status.value == "failed" and "disconnect" in state.error
    assert agent.get("plain").status().value == "running"


def test_a_server_with_no_leader_is_no_contact_for_stop_after(servers, agents, tmp_path):
    # A 503 (no leader: the database is away) refreshes no TTL on the server:
    # as in Nomad, it is a failed heartbeat, and stop_after runs on.
    server = servers()
    agent = agents(server.url, tmp_path, heartbeat_interval=0.05)
    doc = _body("svc", "sleep 300")
    doc["task_group"]["disconnect"] = {"stop_after": 0.5}
    agent.submit(parse_alloc(doc))
    assert wait_for(lambda: agent.get("svc").tasks["t"].handle_json is not None)
    server.unavailable = True
    cut = time.monotonic()
    assert agent.get("svc").wait(5.0)
    assert time.monotonic() - cut < 0.5 + 1.5
    assert server.bodies("/heartbeat")[-1][0] > cut  # it was answered, with 503s


def test_the_housekeeping_looks_only_at_allocations_with_stop_after(servers, agents, tmp_path):
    server = servers()
    agent = agents(server.url, tmp_path, heartbeat_interval=0.05)
    doc = _body("svc", "sleep 300")
    doc["task_group"]["disconnect"] = {"stop_after": 30}
    agent.submit(parse_alloc(doc))
    agent.submit(alloc("plain", "sleep 300"))
    assert agent._stop_after == {"svc"}
    plain = agent.get("plain")
    looked: list[str] = []
    plain.spec = _Watched(plain.spec, looked)
    agent._stop_disconnected(set())
    assert looked == []  # a round does not walk what cannot be stopped
    agent.stop_alloc("svc")
    assert agent._stop_after == set()


class _Watched:
    """A spec that notes who reads its stop_after."""

    def __init__(self, spec, looked):
        self._spec, self._looked = spec, looked

    def __getattr__(self, name):
        if name == "stop_after":
            self._looked.append(name)
        return getattr(self._spec, name)


def test_beats_carry_only_changes_once_the_server_acknowledges(servers, agents, tmp_path):
    server = servers(acks=True)
    agent = agents(server.url, tmp_path, heartbeat_interval=0.05)
    agent.submit(alloc("a1", "sleep 30"))
    assert wait_for(lambda: agent.get("a1").status().value == "running", 5.0)
    assert wait_for(lambda: _reported(server, "a1", "running"), 5.0)
    count = len(server.bodies("/heartbeat"))
    assert wait_for(lambda: len(server.bodies("/heartbeat")) >= count + 3, 5.0)
    later = [body for _, body in server.bodies("/heartbeat")[count:]]
    # Nothing changed: numbered delta beats without the running allocation.
    assert all(body["delta"] is True and body["allocations"] == {} for body in later)
    seqs = [body["seq"] for _, body in server.bodies("/heartbeat")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    agent.stop_alloc("a1")
    assert wait_for(lambda: _reported(server, "a1", "stopped"), 5.0)


def test_a_change_in_a_lost_beat_is_sent_again(servers, agents, tmp_path):
    server = servers(acks=True)
    agent = agents(server.url, tmp_path, heartbeat_interval=0.05)
    assert wait_for(lambda: any(b.get("delta") for _, b in server.bodies("/heartbeat")), 5.0)
    with server.lock:
        server.drop_beats = 3
    agent.submit(alloc("a1", "sleep 30"))
    assert wait_for(lambda: server.drop_beats == 0, 5.0)

    def carrying_a1() -> list[dict]:
        return [body for _, body in server.bodies("/heartbeat") if "a1" in body["allocations"]]

    lost = max(body["seq"] for body in carrying_a1())
    # The lost beats' change goes again in the next beat, which is acknowledged.
    assert wait_for(lambda: any(body["seq"] > lost for body in carrying_a1()), 5.0)
    assert wait_for(lambda: _reported(server, "a1", "running"), 5.0)
    beats = [body for _, body in server.bodies("/heartbeat") if "a1" in body["allocations"]]
    # Every beat until one was acknowledged carried the allocation; then none.
    assert len(beats) >= 4
    last = server.bodies("/heartbeat")[-1][1]["seq"]
    assert wait_for(lambda: server.bodies("/heartbeat")[-1][1]["seq"] >= last + 2, 5.0)
    assert "a1" not in server.bodies("/heartbeat")[-1][1]["allocations"]


def test_a_delta_beat_looks_only_at_the_allocations_that_changed(servers, agents, tmp_path):
    server = servers(acks=True)
    agent = agents(server.url, tmp_path, heartbeat_interval=0.05)
    for alloc_id in ("a1", "a2"):
        agent.submit(alloc(alloc_id, "sleep 30"))
    assert wait_for(lambda: _reported(server, "a1", "running"), 5.0)
    assert wait_for(lambda: _reported(server, "a2", "running"), 5.0)
    asked: list = []
    reports = agent.loop._reports
    agent.loop._reports = lambda exclude, only: asked.append(only) or reports(exclude, only)
    # Quiet: delta beats build no allocation's report at all.
    assert wait_for(lambda: len(asked) >= 2, 5.0)
    assert all(only == set() for only in asked)
    agent.get("a1").record_check("web/alive", True, "ok", time.time())
    assert wait_for(lambda: {"a1"} in asked, 5.0)
    assert "a2" not in set().union(*(only or set() for only in asked))
    assert wait_for(
        lambda: any(
            "checks" in body["allocations"].get("a1", {}) and body.get("delta")
            for _, body in server.bodies("/heartbeat")
        ),
        5.0,
    )


def test_used_resources_leave_with_the_finished_allocations(servers, agents, tmp_path):
    server = servers(acks=True)
    agent = agents(server.url, tmp_path, heartbeat_interval=0.05)
    agent.submit(alloc("a1", "sleep 30", cpu=100, memory=64))
    agent.submit(alloc("a2", "true", cpu=30, memory=16))
    assert wait_for(lambda: agent.get("a2").finished, 5.0)
    assert agent.used() == (100, 64)
    assert agent._held == {"a1": (100, 64)}  # the finished one holds nothing
    assert not agent._unaccounted  # nothing changed since: the next beat reads no allocation
    agent.submit(alloc("a3", "sleep 30", cpu=7, memory=5))
    assert agent.used() == (107, 69)
    agent.stop_alloc("a1")
    agent.stop_alloc("a3")
    assert agent.used() == (0, 0) and not agent._held


def test_resync_asked_gets_a_full_beat(servers, agents, tmp_path):
    server = servers(acks=True)
    agent = agents(server.url, tmp_path, heartbeat_interval=0.05)
    agent.submit(alloc("a1", "sleep 30"))
    assert wait_for(lambda: _reported(server, "a1", "running"), 5.0)
    assert wait_for(lambda: server.bodies("/heartbeat")[-1][1]["allocations"] == {}, 5.0)
    with server.lock:
        server.resync = 1
        count = len(server.requests)
    assert wait_for(lambda: _full_after(server, count), 5.0)
    full = _full_after(server, count)
    assert "a1" in full["allocations"] and "delta" not in full


def _reported(server, alloc_id, status):
    return any(
        body["allocations"].get(alloc_id, {}).get("status") == status
        for _, body in server.bodies("/heartbeat")
    )


def _full_after(server, count):
    with server.lock:
        later = [body for _, path, body, _ in server.requests[count:] if path == "/heartbeat"]
    return next((body for body in later if not body.get("delta")), None)


def test_a_change_after_a_quiet_spell_is_reported_without_a_timer(
    servers, agents, tmp_path, monkeypatch
):
    """A quiet node's change goes at once; only one sooner than MIN_SPACING
    after the last beat waits (the old 5 ms coalescing timer is gone)."""
    import orch.agent.loop as loop_module

    # Not the real 15 ms: a loaded host stalled the test longer than that
    # between a beat and the next change, which then had nothing to wait out.
    spacing = 1.0
    monkeypatch.setattr(loop_module, "MIN_SPACING", spacing)
    server = servers()
    agent = agents(server.url, tmp_path, heartbeat_interval=30.0)
    assert wait_for(lambda: len(server.bodies("/heartbeat")) == 1)
    loop = agent.loop
    waits = _record_spacing_waits(loop)
    time.sleep(spacing * 1.5)  # quiet: the last beat is older than the spacing
    loop.notify()
    assert wait_for(lambda: len(server.bodies("/heartbeat")) == 2)
    assert waits == [], f"a quiet node's change waited {waits} s before its beat"
    # Right behind that beat, a change waits out the spacing, no longer. (A
    # stall past the spacing leaves it nothing to wait: tried again behind
    # the next beat, a few times.)
    for _ in range(5):
        beats = len(server.bodies("/heartbeat"))
        loop.notify()
        assert wait_for(lambda n=beats: len(server.bodies("/heartbeat")) == n + 1, spacing + 5)
        if waits:
            break
    assert len(waits) == 1 and 0 < waits[0] <= spacing


def _record_spacing_waits(loop, ends: list[bool] | None = None) -> list[float]:
    """The loop's waits for the spacing, recorded as they happen; ``ends``
    gets how each ended (True: cut short by news, False: timed out)."""
    waits: list[float] = []
    real_wait = loop._news.wait

    def recording_wait(timeout=None):
        waits.append(timeout)
        ended = real_wait(timeout)
        if ends is not None:
            ends.append(ended)
        return ended

    loop._news.wait = recording_wait
    return waits


def test_news_goes_at_once_however_recent_the_last_beat(servers, agents, tmp_path, monkeypatch):
    """An allocation's first report is not held back by the spacing (a user
    waits for it); a later change of one already reported still is.

    On a loaded host the submitting thread's own look at an allocation after
    its start (AllocRunner.start) may come after the task's report went as
    news: a change of an allocation already reported, which waits out the
    spacing and may go in a beat carrying nothing new. The test counts those
    late changes and lets each have its wait and its beat, no more."""
    import orch.agent.loop as loop_module

    # Any spacing wait is plain, and a loaded host's stall between a beat and
    # the next change stays well inside it (2 s was outlasted once in CI).
    spacing = 4.0
    monkeypatch.setattr(loop_module, "MIN_SPACING", spacing)
    server = servers(acks=True)
    agent = agents(server.url, tmp_path, heartbeat_interval=30.0)
    loop = agent.loop
    assert wait_for(lambda: loop._deltas)  # news is known only to a server taking deltas
    ends: list[bool] = []
    waits = _record_spacing_waits(loop, ends)
    notes = _record_notifies(loop)
    started = time.monotonic()
    for alloc_id in ("a1", "a2", "a3"):  # each starts right behind the last one's beat
        agent.submit(_service(alloc_id, "sleep 30"))
        assert wait_for(lambda a=alloc_id: _reported(server, a, "running"), 5.0)
    assert time.monotonic() - started < spacing
    # No first report waited the spacing out; late changes alone waited.
    assert False not in ends and len(waits) <= sum(notes)
    _settle(loop, spacing)
    # A change of an allocation already reported waits out the spacing...
    count, seen = len(server.bodies("/heartbeat")), len(waits)
    loop.notify("a1")
    assert wait_for(lambda: len(waits) == seen + 1)
    assert 0 < waits[seen] <= spacing
    # ...unless news comes meanwhile: it goes at once, and the loop's wait
    # ends without a beat of its own carrying nothing. (A later change of a4
    # may follow in a beat of its own if the news beat was built before it.)
    notes.clear()
    agent.submit(_service("a4", "sleep 30"))
    assert wait_for(lambda: _reported(server, "a4", "running"), spacing + 3.0)
    # At once: its beat cut the spacing wait short (told by how the wait
    # ended, not by a 1.5 s bound a loaded host can outlast).
    assert wait_for(lambda: len(ends) > seen) and ends[seen] is True
    later = server.bodies("/heartbeat")[count:]
    assert "a4" in later[0][1]["allocations"]
    assert sum(1 for _, body in later if not body["allocations"]) <= sum(notes)
    assert loop._announced >= {"a1", "a2", "a3", "a4"}
    loop.forget("a4")
    assert "a4" not in loop._announced
    _settle(loop, spacing)
    # A batch allocation's start is no news: it waits out the spacing.
    seen = len(waits)
    agent.submit(alloc("b1", "sleep 30"))
    assert wait_for(lambda: len(waits) > seen)
    assert wait_for(lambda: _reported(server, "b1", "running"), spacing + 3.0)


def _record_notifies(loop) -> list[bool]:
    """For each change the loop is told of, whether its allocation had been
    reported already (the late look of a submitting thread is one)."""
    notes: list[bool] = []
    real_notify = loop.notify

    def recording_notify(alloc_id=None, awaited=False, hold=False):
        notes.append(alloc_id in loop._announced)
        return real_notify(alloc_id, awaited, hold)

    loop.notify = recording_notify
    return notes


def _settle(loop, spacing: float) -> None:
    """Until the loop owes no beat: every change taken by one, none in flight."""
    assert wait_for(
        lambda: (
            loop._wakes_taken == loop._wakes
            and not loop._wake.is_set()
            and not loop._beating.locked()
        ),
        spacing + 5.0,
    )


def _service(alloc_id, command):
    return parse_alloc({**_body(alloc_id, command), "job_type": "service"})


def _record_beat_threads(loop) -> list[tuple[str, bytes]]:
    """(thread name, body) of each heartbeat the loop sends, as it is sent."""
    sent: list[tuple[str, bytes]] = []
    real_post = loop._post

    def recording_post(path, body, timeout):
        if path == "/heartbeat":
            sent.append((threading.current_thread().name, body))
        return real_post(path, body, timeout)

    loop._post = recording_post
    return sent


def _carrier(sent, alloc_id: str) -> str:
    """The thread that sent the first beat reporting the allocation running."""
    for name, body in sent:
        entry = json.loads(body)["allocations"].get(alloc_id)
        if entry and entry["status"] == "running":
            return name
    raise AssertionError(f"no beat reported {alloc_id} running")


def test_news_goes_from_the_thread_that_learnt_it(servers, agents, tmp_path):
    """No beat in flight: the first report goes from the notifying thread
    (the supervisor's reader), not through a wake-up of the loop's thread,
    and the loop sends no empty beat after it."""
    server = servers(acks=True)
    agent = agents(server.url, tmp_path, heartbeat_interval=30.0)
    loop = agent.loop
    assert wait_for(lambda: loop._deltas)
    sent = _record_beat_threads(loop)
    agent.submit(_service("a1", "sleep 30"))
    assert wait_for(lambda: _reported(server, "a1", "running"), 5.0)
    assert _carrier(sent, "a1") != "node-loop"
    time.sleep(0.3)  # the loop's thread, had it been woken, would have beaten by now
    assert len(sent) == 1
    # A batch allocation's start is no news: the loop's thread sends it.
    agent.submit(alloc("b1", "sleep 30"))
    assert wait_for(lambda: _reported(server, "b1", "running"), 5.0)
    assert _carrier(sent, "b1") == "node-loop"


def test_news_meeting_a_beat_in_flight_is_left_to_the_loop(servers, agents, tmp_path):
    server = servers(acks=True)
    agent = agents(server.url, tmp_path, heartbeat_interval=30.0)
    loop = agent.loop
    assert wait_for(lambda: loop._deltas)
    sent = _record_beat_threads(loop)
    with loop._beating:  # a beat in flight
        agent.submit(_service("a1", "sleep 30"))
        assert wait_for(lambda: agent.get("a1").status().value == "running", 5.0)
        time.sleep(0.1)
        assert sent == []
    assert wait_for(lambda: _reported(server, "a1", "running"), 5.0)
    assert _carrier(sent, "a1") == "node-loop"


def test_a_news_beat_that_fails_leaves_news_to_the_loop_until_it_is_answered(
    servers, agents, tmp_path
):
    server = servers(acks=True)
    agent = agents(server.url, tmp_path, heartbeat_interval=30.0)
    loop = agent.loop
    assert wait_for(lambda: loop._deltas)
    sent = _record_beat_threads(loop)
    server.fail_heartbeats = 1  # the news beat meets a server that lost us
    agent.submit(_service("a1", "sleep 30"))
    assert wait_for(lambda: sent, 5.0) and sent[0][0] != "node-loop"
    assert wait_for(lambda: not loop._news_here or len(sent) > 1, 5.0)
    # The loop registers again and reports it in its next beat, which
    # lets news go from where it is learnt again.
    assert wait_for(lambda: len(server.bodies("/register")) == 2, 5.0)
    assert wait_for(lambda: loop._news_here, 5.0)
    assert _carrier(sent[1:], "a1") == "node-loop"


def test_an_allocation_not_started_yet_wakes_no_heartbeat(servers, agents, tmp_path):
    """Arrival is no news to the server (it placed the allocation pending):
    the first beat an allocation causes carries a started (or failed) task."""
    from orch.structs import AllocStatus

    server = servers()
    agent = agents(server.url, tmp_path, heartbeat_interval=30.0)
    assert wait_for(lambda: len(server.bodies("/heartbeat")) == 1)
    seen: list[tuple] = []
    real_notify = agent.loop.notify

    def recording_notify(alloc_id=None, awaited=False, hold=False):
        runner = agent._allocs.get("a1")
        if runner is not None:
            seen.append((runner.status(), runner.last_task_start()))
        real_notify(alloc_id, awaited, hold)

    agent.loop.notify = recording_notify
    agent.submit(alloc("a1", "sleep 0.2"))
    assert agent.get("a1").wait(5)
    assert seen, "the allocation's changes must wake the loop"
    assert all(status != AllocStatus.PENDING or started for status, started in seen), seen

    def reported():
        return [
            body["allocations"]["a1"]["status"]
            for _, body in server.bodies("/heartbeat")
            if "a1" in body["allocations"]
        ]

    assert wait_for(lambda: "complete" in reported())
    assert reported()[0] != "pending", reported()


class RecordingEvent(threading.Event):
    """An Event that notes every timeout it is waited with."""

    def __init__(self):
        super().__init__()
        self.timeouts: list[float | None] = []

    def wait(self, timeout=None):
        self.timeouts.append(timeout)
        return super().wait(timeout)


def test_a_first_registration_retries_at_the_start_interval_through_the_grace(
    servers, agents, tmp_path
):
    """`orch dev` starts agents beside their server: no doubling while it comes up."""
    from orch.agent import loop as node_loop

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    agent = agents(f"http://127.0.0.1:{port}", tmp_path, heartbeat_interval=30.0)
    agent.loop._stop = stop = RecordingEvent()
    assert wait_for(lambda: len(stop.timeouts) >= 4, 5.0)
    assert stop.timeouts[:4] == [node_loop.BACKOFF_START] * 4
    servers(port=port)
    assert agent.loop.wait_registered(2.0)


def _statuses(server, alloc_id) -> list[str]:
    """The statuses the beats reported for the allocation, in order."""
    return [
        body["allocations"][alloc_id]["status"]
        for _, body in server.bodies("/heartbeat")
        if alloc_id in body["allocations"]
    ]


def test_a_short_batch_allocation_is_reported_once_it_has_ended(
    servers, agents, tmp_path, monkeypatch
):
    """Its first report waits for its end (BATCH_HOLD): one report, complete,
    with the task's start, exit code and events, instead of running then
    complete; the end goes at once, without waiting out the hold."""
    import orch.agent.loop as loop_module

    monkeypatch.setattr(loop_module, "BATCH_HOLD", 30.0)
    server = servers(acks=True)
    agent = agents(server.url, tmp_path, heartbeat_interval=30.0)
    assert wait_for(lambda: agent.loop._deltas)
    agent.submit(alloc("b1", "sleep 0.3"))
    assert wait_for(lambda: _statuses(server, "b1"), 10.0)
    assert _statuses(server, "b1") == ["complete"]
    entry = next(
        body["allocations"]["b1"]
        for _, body in server.bodies("/heartbeat")
        if "b1" in body["allocations"]
    )
    task = entry["tasks"]["t"]
    assert task["exit_code"] == 0 and task["start_time"] and entry["start_time"]
    assert task["start_time"] < task["end_time"] and task["events"]
    assert not agent.loop._held


def test_a_held_batch_report_goes_when_the_hold_ends(servers, agents, tmp_path, monkeypatch):
    """A batch allocation still running when its hold ends is reported then,
    by the loop's thread, without another change and long before the
    heartbeat interval; a service allocation's start is never held."""
    import orch.agent.loop as loop_module

    monkeypatch.setattr(loop_module, "BATCH_HOLD", 0.3)
    server = servers(acks=True)
    agent = agents(server.url, tmp_path, heartbeat_interval=30.0)
    loop = agent.loop
    assert wait_for(lambda: loop._deltas)
    time.sleep(0.2)  # the loop is in its long idle wait: the hold must wake it
    sent = _record_beat_threads(loop)
    agent.submit(alloc("b1", "sleep 30"))
    assert wait_for(lambda: _statuses(server, "b1"), 10.0)
    assert _statuses(server, "b1") == ["running"]
    assert _carrier(sent, "b1") == "node-loop"
    beat_time = next(t for t, body in server.bodies("/heartbeat") if "b1" in body["allocations"])
    started = agent.get("b1").tasks["t"].state.start_time
    assert beat_time - started >= 0.3 - 0.05  # held, not sent at the start
    agent.submit(_service("s1", "sleep 30"))
    assert wait_for(lambda: _statuses(server, "s1"), 10.0)
    assert "s1" not in loop._held


def test_a_hold_runs_out_even_without_its_change(servers, agents, tmp_path):
    """A hold whose change is not pending any more (lost with a beat that
    raised) ends when due: a hold left due would wake the loop again and again."""
    server = servers(acks=True)
    agent = agents(server.url, tmp_path, heartbeat_interval=30.0)
    loop = agent.loop
    assert wait_for(lambda: loop._deltas)
    now = time.monotonic()
    with loop._changed_lock:
        loop._held.update({"gone": now - 1.0, "later": now + 60.0})
    changed = {"later", "other"}
    assert loop._hold_back(changed, full=False) == {"later"}
    assert changed == {"other"} and list(loop._held) == ["later"]
    assert loop._hold_back({"later"}, full=True) == set() and not loop._held


def _beat_time(server, alloc_id) -> float:
    """When the server received the first beat carrying the allocation."""
    return next(t for t, body in server.bodies("/heartbeat") if alloc_id in body["allocations"])


def test_batch_reports_alone_are_spaced_batch_spacing_apart(servers, agents, tmp_path, monkeypatch):
    """Batch allocations' ends behind a recent beat wait out BATCH_SPACING
    and go together; any other change ends that wait (MIN_SPACING is its)."""
    import orch.agent.loop as loop_module

    monkeypatch.setattr(loop_module, "BATCH_SPACING", 3.0)
    server = servers(acks=True)
    agent = agents(server.url, tmp_path, heartbeat_interval=30.0)
    loop = agent.loop
    assert wait_for(lambda: loop._deltas)
    time.sleep(0.1)  # quiet: the first end goes at once
    agent.submit(alloc("b1", "true"))
    assert wait_for(lambda: _statuses(server, "b1"), 10.0)
    agent.submit(alloc("b2", "true"))
    agent.submit(alloc("b3", "true"))
    assert wait_for(lambda: _statuses(server, "b2") and _statuses(server, "b3"), 10.0)
    # (the spacing counts from the send; the server saw b1 a little later)
    assert _beat_time(server, "b2") - _beat_time(server, "b1") >= 3.0 - 0.5
    assert _beat_time(server, "b2") == _beat_time(server, "b3")  # one beat
    # Behind that beat, a batch end waits again, until another change comes.
    agent.submit(alloc("b4", "true"))
    assert agent.get("b4").wait(5)
    assert wait_for(lambda: loop._stretched, 5.0)  # waiting out the batch spacing
    loop.notify()
    assert wait_for(lambda: _statuses(server, "b4"), 10.0)
    assert _beat_time(server, "b4") - _beat_time(server, "b2") < 2.5


def test_a_waited_batch_allocation_is_not_held_for_the_spacing(
    servers, agents, tmp_path, monkeypatch
):
    """POST /allocations/hurry (a client's blocking read on the job): the
    allocation's end goes at once however recent the last beat, and an end
    already waiting out the spacing goes when the hurry comes."""
    import orch.agent.loop as loop_module

    monkeypatch.setattr(loop_module, "BATCH_SPACING", 3.0)
    server = servers(acks=True)
    agent = agents(server.url, tmp_path, heartbeat_interval=30.0)
    loop = agent.loop
    assert wait_for(lambda: loop._deltas)
    time.sleep(0.1)
    agent.submit(alloc("b1", "true"))
    assert wait_for(lambda: _statuses(server, "b1"), 10.0)
    # Waited on before it arrives (the hurry may overtake the push).
    assert agent.hurry(["b2"]) == 0
    agent.submit(alloc("b2", "true"))
    assert wait_for(lambda: _statuses(server, "b2"), 10.0)
    assert _beat_time(server, "b2") - _beat_time(server, "b1") < 2.0
    # Not waited on: its end waits out the spacing, until the hurry.
    agent.submit(alloc("b3", "true"))
    assert agent.get("b3").wait(5)
    assert wait_for(lambda: loop._stretched, 5.0)
    assert agent.hurry(["b3", "elsewhere"]) == 1
    assert wait_for(lambda: _statuses(server, "b3"), 10.0)
    assert _beat_time(server, "b3") - _beat_time(server, "b2") < 2.0
    assert _statuses(server, "b3") == ["complete"]
