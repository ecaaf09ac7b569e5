"""Alloc commands against the canned server: id prefixes, logs."""

import json

import pytest
from cli_helpers import alloc, job_body

from orch import __main__ as entry
from orch.cli.commands import follow_logs

pytestmark = pytest.mark.usefixtures("clean_env")


def test_alloc_status_accepts_a_unique_prefix(canned, capsys):
    full = alloc(0)
    canned.add("GET", "/jobs", 200, {"jobs": [job_body(allocs=[full, alloc(1)])]})
    canned.add("GET", f"/allocations/{full['allocation_id']}", 200, dict(full, tasks={}))
    assert entry.main(["alloc", "status", "alloc-0", "--json", "--address", canned.url]) == 0
    assert json.loads(capsys.readouterr().out)["allocation_id"] == full["allocation_id"]
    assert entry.main(["alloc", "status", "alloc-", "--address", canned.url]) == 1
    assert "matches 2 allocations" in capsys.readouterr().err


def test_follow_logs_reads_until_terminal():
    chunks = [b"one\n", b"", b"two\n", b""]
    states = ["running", "complete"]
    offsets = []

    class Logs:
        def logs(self, alloc_id, task, stderr, offset):
            offsets.append(offset)
            return chunks.pop(0) if chunks else b""

        def get(self, alloc_id):
            return {"status": states.pop(0) if len(states) > 1 else states[0]}

    class C:
        allocs = Logs()

    import io

    out = io.BytesIO()
    clock = [0.0]
    follow_logs(
        C(),
        "a1",
        "main",
        False,
        out,
        now=lambda: clock[0],
        sleep=lambda s: clock.__setitem__(0, clock[0] + s),
    )
    assert out.getvalue() == b"one\ntwo\n"
    assert offsets[:3] == [0, 4, 4] and offsets[-1] == 8


def test_short_ids_tell_time_ordered_ids_apart():
    from orch.cli.format import matches_short, short

    v7 = ["01a21545-c0ca-7000-85bd-3332cf02f641", "01a21545-c0ca-7001-a1de-d77b139abf28"]
    assert [short(i) for i in v7] == ["cf02f641", "139abf28"]
    assert short("e8abc256-1111-4222-8333-444455556666") == "e8abc256"
    assert short(None) == "-" and short("web") == "web"
    assert matches_short(v7[0], "cf02f641") and matches_short(v7[0], "01a21545-c0ca-7000")
    assert not matches_short("e8abc256-1111-4222-8333-444455556666", "55556666")
    # What a table shows, or a prefix: not just any end of a time-ordered id.
    assert not matches_short(v7[0], "02f641") and not matches_short(v7[0], "3332cf02f641")


def test_a_shown_short_id_is_accepted_and_no_other_end(canned, capsys):
    v7 = ["01a21545-c0ca-7000-85bd-3332cf02f641", "01a21545-c0ca-7001-a1de-d77bcf02f641"]
    allocs = [dict(alloc(i), allocation_id=a) for i, a in enumerate(v7)]
    canned.add("GET", "/jobs", 200, {"jobs": [job_body(allocs=allocs)]})
    canned.add("GET", f"/allocations/{v7[0]}", 200, dict(allocs[0], tasks={}))
    canned.add("GET", "/jobs/web", 200, job_body(allocs=allocs[:1]))
    assert entry.main(["job", "status", "web", "--address", canned.url]) == 0
    shown = capsys.readouterr().out.split("Allocations\n")[1].splitlines()[1].split()[0]
    assert shown == "cf02f641"
    assert entry.main(["alloc", "status", shown, "--json", "--address", canned.url]) == 1
    assert "matches 2 allocations" in capsys.readouterr().err  # both end so: say so
    assert entry.main(["alloc", "status", "02f641", "--address", canned.url]) == 1
    assert 'allocation "02f641" not found' in capsys.readouterr().err
    assert (
        entry.main(["alloc", "status", "01a21545-c0ca-7000", "--json", "--address", canned.url])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["allocation_id"] == v7[0]


def test_alloc_logs_without_a_task_reads_the_only_one(canned, capsysbinary):
    one = alloc(0)
    aid = one["allocation_id"]
    canned.add("GET", f"/allocations/{aid}", 200, dict(one, tasks={"main": {"status": "running"}}))
    canned.add_log(f"/allocations/{aid}/logs/main", b"hi\n", 1 << 20)
    assert entry.main(["alloc", "logs", aid, "--address", canned.url]) == 0
    assert capsysbinary.readouterr().out == b"hi\n"
    # No task has reported yet: the group's spec names it.
    canned.add("GET", f"/allocations/{aid}", 200, dict(one, tasks={}, job_id="web"))
    body = job_body(allocs=[one])
    body["task_groups"][0]["tasks"] = [{"name": "main"}]
    canned.add("GET", "/jobs/web", 200, body)
    assert entry.main(["alloc", "logs", aid, "--address", canned.url]) == 0
    assert capsysbinary.readouterr().out == b"hi\n"


def test_alloc_logs_reads_every_page_of_a_long_log(canned, capsysbinary):
    """The server answers 1 MiB at a time: the log was cut there, mid-line."""
    one = alloc(0)
    aid = one["allocation_id"]
    canned.add("GET", f"/allocations/{aid}", 200, dict(one, tasks={"main": {"status": "dead"}}))
    data = b"".join(b"line %d\n" % i for i in range(1000))
    canned.add_log(f"/allocations/{aid}/logs/main", data, 1000)
    assert entry.main(["alloc", "logs", aid, "main", "--address", canned.url]) == 0
    assert capsysbinary.readouterr().out == data


def test_alloc_logs_without_a_task_names_the_tasks_to_choose_from(canned, capsys):
    one = alloc(0)
    aid = one["allocation_id"]
    canned.add("GET", f"/allocations/{aid}", 200, dict(one, tasks={"web": {}, "sidecar": {}}))
    assert entry.main(["alloc", "logs", aid, "--address", canned.url]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: allocation alloc-0- has tasks sidecar, web: name one "
        "(orch alloc logs alloc-0- TASK)"
    )
