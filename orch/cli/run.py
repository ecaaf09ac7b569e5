"""`orch job run`'s follower: a live line per task group, then a verdict.

On a terminal the group lines are redrawn in place; otherwise (a pipe, a CI
log) a group's line is printed again only when it changed, so the output is
a readable history rather than a screenful of escape codes.
"""

from __future__ import annotations

import shutil
import sys
import time

from orch import errors
from orch.cli.deployment import deployment_verdict
from orch.cli.format import (
    Style,
    alloc_status,
    current_allocs,
    describe_placement_failure,
    group_progress,
    is_terminal,
    plural,
    progress_line,
    short,
    wanted_count,
)

EXIT_OK, EXIT_ERROR, EXIT_NOT_PLACED = 0, 1, 2
TAIL_LINES = 10  # of a failed task's stderr, under its failure
TAIL_MAX_BYTES = 4 << 20  # read no further into a huge log for its tail
# Job types whose allocations run to completion (the others keep running).
RUN_ONCE_TYPES = ("batch", "sysbatch")
SHOWN_ALLOCS = 10  # allocation ids listed on success; the rest counted
# The longest a blocking read of the job waits for a change. The job's index
# moves with its evaluations, allocations and deployments, but a follower
# server learns of a deployment's own change only from its table: this bounds
# how late the follow may see one there.
WATCH_WAIT_S = 1.0


class Live:
    """Messages scroll; a block of keyed lines below them is kept current."""

    def __init__(self, out=None, tty: bool | None = None):
        self.out = out or sys.stdout
        self.tty = is_terminal(self.out) if tty is None else tty
        self._drawn = 0  # lines of the block on screen (tty)
        self._block: list[tuple[str, str]] = []
        self._printed: dict[str, str] = {}  # key -> last line printed (not a tty)

    def say(self, line: str = "") -> None:
        if self.tty:
            self._erase()
            self._write(line + "\n")
            self._draw()
        else:
            self._write(line + "\n")

    def show(self, block: list[tuple[str, str]]) -> None:
        """Replace the block: ``[(key, line)]``."""
        if self.tty:
            if block != self._block or not self._drawn:
                self._block = list(block)
                self._erase()
                self._draw()
            return
        self._block = list(block)
        for key, line in block:
            if self._printed.get(key) != line:
                self._printed[key] = line
                self._write(line + "\n")

    def _erase(self) -> None:
        if self._drawn:
            # To the start of the block's first line, then clear to the end.
            self._write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        width = shutil.get_terminal_size().columns
        for _, line in self._block:
            # A wrapped line would take two rows and spoil the next redraw.
            self._write(line[: max(20, width - 1)] + "\n")
        self._drawn = len(self._block)

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


