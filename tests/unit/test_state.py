"""The state store: durable writes, reopen, capacity index kept in sync."""

import sqlite3

import pytest

from orch.errors import Conflict, NotFound, StorageError
from orch.server.state import StateStore
from orch.structs import (
    Allocation,
    AllocStatus,
    DesiredStatus,
    EvalStatus,
    Evaluation,
    Job,
    Node,
    Plan,
    Resources,
    Task,
    TaskGroup,
    TriggeredBy,
    replace,
)


def node(node_id="n1", cpu=1000, memory=1024):
    return Node(
        node_id=node_id,
        resources=Resources(cpu, memory),
        endpoint="http://127.0.0.1:1",
        attributes={"driver.exec": True},
    )


def job(job_id="j1", count=1):
    task = Task("t", "exec", {"command": "true"}, Resources(100, 64))
    return Job(job_id=job_id, task_groups=(TaskGroup("g", count, (task,)),))


def evaluation(job_id="j1", eval_id="e1"):
    return Evaluation(eval_id=eval_id, job_id=job_id, triggered_by=TriggeredBy.JOB_REGISTER)


def alloc(alloc_id="a1", node_id="n1", job_id="j1", index=0):
    return Allocation(
        allocation_id=alloc_id,
        job_id=job_id,
        task_group="g",
        node_id=node_id,
        index=index,
        resources=Resources(100, 64),
        create_time=1.0,
    )


def test_everything_survives_reopen(open_store):
    store = open_store()
    store.upsert_node(node())
    store.put_job(job(), evaluation())
    placed, stopped, rejected = store.commit_plan(
        Plan(eval_id="e1", job_id="j1", place=[alloc()]),
        [replace(evaluation(), status=EvalStatus.COMPLETE, placed=1)],
    )
    assert (len(placed), stopped, rejected) == (1, [], 0)
    store.close()

    again = open_store()
    assert again.get_node("n1").resources == Resources(1000, 1024)
    assert again.get_job("j1").task_groups[0].tasks[0].config == {"command": "true"}
    assert [a.allocation_id for a in again.allocs_for_job("j1")] == ["a1"]
    assert again.get_eval("e1").status == EvalStatus.COMPLETE
    assert again.cluster.free("n1") == Resources(900, 960)
    assert again.unfinished_evals() == []


def test_plan_is_checked_against_live_capacity(open_store):
    store = open_store()
    store.upsert_node(node(cpu=150))
    store.put_job(job(count=2), evaluation())
    plan = Plan(eval_id="e1", job_id="j1", place=[alloc("a1"), alloc("a2", index=1)])
    placed, _, rejected = store.commit_plan(plan, [evaluation()])
    assert [a.allocation_id for a in placed] == ["a1"]
    assert rejected == 1


def test_stopped_job_gets_no_placements(open_store):
    store = open_store()
    store.upsert_node(node())
    store.put_job(replace(job(), stopped=True), evaluation())
    placed, _, _ = store.commit_plan(
        Plan(eval_id="e1", job_id="j1", place=[alloc()]), [evaluation()]
    )
    assert placed == []


def test_node_down_loses_unfinished_allocations_and_frees_capacity(open_store):
    store = open_store()
    store.upsert_node(node())
    store.put_job(job(count=2), evaluation())
    store.commit_plan(
        Plan(eval_id="e1", job_id="j1", place=[alloc("a1"), alloc("a2", index=1)]), [evaluation()]
    )
    done = replace(store.get_alloc("a2"), client_status=AllocStatus.COMPLETE)
    store.update_allocs([done])
    lost = store.mark_node_down("n1", "gone")
    assert [a.allocation_id for a in lost] == ["a1"]
    assert store.get_alloc("a1").client_status == AllocStatus.LOST
    assert store.get_alloc("a1").desired_status == DesiredStatus.STOP
    assert store.get_alloc("a2").client_status == AllocStatus.COMPLETE
    assert not store.get_node("n1").healthy
    assert store.cluster.free("n1") == Resources(1000, 1024)


