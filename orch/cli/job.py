"""The `orch job` commands: run, plan, inspect, status, stop, restart, delete."""

from __future__ import annotations

import json
import sys
import time

from orch import errors
from orch.cli.commands import (
    EXIT_ERROR,
    EXIT_OK,
    about_job,
    client_command,
    get_job,
    load_job_file,
    print_json,
    say,
    style,
)
from orch.cli.format import (
    PLAIN,
    Style,
    ago,
    alloc_counts,
    alloc_status,
    describe_failures,
    fields,
    short,
    table,
)
from orch.cli.launch import children_text, next_launch_text
from orch.cli.run import EXIT_NOT_PLACED, Live, RunMonitor
from orch.client import Client

# What `job inspect` leaves out of GET /jobs/<id>: state, not the job's spec.
NOT_SPEC = ("allocations", "status", "summary", "children")


# ---- job run -----------------------------------------------------------------


@client_command
def job_run(args, client: Client) -> int:
    spec = load_job_file(args.file)
    resp = client.jobs.submit(spec)
    job_id, eval_id = str(resp.get("job_id")), resp.get("evaluation_id")
    if args.detach:
        say(f'Job "{job_id}" submitted; evaluation {eval_id}')
        return EXIT_OK
    if spec.get("periodic") is not None or spec.get("parameterized") is not None:
        # Never placed itself (as Nomad): nothing to follow but its children.
        how = "dispatch" if spec.get("periodic") is None else "periodic force"
        say(f'==> Job "{job_id}" registered; it runs through child jobs (orch job {how} {job_id})')
        return EXIT_OK
    say(f'==> Job "{job_id}" submitted; evaluation {short(eval_id)}')
    monitor = RunMonitor(
        client,
        job_id,
        eval_id,
        spec.get("type") or "batch",
        timeout=args.timeout,
        live=Live(sys.stdout),
        style=style(),
    )
    try:
        return monitor.run()
    except KeyboardInterrupt:
        say(f"==> Stopped following; the job keeps going (orch job status {job_id})")
        return EXIT_OK


# ---- job convert -------------------------------------------------------------


def job_convert(args) -> int:
    """Print the orch job body a job file (Nomad HCL or JSON, or orch's) stands for."""
    try:
        spec = load_job_file(args.file)
    except errors.OrchError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    say(json.dumps(spec, indent=2, ensure_ascii=False))
    return EXIT_OK


# ---- job plan ----------------------------------------------------------------


@client_command
def job_plan(args, client: Client) -> int:
    """A dry run: what `job run` would place, replace, stop or leave; exit 2
    if something could not be placed (as `job run`)."""
    plan = client.jobs.plan(load_job_file(args.file))
    if args.json:
        print_json(plan)
    else:
        say(plan_text(plan, args.file, style()))
    return EXIT_NOT_PLACED if plan.get("failures") else EXIT_OK


def plan_text(plan: dict, path: str, paint: Style = PLAIN) -> str:
    job_id = plan.get("job_id")
    if plan.get("exists") and plan.get("changed") is False:
        head = f'Job "{job_id}": no change (version {plan.get("current_version")})'
    elif plan.get("exists"):
        head = (
            f'Job "{job_id}": update, version {plan.get("current_version")}'
            f" -> {plan.get('version')}"
        )
    else:
        head = f'Job "{job_id}": new'
    lines = [paint(head, "bold")]
    for name, d in sorted((plan.get("diff") or {}).items()):
        scale = f", scale {d.get('scale')}" if d.get("scale") not in (None, "0") else ""
        lines.append(
            f'    Group "{name}": {d.get("place", 0)} place, '
            f"{d.get('replace', 0)} replace (destructive), {d.get('stop', 0)} stop, "
            f"{d.get('keep', 0)} keep{scale}"
        )
    for name, f in sorted((plan.get("failures") or {}).items()):
        why = describe_failures(f.get("failures") or {}, f.get("nodes")) or "no eligible node"
        lines.append(
            paint(f'==> Group "{name}": {f.get("wanted")} would not be placed: {why}', "red")
        )
    lines.append("")
    lines.append(f"Nothing was changed. To submit: orch job run {path}")
    return "\n".join(lines)


# ---- job inspect / status ------------------------------------------------------


@client_command
def job_inspect(args, client: Client) -> int:
    """The stored job as JSON (what was submitted, with its version)."""
    job = get_job(client, args.id)
    print_json(
        {k: v for k, v in job.items() if k not in NOT_SPEC and not (k == "parent_id" and v is None)}
    )
    return EXIT_OK


