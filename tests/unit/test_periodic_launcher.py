"""The periodic launcher on a real store with an injected clock."""

from datetime import UTC, datetime

import pytest

from orch.errors import Conflict, ValidationError
from orch.jobspec import parse_job
from orch.server.periodic import PeriodicLauncher, latest_due, next_launch
from orch.server.planner import new_eval
from orch.server.state import StateStore
from orch.structs import (
    Allocation,
    AllocStatus,
    JobStatus,
    Node,
    Plan,
    Resources,
    TriggeredBy,
    replace,
)

T0 = datetime(2026, 1, 1, 10, 0, 30, tzinfo=UTC).timestamp()  # 10:00:30 UTC


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def periodic_body(job_id="nightly", **periodic):
    periodic.setdefault("crons", ["*/5 * * * *"])
    return {
        "job_id": job_id,
        "periodic": periodic,
        "meta": {"owner": "ops"},
        "task_groups": [{"name": "g", "tasks": [{"name": "t", "config": {"command": "true"}}]}],
    }


@pytest.fixture
def clock():
    return Clock(T0)


def open_store(path, clock):
    return StateStore(str(path), now=clock)


def submit(store, body, clock):
    job = parse_job(body)
    store.submit_job(job, lambda trigger: new_eval(job.job_id, trigger, clock()))
    return job


def children(store, job_id="nightly"):
    return sorted(c.job_id for c in store.children_of(job_id))


def test_launches_at_each_due_time_once(tmp_path, clock):
    store = open_store(tmp_path, clock)
    submit(store, periodic_body(), clock)
    queued = []
    launcher = PeriodicLauncher(store, queued.append, now=clock)
    assert launcher.tick() == []  # 10:00 was before the job existed
    clock.t += 269  # 10:04:59
    assert launcher.tick() == []
    clock.t += 1  # 10:05:00 exactly
    due = int(datetime(2026, 1, 1, 10, 5, tzinfo=UTC).timestamp())
    assert launcher.tick() == [f"nightly-periodic-{due}"]
    assert launcher.tick() == []
    child = store.get_job(f"nightly-periodic-{due}")
    assert child.parent_id == "nightly" and child.periodic is None
    assert child.meta == {"owner": "ops"}
    assert [e.job_id for e in queued] == [child.job_id]


def test_restart_fires_the_missed_launch_once(tmp_path, clock):
    store = open_store(tmp_path, clock)
    submit(store, periodic_body(), clock)
    clock.t += 270
    assert len(PeriodicLauncher(store, lambda e: None, now=clock).tick()) == 1
    store.close()
    # Down for 20 minutes: four launches were due; Nomad launches the latest.
    clock.t += 20 * 60
    store = open_store(tmp_path, clock)
    launcher = PeriodicLauncher(store, lambda e: None, now=clock)
    due = int(datetime(2026, 1, 1, 10, 25, tzinfo=UTC).timestamp())
    assert launcher.tick() == [f"nightly-periodic-{due}"]
    store.close()
    # Killed right after the launch: the new launcher does not fire it again.
    store = open_store(tmp_path, clock)
    assert PeriodicLauncher(store, lambda e: None, now=clock).tick() == []
    assert len(children(store)) == 2


def test_prohibit_overlap_skips_while_the_child_runs(tmp_path, clock):
    store = open_store(tmp_path, clock)
    submit(store, periodic_body(prohibit_overlap=True), clock)
    launcher = PeriodicLauncher(store, lambda e: None, now=clock)
    clock.t += 270
    [first] = launcher.tick()
    # The child runs: placed on a node, reported running.
    store.upsert_node(Node("n1", resources=Resources(1000, 1000), endpoint="http://127.0.0.1:1"))
    alloc = Allocation("a1", first, "g", "n1", 0, resources=Resources(100, 64))
    store.commit_plan(Plan("e1", first, place=[alloc]), [])
    store.update_allocs([replace(alloc, client_status=AllocStatus.RUNNING)])
    clock.t += 300
    assert launcher.tick() == []  # skipped, and not owed later
    store.update_allocs([replace(alloc, client_status=AllocStatus.COMPLETE)])
    assert launcher.tick() == []
    clock.t += 300
    assert len(launcher.tick()) == 1
    assert len(children(store)) == 2


def test_disabled_and_stopped_jobs_launch_nothing(tmp_path, clock):
    store = open_store(tmp_path, clock)
    submit(store, periodic_body("off", enabled=False), clock)
    submit(store, periodic_body("stopped"), clock)
    store.stop_job("stopped", new_eval("stopped", TriggeredBy.JOB_DEREGISTER, clock()))
    clock.t += 3600
    assert PeriodicLauncher(store, lambda e: None, now=clock).tick() == []


def test_time_zone_is_honoured():
    periodic = {"crons": ["0 3 * * *"], "time_zone": "Europe/Berlin", "enabled": True}
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp()
    # 03:00 in Berlin is 02:00 UTC in winter.
    assert next_launch(periodic, now) == datetime(2026, 1, 2, 2, 0, tzinfo=UTC).timestamp()
    assert latest_due(periodic, now) == datetime(2026, 1, 1, 2, 0, tzinfo=UTC).timestamp()
    assert next_launch({**periodic, "enabled": False}, now) is None


