"""`orch node drain|eligibility` parsing, and the node and job status text."""

import pytest

from orch import __main__ as entry
from orch.cli.format import drain_cells
from orch.cli.job import job_summary
from orch.cli.launch import children_text


def parse(*argv):
    return entry.build_parser().parse_args(list(argv))


def test_drain_flags():
    args = parse("node", "drain", "abc", "--deadline", "1m30s", "--ignore-system")
    assert (args.id, args.deadline, args.ignore_system, args.cancel) == ("abc", 90.0, True, False)
    assert parse("node", "drain", "abc", "--deadline", "0").deadline == 0
    assert parse("node", "drain", "abc", "--cancel").deadline is None


@pytest.mark.parametrize(
    "argv",
    [
        ["node", "drain", "abc", "--deadline", "soon"],
        ["node", "drain", "abc", "--deadline", "-5"],
        ["node", "drain", "abc", "--deadline", "nan"],
        ["node", "eligibility", "abc"],
        ["node", "eligibility", "abc", "--enable", "--disable"],
    ],
)
def test_bad_node_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_eligibility_flags():
    assert parse("node", "eligibility", "abc", "--disable").enable is False
    assert parse("node", "eligibility", "abc", "--enable").enable is True


def test_drain_cells():
    draining = {
        "eligibility": "ineligible",
        "drain": {"remaining_allocations": 2, "deadline": 160.0, "deadline_s": 60},
    }
    assert drain_cells(draining, 115.0) == ["ineligible", "draining: 2 left, deadline in 45s"]
    done = {"eligibility": "ineligible", "drain": None, "drain_complete": 100.0}
    assert drain_cells(done, 130.0)[1].startswith("drained ")
    assert drain_cells({"eligibility": "eligible", "drain": None}, 1.0) == ["eligible", "-"]


def test_job_status_shows_type_links_and_summary():
    job = {
        "job_id": "nightly",
        "type": "batch",
        "status": "running",
        "task_groups": [{"name": "g", "count": 2}],
        "children": [{"job_id": "nightly-periodic-1700000000", "status": "complete"}],
        "parent_id": None,
        "summary": {
            "g": {"queued": 1, "starting": 0, "running": 1, "complete": 3, "failed": 0, "lost": 0}
        },
        "allocations": [],
    }
    text = job_summary(job, 0.0)
    assert any(line.split() == ["Type", "=", "batch"] for line in text.splitlines())
    # Children have their own table, printed after the summary.
    assert "nightly-periodic-1700000000" in children_text(job, 0.0)
    lines = text.splitlines()
    header = lines.index("Summary") + 1
    assert lines[header].split() == [
        "Group",
        "Queued",
        "Starting",
        "Running",
        "Complete",
        "Failed",
        "Lost",
    ]
    assert lines[header + 1].split() == ["g", "1", "0", "1", "3", "0", "0"]


NODE = {"node_id": "be695381-1111-4222-8333-444455556666", "eligibility": "eligible"}


@pytest.mark.parametrize("ident", ["", "b"])
@pytest.mark.parametrize("command", [["drain", "--deadline", "1m"], ["eligibility", "--disable"]])
def test_a_node_prefix_under_two_characters_is_refused(canned, capsys, clean_env, command, ident):
    """'' was a prefix of every node id: `node drain ''` drained the only node."""
    canned.add("GET", "/nodes", 200, {"nodes": [NODE]})
    argv = ["node", command[0], ident, *command[1:], "--address", canned.url]
    assert entry.main(argv) == 1
    assert "at least 2 characters" in capsys.readouterr().err
    assert all(r["method"] == "GET" for r in canned.requests), "nothing may be changed"


def test_a_one_character_node_id_that_exists_is_still_named(canned, capsys, clean_env):
    canned.add("GET", "/nodes/a", 200, {**NODE, "node_id": "a"})
    canned.add("POST", "/nodes/a/eligibility", 200, {**NODE, "node_id": "a"})
    argv = ["node", "eligibility", "a", "--disable", "--address", canned.url]
    assert entry.main(argv) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    "answer",
    [
        {"jobs": "x", "nodes": 5, "node_id": None, "allocations": "z"},
        {"jobs": [None, 5], "nodes": [None, 5]},
    ],
)
@pytest.mark.parametrize(
    "argv",
    [["job", "status"], ["node", "status"], ["node", "drain", "abcd"], ["alloc", "logs", "abcd"]],
)
def test_json_of_another_shape_is_one_line_not_a_traceback(canned, capsys, clean_env, argv, answer):
    for method, path in (
        ("GET", "/jobs"),
        ("GET", "/nodes"),
        ("GET", "/nodes/abcd"),
        ("GET", "/allocations/abcd"),
    ):
        canned.add(method, path, 200, answer)
    assert entry.main([*argv, "--address", canned.url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1