@client_command
def job_status(args, client: Client) -> int:
    paint = style()
    if args.id is None:
        jobs = client.jobs.list()
        if args.json:
            print_json(jobs)
        elif not jobs:
            say("No jobs")
        else:
            now = time.time()
            rows = [
                [
                    j.get("job_id"),
                    j.get("type", "batch"),
                    j.get("status"),
                    alloc_counts(j),
                    ago(j.get("submit_time"), now),
                ]
                for j in sorted(jobs, key=lambda j: j.get("job_id", ""))
            ]
            say(table(["ID", "Type", "Status", "Allocs", "Submitted"], rows, paint=paint.cell))
        return EXIT_OK
    job = get_job(client, args.id)
    if args.json:
        print_json(job)
    else:
        say(job_summary(job, time.time(), paint))
        latest = latest_deployment(client, job)
        if latest is not None:
            say("\nLatest Deployment\n" + latest)
        if "children" in job:
            say(children_text(job, time.time()))
    return EXIT_OK


def latest_deployment(client: Client, job: dict) -> str | None:
    """The latest deployment's summary for a service job, as Nomad's job status shows."""
    deployments = getattr(client, "deployments", None)
    if job.get("type") != "service" or deployments is None:
        return None
    try:
        d = deployments.of_job(str(job.get("job_id")))
    except errors.OrchError:
        return None  # a server without deployments: the rest of the status stands
    if d is None:
        return None
    return fields(
        [
            ("ID", short(d.get("deployment_id"))),
            ("Version", d.get("job_version")),
            ("Status", d.get("status")),
            ("Description", d.get("status_description")),
        ]
    )


def job_summary(job: dict, now: float, paint: Style = PLAIN) -> str:
    groups = ", ".join(
        f"{tg.get('name')} (count {tg.get('count')})" for tg in job.get("task_groups") or []
    )
    head = fields(
        [
            ("ID", job.get("job_id")),
            ("Type", job.get("type", "batch")),
            *([("Parent", job["parent_id"])] if job.get("parent_id") else []),
            *([("Next launch", next_launch_text(job, now))] if "next_launch" in job else []),
            ("Status", paint.status(job.get("status"))),
            ("Version", job.get("version")),
            ("Submitted", ago(job.get("submit_time"), now)),
            ("Groups", groups),
            ("Allocs", alloc_counts(job)),
        ]
    )
    head += summary_text(job)
    allocs = sorted(
        job.get("allocations") or [],
        key=lambda a: (-(a.get("create_time") or 0), a.get("name") or ""),
    )
    if not allocs:
        return head + "\n\nNo allocations"
    # A Health column where a group has services (their checks make health).
    checked = any(tg.get("services") for tg in job.get("task_groups") or [])
    rows = [
        [
            short(a.get("allocation_id")),
            short(a.get("node_id")),
            a.get("task_group"),
            alloc_status(a),
            *([a.get("health") or "unknown"] if checked else []),
            a.get("desired_status", "run"),
            ago(a.get("create_time") or a.get("start_time"), now),
        ]
        for a in allocs
    ]
    header = ["ID", "Node", "Group", "Status", *(["Health"] if checked else []), "Desired"]
    return head + "\n\nAllocations\n" + table([*header, "Created"], rows, paint=paint.cell)


SUMMARY_COLUMNS = ("queued", "starting", "running", "complete", "failed", "lost")


def summary_text(job: dict) -> str:
    """The per-group summary (Nomad's job summary), if any; the parent is in the
    head and the children have their own table (children_text)."""
    out = ""
    summary = job.get("summary")
    if isinstance(summary, dict) and summary:
        rows = [
            [name] + [counts.get(key, 0) for key in SUMMARY_COLUMNS]
            for name, counts in sorted(summary.items())
            if isinstance(counts, dict)
        ]
        headers = ["Group"] + [key.capitalize() for key in SUMMARY_COLUMNS]
        out += "\n\nSummary\n" + table(headers, rows)
    return out


# ---- job stop / restart / delete ---------------------------------------------------


@client_command
def job_stop(args, client: Client) -> int:
    with about_job(args.id):
        client.jobs.stop(args.id)
    say(f'Job "{args.id}" stopped; its allocations are being stopped')
    return EXIT_OK


@client_command
def job_restart(args, client: Client) -> int:
    with about_job(args.id):
        resp = client.jobs.restart(args.id)
    say(f'Job "{args.id}" restarted; evaluation {resp.get("evaluation_id")}')
    return EXIT_OK


@client_command
def job_delete(args, client: Client) -> int:
    with about_job(args.id):
        client.jobs.delete(args.id)
    say(f'Job "{args.id}" deleted')
    return EXIT_OK
