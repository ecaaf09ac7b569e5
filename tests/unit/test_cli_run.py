"""`job run`'s monitor: progress, exit codes, system and sysbatch waits."""

import pytest
from cli_helpers import alloc, job_body

from orch.cli.format import (
    Style,
    colour_enabled,
    group_progress,
    progress_line,
    table,
)
from orch.cli.run import Live, RunMonitor

pytestmark = pytest.mark.usefixtures("clean_env")


class FakeClient:
    """Plays back a sequence of evaluation and job bodies."""

    def __init__(self, evals, jobs, allocs=None, stderr=None):
        self._evals, self._jobs = list(evals), list(jobs)
        self.jobs = self.evaluations = self.allocs = self
        self._allocs = allocs or {}
        self._stderr = stderr or {}  # (alloc id, task) -> bytes

    def logs(self, alloc_id, task, stderr=False, offset=0):
        assert stderr
        return self._stderr.get((alloc_id, task), b"")[offset : offset + 5]  # small pages

    def watch(self, job_id, after=0, wait=0.0):
        """A server without blocking queries: index 0, the monitor polls."""
        return self.get(job_id), 0

    def get(self, ident):
        if ident.startswith("eval"):
            return self._evals.pop(0) if len(self._evals) > 1 else self._evals[0]
        if ident in self._allocs:
            return self._allocs[ident]
        return self._jobs.pop(0) if len(self._jobs) > 1 else self._jobs[0]


def monitor(client, job_type="service", timeout=5.0):
    clock = [0.0]
    return RunMonitor(
        client,
        "web",
        "eval-1",
        job_type,
        timeout=timeout,
        now=lambda: clock[0],
        sleep=lambda s: clock.__setitem__(0, clock[0] + s),
    )


def test_run_exits_0_when_every_service_allocation_runs(capsys):
    client = FakeClient(
        evals=[{"status": "pending"}, {"status": "complete", "placed": 3}],
        jobs=[
            job_body("pending", [alloc(0, "pending")]),
            job_body("running", [alloc(0), alloc(1), alloc(2, "pending")]),
            job_body("running", [alloc(0), alloc(1), alloc(2)]),
        ],
    )
    assert monitor(client).run() == 0
    out = capsys.readouterr().out
    assert "Evaluation eval-1: pending -> complete (placed 3)" in out
    # Not a terminal: a group's line is printed again only when it changed.
    assert out.count("    g: 1 placed, 0 running, 0 failed of 3\n") == 1
    assert "    g: 3 placed, 2 running, 0 failed of 3\n" in out
    assert "    g: 3 placed, 3 running, 0 failed of 3\n" in out
    assert "\x1b" not in out
    assert "3 of 3 allocations running" in out


def test_live_block_is_redrawn_in_place_on_a_terminal():
    import io

    out = io.StringIO()
    live = Live(out, tty=True)
    live.show([("a", "a: 1"), ("b", "b: 1")])
    live.say("message")
    live.show([("a", "a: 2"), ("b", "b: 1")])
    assert out.getvalue() == (
        "a: 1\nb: 1\n\x1b[2F\x1b[Jmessage\na: 1\nb: 1\n\x1b[2F\x1b[Ja: 2\nb: 1\n"
    )
    plain = io.StringIO()
    live = Live(plain, tty=False)
    live.show([("a", "a: 1"), ("b", "b: 1")])
    live.show([("a", "a: 2"), ("b", "b: 1")])
    assert plain.getvalue() == "a: 1\nb: 1\na: 2\n"


def test_group_progress_counts_the_last_submission():
    job = dict(
        job_body(
            version=1,
            allocs=[
                alloc(0, "running", version=1),
                alloc(1, "failed", desired="stop", version=1),
                alloc(2, "pending", version=1),
                alloc(3, "running", desired="stop", version=0),
                alloc(4, "failed", desired="stop", version=0),
            ],
        ),
        submit_time=88.0,
    )
    # alloc(4) failed before this submission (created at 86): not counted.
    counts = group_progress(job)["g"]
    assert counts == {"count": 3, "placed": 2, "running": 1, "complete": 0, "failed": 1}
    assert progress_line("g", counts, batch=False) == "    g: 2 placed, 1 running, 1 failed of 3"
    assert (
        progress_line("g", counts, batch=True)
        == "    g: 2 placed, 1 running, 0 complete, 1 failed of 3"
    )
    assert "\x1b[31m1 failed\x1b[0m" in progress_line("g", counts, False, Style(True))


class FakeTTY:
    def isatty(self):
        return True