class RunMonitor:
    """Follows one submission: its evaluation, then the job's allocations."""

    def __init__(
        self,
        client,
        job_id: str,
        eval_id: str | None,
        job_type: str,
        *,
        timeout: float,
        interval: float = 0.1,
        now=time.monotonic,
        sleep=time.sleep,
        live: Live | None = None,
        style: Style | None = None,
    ):
        self.client, self.job_id, self.eval_id = client, job_id, eval_id
        self.job_type = job_type
        self.timeout, self.interval = timeout, interval
        self.now, self.sleep = now, sleep
        self.live = live or Live()
        self.style = style or Style(False)
        self.eval_status: str | None = None
        self.deployment_seen: tuple | None = None
        self.deployment_version: int | None = None

    def say(self, line: str) -> None:
        self.live.say(line)

    def run(self) -> int:
        deadline = self.now() + self.timeout
        eval_done = self.eval_id is None
        index = 0
        while True:
            ev = None
            if not eval_done:
                ev, eval_done = self.check_eval()
            # Read after the evaluation: once it is done, the job shows its
            # plan (the allocations it replaces already set to stop). From the
            # second read on, it waits for the job to change (a blocking
            # query): the evaluation's changes move the job's index too.
            wait = min(WATCH_WAIT_S, max(0.0, deadline - self.now()))
            job, newer = self.client.jobs.watch(self.job_id, index, wait)
            # Unchanged: the wait ran out, or the server had no thread to wait
            # in (its cap on blocking queries): then this client polls.
            unchanged, index = newer == index, newer
            self.show_groups(job)
            verdict = self.eval_verdict(ev) if ev is not None else None
            if verdict is None and eval_done:
                verdict = self.job_verdict(job)
            if verdict is not None:
                return verdict
            if self.now() >= deadline:
                self.say(
                    self.style(
                        f"==> Timed out after {self.timeout:g}s: job "
                        f'"{self.job_id}" is {job.get("status")}',
                        "red",
                    )
                )
                return EXIT_ERROR
            if unchanged:  # index 0: a server without blocking queries
                self.sleep(self.interval)

    def show_groups(self, job: dict) -> None:
        batch = (job.get("type") or self.job_type) in RUN_ONCE_TYPES
        self.live.show(
            [
                (name, progress_line(name, counts, batch, self.style))
                for name, counts in group_progress(job).items()
            ]
        )

    def check_eval(self) -> tuple[dict, bool]:
        """The evaluation (its status said when it changes), and whether it is finished."""
        ev = self.client.evaluations.get(self.eval_id)
        status = ev.get("status")
        if status != self.eval_status:
            was = f"{self.eval_status} -> " if self.eval_status else ""
            self.say(
                f"    Evaluation {short(self.eval_id)}: {was}{self.style.status(status)}"
                f" (placed {ev.get('placed', 0)})"
            )
            self.eval_status = status
        return ev, status in ("complete", "canceled", "blocked", "failed")

    def eval_verdict(self, ev: dict) -> int | None:
        """The exit code if the evaluation failed or left something unplaced."""
        status = ev.get("status")
        unplaced = status == "complete" and int(ev.get("queued") or 0) > 0
        if not (status in ("blocked", "failed") or ev.get("failures") or unplaced):
            return None
        if status == "failed" and not ev.get("failures"):
            why = ev.get("status_description") or "no reason given"
            self.say(self.style(f"==> Evaluation failed: {why}", "red"))
            return EXIT_ERROR
        for line in describe_placement_failure(ev):
            self.say(self.style(f"==> {line}", "red"))
        self.say(
            f"    The job stays pending and is placed when capacity appears "
            f"(orch job status {self.job_id})."
        )
        return EXIT_NOT_PLACED

    def job_verdict(self, job: dict) -> int | None:
        status = job.get("status")
        if status == "dead" or job.get("stopped"):
            self.say(self.style(f'==> Job "{self.job_id}" was stopped', "red"))
            return EXIT_ERROR
        if status == "failed":
            self.say(self.style(f'==> Job "{self.job_id}" failed', "red"))
            self.report_failures(job)
            return EXIT_ERROR
        job_type = job.get("type") or self.job_type
        if job_type in RUN_ONCE_TYPES:
            if status == "complete":
                self.say(self.style(f'==> Job "{self.job_id}" complete', "green"))
                self.list_allocs(job)
                return EXIT_OK
            return None
        if job_type == "service":
            followed, verdict = self.deployment_verdict(job)
            if followed:
                return verdict
        # A system job wants as many copies as the server placed: at least one.
        wanted = max(1, wanted_count(job))
        running = sum(1 for a in current_allocs(job) if alloc_status(a) == "running")
        if running >= wanted:
            self.say(
                self.style(
                    f'==> Job "{self.job_id}": {running} of {wanted} allocations running', "green"
                )
            )
            self.list_allocs(job)
            return EXIT_OK
        return None

    def deployment_verdict(self, job: dict) -> tuple[bool, int | None]:
        """(a deployment of this version is followed, its exit code once it ended)."""
        deployments = getattr(self.client, "deployments", None)
        if deployments is None:
            return False, None
        if self.deployment_version is None:
            # The version submitted: an auto-revert makes a newer one, whose
            # deployment is not the one this run follows.
            self.deployment_version = job.get("version")
        found = [
            d
            for d in deployments.for_job(self.job_id)
            if d.get("job_version") == self.deployment_version
        ]
        if not found:
            return False, None
        d = found[0]
        verdict = deployment_verdict(d, self.deployment_seen, self.say)
        self.deployment_seen = (d.get("status"), d.get("groups"))
        return True, verdict

    def list_allocs(self, job: dict) -> None:
        """The allocations' ids as tables show them, for `alloc status`/`alloc logs`."""
        allocs = sorted(current_allocs(job), key=lambda a: a.get("name") or "")
        for alloc in allocs[:SHOWN_ALLOCS]:
            self.say(
                f"    Allocation {short(alloc.get('allocation_id'))} "
                f"({alloc.get('name') or alloc.get('task_group')}) on node "
                f"{short(alloc.get('node_id'))}: {alloc_status(alloc)}"
            )
        if len(allocs) > SHOWN_ALLOCS:
            self.say(
                f"    ... and {len(allocs) - SHOWN_ALLOCS} more (orch job status {self.job_id})"
            )

    def report_failures(self, job: dict) -> None:
        for alloc in job.get("allocations") or []:
            if alloc_status(alloc) != "failed":
                continue
            try:
                detail = self.client.allocs.get(alloc["allocation_id"])
            except errors.OrchError:
                detail = alloc
            for name, task in (detail.get("tasks") or {}).items():
                if task.get("status") == "failed":
                    why = task.get("error") or f"exit code {task.get('exit_code')}"
                    self.say(f'    Allocation {short(alloc["allocation_id"])} task "{name}": {why}')
                    self.show_stderr_tail(alloc["allocation_id"], name)

    def show_stderr_tail(self, alloc_id: str, task: str) -> None:
        try:
            tail = stderr_tail(self.client, alloc_id, task)
        except errors.OrchError:
            return  # the node may be gone; the failure was said
        if tail:
            self.say(
                f"    stderr (last {plural(len(tail), 'line')}; orch alloc logs "
                f"--stderr {short(alloc_id)} {task}):"
            )
            for line in tail:
                self.say(f"      {line}")


def stderr_tail(client, alloc_id: str, task: str, lines: int = TAIL_LINES) -> list[str]:
    """The last lines of a task's stderr, paging through the log from its start."""
    data, offset = b"", 0
    while offset < TAIL_MAX_BYTES:
        chunk = client.allocs.logs(alloc_id, task, stderr=True, offset=offset)
        if not chunk:
            break
        offset += len(chunk)
        data = (data + chunk)[-64 * 1024 :]  # a tail needs only the end
    text = data.decode("utf-8", errors="replace").rstrip("\n")
    return text.split("\n")[-lines:] if text else []
