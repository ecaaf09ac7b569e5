"""`orch deployment status|fail`, `orch job promote|rollout`: rolling updates."""

from __future__ import annotations

import time

from orch import errors
from orch.cli.commands import EXIT_OK, about_job, client_command, print_json, say
from orch.cli.format import fields, short, table
from orch.client import Client

EXIT_FAILED = 1
FOLLOW_INTERVAL = 0.25
# The longest one blocking read of the job waits (orch.cli.run's reason).
WATCH_WAIT_S = 1.0


def find_deployment(client: Client, ident: str) -> dict:
    """A deployment by id, or the latest one of the job with that id."""
    try:
        return client.deployments.get(ident)
    except errors.NotFound:
        pass
    with about_job(ident):
        latest = client.deployments.of_job(ident)
    if latest is None:
        raise errors.NotFound(f'no deployment "{ident}", and job "{ident}" has none')
    return latest


def deployment_text(d: dict) -> str:
    """Nomad's `deployment status` shape: a summary, then one row per group."""
    head = fields(
        [
            ("ID", d.get("deployment_id")),
            ("Job ID", d.get("job_id")),
            ("Job Version", d.get("job_version")),
            ("Status", d.get("status")),
            ("Description", d.get("status_description")),
        ]
    )
    rows = []
    for name, g in (d.get("groups") or {}).items():
        canaries = g.get("desired_canaries") or 0
        rows.append(
            [
                name,
                str(g.get("promoted")).lower() if canaries else "-",
                g.get("desired_total"),
                canaries,
                g.get("placed"),
                g.get("healthy"),
                g.get("unhealthy"),
            ]
        )
    headers = ["Task Group", "Promoted", "Desired", "Canaries", "Placed", "Healthy", "Unhealthy"]
    return f"{head}\n\nDeployed\n{table(headers, rows)}"


@client_command
def deployment_status(args, client: Client) -> int:
    d = find_deployment(client, args.id)
    if args.json:
        print_json(d)
    else:
        say(deployment_text(d))
    return EXIT_OK


@client_command
def deployment_fail(args, client: Client) -> int:
    d = client.deployments.fail(find_deployment(client, args.id)["deployment_id"])
    say(f"Deployment {short(d.get('deployment_id'))} failed: {d.get('status_description')}")
    return EXIT_OK


@client_command
def job_promote(args, client: Client) -> int:
    """Promote the canaries of the job's running deployment."""
    with about_job(args.id):
        latest = client.deployments.of_job(args.id)
    if latest is None or latest.get("status") != "running":
        raise errors.Conflict(f'job "{args.id}" has no running deployment to promote')
    d = client.deployments.promote(latest["deployment_id"])
    say(f'Deployment {short(d.get("deployment_id"))} of job "{args.id}" promoted')
    return EXIT_OK


@client_command
def job_rollout(args, client: Client) -> int:
    """Replace every copy under the update rules; follow the deployment it starts."""
    with about_job(args.id):
        resp = client.jobs.rollout(args.id)
    say(f'==> Job "{args.id}" rollout: version {resp.get("version")}')
    if args.detach:
        return EXIT_OK
    return follow(client, args.id, int(resp.get("version") or 0), args.timeout)


def follow(client: Client, job_id: str, version: int, timeout: float) -> int:
    """Wait for the job version's deployment to end: 0 successful, 1 otherwise."""
    deadline = time.monotonic() + timeout
    seen = None
    index = 0
    while time.monotonic() < deadline:
        d = client.deployments.of_job(job_id)
        if d is not None and d.get("job_version") == version:
            verdict = deployment_verdict(d, seen)
            seen = (d.get("status"), d.get("groups"))
            if verdict is not None:
                return verdict
        # Wait for the job to change (its deployments, allocations) rather than
        # poll; an unchanged index (a server without blocking queries answers
        # 0, a busy one may not wait) makes it sleep as before.
        wait = min(WATCH_WAIT_S, max(0.0, deadline - time.monotonic()))
        newer = client.jobs.watch(job_id, index, wait)[1]
        if newer == index:
            time.sleep(FOLLOW_INTERVAL)
        index = newer
    say(f'==> Timed out after {timeout:g}s following the deployment of job "{job_id}"')
    return EXIT_FAILED


def deployment_verdict(d: dict, seen, out=say) -> int | None:
    """Say how the deployment moved; its exit code once it ended."""
    status = d.get("status")
    if seen != (status, d.get("groups")):
        for name, g in (d.get("groups") or {}).items():
            out(
                f"    Deployment {short(d.get('deployment_id'))} {name}: {status}, "
                f"{g.get('healthy')} of {g.get('desired_total')} healthy"
            )
    if status == "successful":
        out(f"==> Deployment {short(d.get('deployment_id'))} successful")
        return EXIT_OK
    if status in ("failed", "cancelled"):
        why = d.get("status_description")
        out(f"==> Deployment {short(d.get('deployment_id'))} {status}: {why}")
        return EXIT_FAILED
    return None
