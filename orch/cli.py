"""Client commands of the CLI: job, node and alloc, over ``orch.client``."""
from __future__ import annotations

import functools
import json
import sys
import time

from orch import errors
from orch.cli_format import (TERMINAL_ALLOC, ago, alloc_counts, alloc_status,
                             current_allocs, describe_placement_failure,
                             event_line, fields, matches_short, node_row, short,
                             table, wanted_count)
from orch.client import Client, ClientError

# Exit codes of `job run`.
EXIT_OK, EXIT_ERROR, EXIT_NOT_PLACED = 0, 1, 2
LOG_POLL_INTERVAL = 0.25
ALLOC_CHECK_INTERVAL = 1.0


def say(line: str = "") -> None:
    print(line, flush=True)


def client_command(fn):
    """Open a Client from --address/--token; errors become one line and exit 1."""
    @functools.wraps(fn)
    def handler(args) -> int:
        client = Client(args.address, token=args.token)
        try:
            return fn(args, client)
        except ClientError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
        except errors.OrchError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
        finally:
            client.close()
        return EXIT_ERROR
    return handler


def print_json(body) -> None:
    say(json.dumps(body, indent=2, ensure_ascii=False, sort_keys=True))


def load_job_file(path: str) -> dict:
    """A job file is the seed's JSON job body; ``-`` reads stdin."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise errors.ValidationError(f"{path}: {exc.strerror}") from exc
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.ValidationError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise errors.ValidationError(f"{path}: a job is a JSON object")
    return spec


def get_job(client: Client, job_id: str) -> dict:
    try:
        return client.jobs.get(job_id)
    except errors.NotFound as exc:
        raise errors.NotFound(f'job "{job_id}" not found ({exc.message})') from exc


def resolve_alloc(client: Client, ident: str) -> dict:
    """The allocation by full id, by a unique prefix (as Nomad accepts), or by
    the short id the tables print."""
    try:
        return client.allocs.get(ident)
    except errors.NotFound:
        pass
    matches = {a["allocation_id"] for job in client.jobs.list()
               for a in job.get("allocations") or []
               if matches_short(str(a.get("allocation_id", "")), ident)}
    if len(matches) > 1:
        raise errors.ValidationError(
            f'allocation prefix "{ident}" matches {len(matches)} allocations')
    if not matches:
        raise errors.NotFound(f'allocation "{ident}" not found')
    return client.allocs.get(matches.pop())


# ---- job run ---------------------------------------------------------------

class RunMonitor:
    """Follows one submission: its evaluation, then the job's allocations."""

    def __init__(self, client: Client, job_id: str, eval_id: str | None, job_type: str,
                 *, timeout: float, interval: float = 0.1,
                 now=time.monotonic, sleep=time.sleep):
        self.client, self.job_id, self.eval_id = client, job_id, eval_id
        self.job_type = job_type
        self.timeout, self.interval = timeout, interval
        self.now, self.sleep = now, sleep
        self.eval_status: str | None = None
        self.seen: dict[str, str] = {}

    def run(self) -> int:
        deadline = self.now() + self.timeout
        eval_done = self.eval_id is None
        while True:
            if not eval_done:
                verdict, eval_done = self.check_eval()
                if verdict is not None:
                    return verdict
            job = self.client.jobs.get(self.job_id)
            self.report_allocs(job)
            if eval_done:
                verdict = self.job_verdict(job)
                if verdict is not None:
                    return verdict
            if self.now() >= deadline:
                say(f'==> Timed out after {self.timeout:g}s: job "{self.job_id}" '
                    f'is {job.get("status")}')
                return EXIT_ERROR
            self.sleep(self.interval)

    def check_eval(self) -> tuple[int | None, bool]:
        """(exit code if the evaluation decides it, whether it is finished)."""
        ev = self.client.evaluations.get(self.eval_id)
        status = ev.get("status")
        if status != self.eval_status:
            was = f"{self.eval_status} -> " if self.eval_status else ""
            say(f"    Evaluation {short(self.eval_id)}: {was}{status}"
                f" (placed {ev.get('placed', 0)})")
            self.eval_status = status
        unplaced = status == "complete" and int(ev.get("queued") or 0) > 0
        if status in ("blocked", "failed") or ev.get("failures") or unplaced:
            if status == "failed" and not ev.get("failures"):
                say(f"==> Evaluation failed: {ev.get('status_description') or 'no reason given'}")
                return EXIT_ERROR, True
            for line in describe_placement_failure(ev):
                say(f"==> {line}")
            say(f'    The job stays pending and is placed when capacity appears '
                f'(orch job status {self.job_id}).')
            return EXIT_NOT_PLACED, True
        return None, status in ("complete", "canceled")

    def report_allocs(self, job: dict) -> None:
        for alloc in current_allocs(job):
            alloc_id, status = alloc.get("allocation_id"), alloc_status(alloc)
            before = self.seen.get(alloc_id)
            if before is None:
                name = alloc.get("name") or alloc.get("task_group")
                say(f"    Allocation {short(alloc_id)} ({name}) on node "
                    f"{short(alloc.get('node_id'))}: {status}")
            elif before != status:
                say(f"    Allocation {short(alloc_id)}: {before} -> {status}")
            self.seen[alloc_id] = status

    def job_verdict(self, job: dict) -> int | None:
        status = job.get("status")
        job_type = job.get("type") or self.job_type
        if status == "dead" or job.get("stopped"):
            say(f'==> Job "{self.job_id}" was stopped')
            return EXIT_ERROR
        if status == "failed":
            say(f'==> Job "{self.job_id}" failed')
            self.report_failures(job)
            return EXIT_ERROR
        if job_type == "batch":
            if status == "complete":
                say(f'==> Job "{self.job_id}" complete')
                return EXIT_OK
            return None
        wanted = wanted_count(job)
        running = sum(1 for a in current_allocs(job) if alloc_status(a) == "running")
        if running >= wanted:
            say(f'==> Job "{self.job_id}": {running} of {wanted} allocations running')
            return EXIT_OK
        return None

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
                    say(f'    Allocation {short(alloc["allocation_id"])} task "{name}": {why}')