def test_stop_and_delete_job(open_store):
    store = open_store()
    store.upsert_node(node())
    store.put_job(job(), evaluation())
    store.commit_plan(Plan(eval_id="e1", job_id="j1", place=[alloc()]), [evaluation()])
    stopped = store.stop_job("j1", evaluation(eval_id="e2"))
    assert [a.client_status for a in stopped] == [AllocStatus.STOPPED]
    assert store.cluster.free("n1") == Resources(1000, 1024)
    assert store.delete_job("j1")[0].allocation_id == "a1"
    with pytest.raises(NotFound):
        store.require_job("j1")
    store.close()
    again = open_store()
    assert again.counts() == {"nodes": 1, "jobs": 0, "allocations": 0, "evaluations": 0}


def test_failed_write_changes_nothing_in_memory(open_store):
    store = open_store()
    store.upsert_node(node())
    store.backend.execute("DROP TABLE jobs")  # every later job write fails
    with pytest.raises(StorageError):
        store.put_job(job(), evaluation())
    assert store.get_job("j1") is None
    assert store.get_eval("e1") is None


def test_corrupt_database_refuses_to_open_and_is_kept(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a sqlite database" * 100)
    before = path.read_bytes()
    with pytest.raises(StorageError, match="refusing to start"):
        StateStore(str(tmp_path))
    assert path.read_bytes() == before


def test_write_is_on_disk_before_return(tmp_path):
    store = StateStore(str(tmp_path))
    store.put_job(job(), evaluation())
    other = sqlite3.connect(str(tmp_path / "state.db"))
    assert other.execute("SELECT job_id FROM jobs").fetchall() == [("j1",)]


# ---- atomic check-and-write job methods ---------------------------------------


def maker(job_id="j1"):
    """A make_eval callback numbering its evaluations and keeping the triggers."""
    made = []

    def make(trigger):
        made.append(trigger)
        return Evaluation(
            eval_id=f"e{len(made)}",
            job_id=job_id,
            triggered_by=trigger,
            create_time=float(len(made)),
        )

    make.made = made
    return make


def test_submit_creates_then_updates_with_the_next_version(open_store):
    store = open_store(now=lambda: 7.0)
    make, seen = maker(), []
    created, ev, changed = store.submit_job(job(), make, on_commit=seen.append)
    assert (created.version, created.submit_time, changed) == (0, 7.0, True)
    assert ev.triggered_by == TriggeredBy.JOB_REGISTER and seen == [ev]
    updated, ev2, changed = store.submit_job(job(count=2), make, on_commit=seen.append)
    assert (updated.version, ev2.triggered_by, changed) == (1, TriggeredBy.JOB_UPDATE, True)
    assert store.get_job("j1") == updated and seen == [ev, ev2]
    with pytest.raises(NotFound, match="作业不存在"):
        store.submit_job(job("nope"), maker("nope"), must_exist=True)
    assert store.get_job("nope") is None


def test_unchanged_resubmit_writes_nothing_and_returns_the_latest_evaluation(open_store):
    store = open_store()
    make, seen = maker(), []
    store.submit_job(job(count=2), make)
    _, latest, _ = store.submit_job(job(count=3), make)
    store.close()
    store = open_store()  # the spec compared survives a reload
    same, ev, changed = store.submit_job(job(count=3), make, on_commit=seen.append)
    assert (same.version, ev, changed, seen) == (1, latest, False, [])
    assert len(make.made) == 2 and store.counts()["evaluations"] == 2
    # A stopped job submitted again unchanged runs again: that is a change.
    store.stop_job("j1", evaluation(eval_id="stop"))
    again, ev, changed = store.submit_job(job(count=3), make)
    assert (again.version, again.stopped, changed) == (2, False, True)


def test_stop_and_restart_check_under_the_lock(open_store):
    store = open_store()
    make, calls = maker(), []
    with pytest.raises(NotFound):
        store.stop_job("j1", evaluation(), on_commit=lambda: calls.append("stop"))
    store.submit_job(job(), make)
    with pytest.raises(Conflict, match="只能重启已停止的作业"):
        store.restart_job("j1", make)
    store.stop_job("j1", evaluation(eval_id="stop"), on_commit=lambda: calls.append("stop"))
    assert store.get_job("j1").stopped and calls == ["stop"]
    ev = store.restart_job("j1", make, on_commit=calls.append)
    assert ev.triggered_by == TriggeredBy.JOB_RESTART and calls == ["stop", ev]
    assert not store.get_job("j1").stopped and store.get_job("j1").version == 0


def test_purge_refuses_an_unknown_job_and_nothing_of_it_comes_back(open_store):
    store = open_store()
    store.upsert_node(node())
    with pytest.raises(NotFound):
        store.delete_job("j1")
    store.put_job(job(), evaluation())
    calls = []
    store.delete_job("j1", on_commit=lambda: calls.append("purged"))
    assert calls == ["purged"]
    # A worker that planned before the purge commits after it: nothing is kept.
    placed, stopped, _ = store.commit_plan(
        Plan(eval_id="e1", job_id="j1", place=[alloc()]),
        [replace(evaluation(), status=EvalStatus.COMPLETE)],
    )
    assert (placed, stopped) == ([], [])
    assert store.put_evals([replace(evaluation(), status=EvalStatus.CANCELED)]) == []
    assert store.counts() == {"nodes": 1, "jobs": 0, "allocations": 0, "evaluations": 0}
    store.close()
    assert open_store().counts()["evaluations"] == 0


def test_a_stale_allocation_update_does_not_undo_a_stop(open_store):
    store = open_store()
    store.upsert_node(node())
    store.put_job(job(), evaluation())
    store.commit_plan(Plan(eval_id="e1", job_id="j1", place=[alloc()]), [evaluation()])
    read_before_stop = replace(store.get_alloc("a1"), client_status=AllocStatus.RUNNING)
    store.stop_job("j1", evaluation(eval_id="e2"))
    store.update_allocs([read_before_stop])
    assert store.get_alloc("a1").desired_status == DesiredStatus.STOP


def test_unreadable_rows_are_quarantined_and_the_rest_loads(tmp_path, caplog):
    store = StateStore(str(tmp_path))
    store.upsert_node(node("n1"))
    store.upsert_node(node("n2"))
    store.put_job(job("j1"), evaluation("j1", "e1"))
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    # What the old codec wrote for a NaN end time, and a body missing a field.
    db.execute(
        "UPDATE nodes SET body = ? WHERE node_id = 'n2'", ('{"node_id":"n2","last_heartbeat":nan}',)
    )
    db.execute("INSERT INTO jobs (job_id, body) VALUES ('j2', '{\"job_id\":\"j2\"}')")
    db.execute(
        "INSERT INTO evaluations (eval_id, job_id, status, body) "
        "VALUES ('e2', 'j1', 'pending', '{\"x\": NaN}')"
    )
    db.commit()
    db.close()
    with caplog.at_level("ERROR", logger="orch.server.quarantine"):
        store = StateStore(str(tmp_path))
    assert [n.node_id for n in store.list_nodes()] == ["n1"]
    assert [j.job_id for j in store.list_jobs()] == ["j1"]
    assert store.get_eval("e1") is not None and store.get_eval("e2") is None
    # One line per bad row (a handler left by another test may repeat records).
    assert len({r.getMessage() for r in caplog.records if r.name == "orch.server.quarantine"}) == 3
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    kept = db.execute("SELECT tbl, row_key, body FROM quarantine ORDER BY tbl").fetchall()
    assert kept == [
        ("evaluations", "e2", '{"x": NaN}'),
        ("jobs", "j2", '{"job_id":"j2"}'),
        ("nodes", "n2", '{"node_id":"n2","last_heartbeat":nan}'),
    ]
    assert db.execute("SELECT count(*) FROM nodes").fetchone() == (1,)
    db.close()
    assert [n.node_id for n in StateStore(str(tmp_path)).list_nodes()] == ["n1"]
