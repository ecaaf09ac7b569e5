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