@client_command
def job_run(args, client: Client) -> int:
    spec = load_job_file(args.file)
    resp = client.jobs.submit(spec)
    job_id, eval_id = resp.get("job_id"), resp.get("evaluation_id")
    if args.detach:
        say(f'Job "{job_id}" submitted; evaluation {eval_id}')
        return EXIT_OK
    say(f'==> Job "{job_id}" submitted; evaluation {short(eval_id)}')
    monitor = RunMonitor(client, job_id, eval_id, spec.get("type") or "batch",
                         timeout=args.timeout)
    try:
        return monitor.run()
    except KeyboardInterrupt:
        say(f'==> Stopped following; the job keeps going (orch job status {job_id})')
        return EXIT_OK


# ---- job status / stop / restart / delete ----------------------------------

@client_command
def job_status(args, client: Client) -> int:
    if args.id is None:
        jobs = client.jobs.list()
        if args.json:
            print_json(jobs)
        elif not jobs:
            say("No jobs")
        else:
            rows = [[j.get("job_id"), j.get("type", "batch"), j.get("status"),
                     alloc_counts(j)] for j in sorted(jobs, key=lambda j: j.get("job_id", ""))]
            say(table(["ID", "Type", "Status", "Allocs"], rows))
        return EXIT_OK
    job = get_job(client, args.id)
    if args.json:
        print_json(job)
        return EXIT_OK
    say(job_summary(job, time.time()))
    return EXIT_OK


def job_summary(job: dict, now: float) -> str:
    groups = ", ".join(f"{tg.get('name')} (count {tg.get('count')})"
                       for tg in job.get("task_groups") or [])
    head = fields([("ID", job.get("job_id")), ("Type", job.get("type", "batch")),
                   ("Status", job.get("status")), ("Version", job.get("version")),
                   ("Groups", groups), ("Allocs", alloc_counts(job))])
    allocs = sorted(job.get("allocations") or [],
                    key=lambda a: (-(a.get("create_time") or 0), a.get("name") or ""))
    if not allocs:
        return head + "\n\nNo allocations"
    rows = [[short(a.get("allocation_id")), short(a.get("node_id")), a.get("task_group"),
             alloc_status(a), a.get("desired_status", "run"),
             ago(a.get("create_time") or a.get("start_time"), now)] for a in allocs]
    return head + "\n\nAllocations\n" + table(
        ["ID", "Node", "Group", "Status", "Desired", "Created"], rows)