def test_colour_only_on_a_terminal_without_no_color():
    assert colour_enabled(FakeTTY(), {}) is True
    assert colour_enabled(FakeTTY(), {"NO_COLOR": "1"}) is False
    assert colour_enabled(FakeTTY(), {"TERM": "dumb"}) is False
    assert colour_enabled(object(), {}) is False
    assert Style(False).status("failed") == "failed"
    assert Style(True).status("failed") == "\x1b[31mfailed\x1b[0m"
    painted = table(
        ["ID", "Status"], [["a", "running"], ["bbbb", "failed"]], paint=Style(True).cell
    )
    assert painted.splitlines()[1] == "a     \x1b[32mrunning\x1b[0m"
    assert painted.splitlines()[2] == "bbbb  \x1b[31mfailed\x1b[0m"


def test_run_exits_2_with_reasons_when_placement_fails(capsys):
    client = FakeClient(
        evals=[
            {
                "status": "blocked",
                "placed": 1,
                "queued": 2,
                "failures": {"memory exhausted": 2},
                "groups": {"g": {"wanted": 3, "placed": 1, "failed": 2}},
            }
        ],
        jobs=[job_body("pending", [alloc(0, "pending")])],
    )
    assert monitor(client).run() == 2
    assert "2 of 3 not placed: memory exhausted on 2 nodes" in capsys.readouterr().out


def test_run_batch_waits_for_complete_and_reports_failures(capsys):
    ok = FakeClient(
        evals=[{"status": "complete", "placed": 1}],
        jobs=[
            job_body("running", [alloc(0)], count=1, job_type="batch"),
            job_body("complete", [alloc(0, "complete")], count=1, job_type="batch"),
        ],
    )
    assert monitor(ok, "batch").run() == 0
    assert (
        "    Allocation alloc-0- (web.g[0]) on node node-123: complete\n" in capsys.readouterr().out
    )
    failed = dict(alloc(0, "failed"), tasks={"main": {"status": "failed", "exit_code": 3}})
    lines = "".join(f"line {i}\n" for i in range(1, 13)).encode()
    bad = FakeClient(
        evals=[{"status": "complete", "placed": 1}],
        jobs=[job_body("failed", [alloc(0, "failed")], count=1, job_type="batch")],
        allocs={failed["allocation_id"]: failed},
        stderr={(failed["allocation_id"], "main"): lines},
    )
    assert monitor(bad, "batch").run() == 1
    out = capsys.readouterr().out
    assert 'task "main": exit code 3' in out
    tail = out.split("stderr (last 10 lines; orch alloc logs --stderr alloc-0- main):\n")[1]
    assert tail.splitlines() == [f"      line {i}" for i in range(3, 13)]


def test_run_lists_at_most_ten_allocations(capsys):
    allocs = [alloc(i) for i in range(12)]
    client = FakeClient(
        evals=[{"status": "complete", "placed": 12}], jobs=[job_body("running", allocs, count=12)]
    )
    assert monitor(client).run() == 0
    out = capsys.readouterr().out
    assert out.count("    Allocation ") == 10
    assert "    ... and 2 more (orch job status web)" in out


def test_run_times_out_with_exit_1(capsys):
    client = FakeClient(
        evals=[{"status": "complete", "placed": 3}],
        jobs=[job_body("pending", [alloc(0, "pending")])],
    )
    assert monitor(client, timeout=1.0).run() == 1
    assert "Timed out after 1s" in capsys.readouterr().out


def test_run_system_waits_for_a_running_copy_on_every_placed_node(capsys):
    client = FakeClient(
        evals=[{"status": "complete", "placed": 3}],
        jobs=[
            job_body("running", [alloc(0), alloc(1, "pending"), alloc(2)], 1, "system"),
            job_body("running", [alloc(0), alloc(1), alloc(2)], 1, "system"),
        ],
    )
    assert monitor(client, "system").run() == 0
    assert "3 of 3 allocations running" in capsys.readouterr().out


def test_run_sysbatch_waits_for_complete(capsys):
    done = [alloc(0, "complete"), alloc(1, "complete")]
    client = FakeClient(
        evals=[{"status": "complete", "placed": 2}],
        jobs=[
            job_body("running", [alloc(0, "complete"), alloc(1)], 1, "sysbatch"),
            job_body("complete", done, 1, "sysbatch"),
        ],
    )
    assert monitor(client, "sysbatch").run() == 0
    assert 'Job "web" complete' in capsys.readouterr().out


def test_system_group_progress_counts_copies_not_count():
    job = job_body("running", [alloc(0), alloc(1, "pending"), alloc(2)], 1, "system")
    assert progress_line("g", group_progress(job)["g"], batch=False) == (
        "    g: 3 placed, 2 running, 0 failed of 3"
    )