def test_force_launches_now_and_not_twice_a_second(tmp_path, clock):
    store = open_store(tmp_path, clock)
    submit(store, periodic_body(), clock)
    launcher = PeriodicLauncher(store, lambda e: None, now=clock)
    child = launcher.force("nightly")
    assert child.job_id == f"nightly-periodic-{int(T0)}"
    with pytest.raises(Conflict):
        launcher.force("nightly")
    submit(store, {**periodic_body("plain"), "periodic": None}, clock)
    with pytest.raises(ValidationError):
        launcher.force("plain")
    # enabled false launches nothing, forced or not (it launched a child).
    submit(store, periodic_body("off", enabled=False), clock)
    with pytest.raises(Conflict, match="not enabled"):
        launcher.force("off")
    assert children(store, "off") == []


def test_children_survive_a_purged_parent(tmp_path, clock):
    store = open_store(tmp_path, clock)
    submit(store, periodic_body(), clock)
    child = PeriodicLauncher(store, lambda e: None, now=clock).force("nightly")
    store.delete_job("nightly")
    assert store.get_job(child.job_id) is not None
    assert store.last_launch("nightly") is None
    assert store.get_job(child.job_id).status == JobStatus.PENDING


def test_children_are_read_while_other_jobs_come_and_go(tmp_path, clock):
    """Writers add and remove jobs without waiting for readers: a list of
    children walked the live dict, and a change meanwhile raised "dictionary
    changed size during iteration" (a 500 on GET /v1/jobs)."""
    import threading

    store = open_store(tmp_path, clock)
    submit(store, periodic_body(), clock)
    jobs = store._jobs  # the store's own map, churned as a writer churns it
    others = {f"other-{i}": jobs["nightly"] for i in range(2000)}
    jobs.update(others)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            jobs.pop("churn", None)
            jobs["churn"] = jobs["nightly"]

    writer = threading.Thread(target=churn, daemon=True)
    writer.start()
    try:
        for _ in range(300):
            assert children(store) == []
    finally:
        stop.set()
        writer.join(5)
        for key in [*others, "churn"]:
            jobs.pop(key, None)
        store.close()


def test_a_cron_no_calendar_has_is_refused():
    for cron in ("0 0 30 2 *", "0 0 31 4 *", "0 0 30-31 2 *"):
        with pytest.raises(ValidationError, match="is never due"):
            parse_job(periodic_body(crons=[cron]))
    parse_job(periodic_body(crons=["0 0 29 2 *"]))  # leap days come


def test_a_stored_cron_that_is_never_due_stops_no_other_launch(tmp_path, clock):
    """Stored before validation refused it: its CroniterBadDateError failed
    every launcher round (no periodic job launched) and every read of it."""
    store = open_store(tmp_path, clock)
    submit(store, periodic_body(), clock)
    bad = parse_job(periodic_body("feb30", crons=["0 0 29 2 *"]))
    bad = replace(bad, periodic={**bad.periodic, "crons": ["0 0 30 2 *"]})
    store.submit_job(bad, lambda trigger: new_eval(bad.job_id, trigger, clock()))
    assert next_launch(bad.periodic, clock()) is None
    assert latest_due(bad.periodic, clock()) is None
    launcher = PeriodicLauncher(store, lambda e: None, now=clock)
    clock.t += 270
    assert [c.split("-periodic-")[0] for c in launcher.tick()] == ["nightly"]


def test_an_idle_periodic_job_is_not_evaluated_each_round(tmp_path, clock, monkeypatch):
    """Each round evaluated every cron of every job twice (150 idle jobs of
    16 crons held ~45% of a core); now only when the next due time comes."""
    from orch.server import periodic as module

    store = open_store(tmp_path, clock)
    submit(store, periodic_body(crons=["*/5 * * * *", "0 0 1 1 *"]), clock)
    launcher = PeriodicLauncher(store, lambda e: None, now=clock)
    launcher.tick()
    calls = []
    real = module.croniter
    monkeypatch.setattr(module, "croniter", lambda *a: calls.append(a) or real(*a))
    for _ in range(200):  # 10:00:31 .. 10:03:50, nothing due
        clock.t += 1
        assert launcher.tick() == []
    assert calls == []
    clock.t = datetime(2026, 1, 1, 10, 5, tzinfo=UTC).timestamp()
    assert len(launcher.tick()) == 1 and calls
    # An update is looked at afresh: its due times may be sooner.
    calls.clear()
    submit(store, periodic_body(crons=["* * * * *"]), clock)
    clock.t += 60
    assert len(launcher.tick()) == 1 and calls


def test_a_restarted_job_does_not_fire_what_fell_due_while_it_was_stopped(tmp_path, clock):
    """As Nomad's job start: a launch missed while stopped is not owed (a
    launch missed while the server was down still is: the test above)."""
    store = open_store(tmp_path, clock)
    submit(store, periodic_body(), clock)
    launcher = PeriodicLauncher(store, lambda e: None, now=clock)
    store.stop_job("nightly", new_eval("nightly", TriggeredBy.JOB_DEREGISTER, clock()))
    clock.t += 20 * 60
    assert launcher.tick() == []
    store.restart_job("nightly", lambda trigger: new_eval("nightly", trigger, clock()))
    assert launcher.tick() == []
    clock.t = datetime(2026, 1, 1, 10, 25, tzinfo=UTC).timestamp()
    assert len(launcher.tick()) == 1