@client_command
def job_stop(args, client: Client) -> int:
    get_job(client, args.id)
    client.jobs.stop(args.id)
    say(f'Job "{args.id}" stopped; its allocations are being stopped')
    return EXIT_OK


@client_command
def job_restart(args, client: Client) -> int:
    get_job(client, args.id)
    resp = client.jobs.restart(args.id)
    say(f'Job "{args.id}" restarted; evaluation {resp.get("evaluation_id")}')
    return EXIT_OK


@client_command
def job_delete(args, client: Client) -> int:
    get_job(client, args.id)
    client.jobs.delete(args.id)
    say(f'Job "{args.id}" deleted')
    return EXIT_OK


# ---- node status -----------------------------------------------------------

@client_command
def node_status(args, client: Client) -> int:
    nodes = client.nodes.list()
    if args.json:
        print_json(nodes)
    elif not nodes:
        say("No nodes")
    else:
        rows = [node_row(n) for n in sorted(nodes, key=lambda n: n.get("node_id", ""))]
        say(table(["ID", "Region", "Endpoint", "Healthy", "CPU", "Memory", "Allocs"], rows))
    return EXIT_OK


# ---- alloc status / logs ---------------------------------------------------

@client_command
def alloc_status_cmd(args, client: Client) -> int:
    alloc = resolve_alloc(client, args.id)
    if args.json:
        print_json(alloc)
    else:
        say(alloc_summary(alloc, time.time()))
    return EXIT_OK


def alloc_summary(alloc: dict, now: float) -> str:
    out = [fields([
        ("ID", alloc.get("allocation_id")), ("Name", alloc.get("name")),
        ("Job", alloc.get("job_id")), ("Group", alloc.get("task_group")),
        ("Node", alloc.get("node_id")), ("Client Status", alloc_status(alloc)),
        ("Desired Status", alloc.get("desired_status")),
        ("Description", alloc.get("description")),
        ("Created", ago(alloc.get("create_time"), now)),
        ("Started", ago(alloc.get("start_time"), now)),
        ("Finished", ago(alloc.get("end_time"), now))])]
    for name, task in sorted((alloc.get("tasks") or {}).items()):
        out.append("")
        out.append(f'Task "{name}" is "{task.get("status", "pending")}"')
        out.append(fields([("Exit Code", task.get("exit_code")),
                           ("Restarts", task.get("restarts", 0)),
                           ("Error", task.get("error"))]))
        events = task.get("events") or []
        if events:
            out.append("Recent Events:")
            out.append(table(["Time", "Type", "Message"],
                             [event_line(e, now) for e in reversed(events[-10:])]))
    return "\n".join(out)


@client_command
def alloc_logs(args, client: Client) -> int:
    alloc = resolve_alloc(client, args.id)
    alloc_id = alloc["allocation_id"]
    out = sys.stdout.buffer
    if not args.follow:
        out.write(client.allocs.logs(alloc_id, args.task, stderr=args.stderr))
        out.flush()
        return EXIT_OK
    try:
        follow_logs(client, alloc_id, args.task, args.stderr, out)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def follow_logs(client: Client, alloc_id: str, task: str, stderr: bool, out,
                *, now=time.monotonic, sleep=time.sleep) -> None:
    """Poll the log from the last offset until the allocation is terminal."""
    offset, terminal, next_check = 0, False, 0.0
    while True:
        try:
            chunk = client.allocs.logs(alloc_id, task, stderr=stderr, offset=offset)
        except errors.NotFound:
            chunk = b""          # the task has not written its log yet
        if chunk:
            out.write(chunk)
            out.flush()
            offset += len(chunk)
            continue
        if terminal:
            return
        if now() >= next_check:
            terminal = alloc_status(client.allocs.get(alloc_id)) in TERMINAL_ALLOC
            next_check = now() + ALLOC_CHECK_INTERVAL
            if terminal:
                continue         # read once more: the last lines may have landed
        sleep(LOG_POLL_INTERVAL)
