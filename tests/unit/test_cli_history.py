"""`orch job history` / `job revert`: parsing and the history's text."""

from __future__ import annotations

import pytest
from cli_helpers import parse

from orch.cli.history import diff_line, history_text


def test_parse_history_and_revert():
    args = parse("job", "history", "web", "--json")
    assert (args.id, args.json) == ("web", True)
    args = parse("job", "revert", "web", "3")
    assert (args.id, args.version) == ("web", 3)
    for bad in ("-1", "x", "1.5"):
        with pytest.raises(SystemExit):
            parse("job", "revert", "web", bad)


def test_server_flags_for_versions_and_streams():
    args = parse("server", "--job-versions", "4", "--ui-max-streams", "2")
    assert (args.job_versions, args.ui_max_streams) == (4, 2)
    with pytest.raises(SystemExit):
        parse("server", "--job-versions", "0")


def test_diff_lines():
    assert diff_line({"path": "a.b", "old": 1, "new": 2}) == "  a.b: 1 => 2"
    assert diff_line({"path": "c", "old": None, "new": "x"}) == '+ c: "x"'
    assert diff_line({"path": "d[0]", "old": {"k": 1}, "new": None}) == '- d[0]: {"k": 1}'


def test_history_text_blocks_newest_first():
    versions = [
        {
            "version": 1,
            "stable": False,
            "submit_time": 1_000_060.0,
            "diff": [{"path": "task_groups[0].count", "old": 1, "new": 2}],
        },
        {"version": 0, "stable": False, "submit_time": 1_000_000.0, "diff": []},
    ]
    text = history_text(versions, now=1_000_070.0)
    assert text == (
        "Version     = 1\n"
        "Stable      = false\n"
        "Submit Date = 1970-01-12T13:47:40Z (10s ago)\n"
        "Diff =\n"
        "  task_groups[0].count: 1 => 2\n"
        "\n"
        "Version     = 0\n"
        "Stable      = false\n"
        "Submit Date = 1970-01-12T13:46:40Z (1m10s ago)"
    )
