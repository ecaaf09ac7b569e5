"""The state store: durable writes, reopen, capacity index kept in sync."""
import sqlite3

import pytest

from orch.errors import NotFound, StorageError
from orch.server.state import StateStore
from orch.structs import (
    Allocation, AllocStatus, DesiredStatus, EvalStatus, Evaluation, Job, Node,
    Plan, Resources, Task, TaskGroup, TriggeredBy, replace,
)


def node(node_id="n1", cpu=1000, memory=1024):
    return Node(node_id=node_id, resources=Resources(cpu, memory),
                endpoint="http://127.0.0.1:1", attributes={"driver.exec": True})


def job(job_id="j1", count=1):
    task = Task("t", "exec", {"command": "true"}, Resources(100, 64))
    return Job(job_id=job_id, task_groups=(TaskGroup("g", count, (task,)),))


def evaluation(job_id="j1", eval_id="e1"):
    return Evaluation(eval_id=eval_id, job_id=job_id,
                      triggered_by=TriggeredBy.JOB_REGISTER)


def alloc(alloc_id="a1", node_id="n1", job_id="j1", index=0):
    return Allocation(allocation_id=alloc_id, job_id=job_id, task_group="g",
                      node_id=node_id, index=index, resources=Resources(100, 64),
                      create_time=1.0)


def test_everything_survives_reopen(tmp_path):
    store = StateStore(str(tmp_path))
    store.upsert_node(node())
    store.put_job(job(), evaluation())
    placed, stopped, rejected = store.commit_plan(
        Plan(eval_id="e1", job_id="j1", place=[alloc()]),
        [replace(evaluation(), status=EvalStatus.COMPLETE, placed=1)])
    assert (len(placed), stopped, rejected) == (1, [], 0)
    store.close()

    again = StateStore(str(tmp_path))
    assert again.get_node("n1").resources == Resources(1000, 1024)
    assert again.get_job("j1").task_groups[0].tasks[0].config == {"command": "true"}
    assert [a.allocation_id for a in again.allocs_for_job("j1")] == ["a1"]
    assert again.get_eval("e1").status == EvalStatus.COMPLETE
    assert again.cluster.free("n1") == Resources(900, 960)
    assert again.unfinished_evals() == []


def test_plan_is_checked_against_live_capacity(tmp_path):
    store = StateStore(str(tmp_path))
    store.upsert_node(node(cpu=150))
    store.put_job(job(count=2), evaluation())
    plan = Plan(eval_id="e1", job_id="j1",
                place=[alloc("a1"), alloc("a2", index=1)])
    placed, _, rejected = store.commit_plan(plan, [evaluation()])
    assert [a.allocation_id for a in placed] == ["a1"]
    assert rejected == 1


def test_stopped_job_gets_no_placements(tmp_path):
    store = StateStore(str(tmp_path))
    store.upsert_node(node())
    store.put_job(replace(job(), stopped=True), evaluation())
    placed, _, _ = store.commit_plan(
        Plan(eval_id="e1", job_id="j1", place=[alloc()]), [evaluation()])
    assert placed == []


def test_node_down_loses_unfinished_allocations_and_frees_capacity(tmp_path):
    store = StateStore(str(tmp_path))
    store.upsert_node(node())
    store.put_job(job(count=2), evaluation())
    store.commit_plan(Plan(eval_id="e1", job_id="j1",
                           place=[alloc("a1"), alloc("a2", index=1)]), [evaluation()])
    done = replace(store.get_alloc("a2"), client_status=AllocStatus.COMPLETE)
    store.update_allocs([done])
    lost = store.mark_node_down("n1", "gone")
    assert [a.allocation_id for a in lost] == ["a1"]
    assert store.get_alloc("a1").client_status == AllocStatus.LOST
    assert store.get_alloc("a1").desired_status == DesiredStatus.STOP
    assert store.get_alloc("a2").client_status == AllocStatus.COMPLETE
    assert not store.get_node("n1").healthy
    assert store.cluster.free("n1") == Resources(1000, 1024)


def test_stop_and_delete_job(tmp_path):
    store = StateStore(str(tmp_path))
    store.upsert_node(node())
    store.put_job(job(), evaluation())
    store.commit_plan(Plan(eval_id="e1", job_id="j1", place=[alloc()]), [evaluation()])
    stopped = store.stop_job(replace(job(), stopped=True), evaluation(eval_id="e2"))
    assert [a.client_status for a in stopped] == [AllocStatus.STOPPED]
    assert store.cluster.free("n1") == Resources(1000, 1024)
    assert store.delete_job("j1")[0].allocation_id == "a1"
    with pytest.raises(NotFound):
        store.require_job("j1")
    store.close()
    again = StateStore(str(tmp_path))
    assert again.counts() == {"nodes": 1, "jobs": 0, "allocations": 0,
                              "evaluations": 0}


def test_failed_write_changes_nothing_in_memory(tmp_path):
    store = StateStore(str(tmp_path))
    store.upsert_node(node())
    store._db.execute("DROP TABLE jobs")       # every later job write fails
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


def test_unreadable_rows_are_quarantined_and_the_rest_loads(tmp_path, caplog):
    store = StateStore(str(tmp_path))
    store.upsert_node(node("n1"))
    store.upsert_node(node("n2"))
    store.put_job(job("j1"), evaluation("j1", "e1"))
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    # What the old codec wrote for a NaN end time, and a body missing a field.
    db.execute("UPDATE nodes SET body = ? WHERE node_id = 'n2'",
               ('{"node_id":"n2","last_heartbeat":nan}',))
    db.execute("INSERT INTO jobs (job_id, body) VALUES ('j2', '{\"job_id\":\"j2\"}')")
    db.execute("INSERT INTO evaluations (eval_id, job_id, status, body) "
               "VALUES ('e2', 'j1', 'pending', '{\"x\": NaN}')")
    db.commit()
    db.close()
    with caplog.at_level("ERROR", logger="orch.server.quarantine"):
        store = StateStore(str(tmp_path))
    assert [n.node_id for n in store.list_nodes()] == ["n1"]
    assert [j.job_id for j in store.list_jobs()] == ["j1"]
    assert store.get_eval("e1") is not None and store.get_eval("e2") is None
    assert sum("unreadable" in r.message for r in caplog.records) == 3
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    kept = db.execute("SELECT tbl, row_key, body FROM quarantine ORDER BY tbl").fetchall()
    assert kept == [("evaluations", "e2", '{"x": NaN}'), ("jobs", "j2", '{"job_id":"j2"}'),
                    ("nodes", "n2", '{"node_id":"n2","last_heartbeat":nan}')]
    assert db.execute("SELECT count(*) FROM nodes").fetchone() == (1,)
    db.close()
    assert [n.node_id for n in StateStore(str(tmp_path)).list_nodes()] == ["n1"]
