"""`orch job history` and `orch job revert`: a job's kept versions, and going back."""

from __future__ import annotations

import json
import time

from orch.cli.commands import EXIT_OK, about_job, client_command, print_json, say
from orch.cli.format import ago, fields
from orch.client import Client


@client_command
def job_history(args, client: Client) -> int:
    """Each kept version, newest first, with what changed from the one before."""
    with about_job(args.id):
        resp = client.jobs.versions(args.id)
    if args.json:
        print_json(resp)
    else:
        print(history_text(resp.get("versions") or [], time.time()))
    return EXIT_OK


def history_text(versions: list[dict], now: float) -> str:
    """Nomad's `job history -p` shape: a summary block per version, its diff below."""
    blocks = []
    for v in versions:
        submitted = v.get("submit_time")
        when = "-"
        if submitted:
            exact = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(submitted))
            when = f"{exact} ({ago(submitted, now)})"
        block = fields(
            [
                ("Version", v.get("version")),
                ("Stable", str(v.get("stable")).lower()),
                ("Submit Date", when),
            ]
        )
        diff = v.get("diff") or []
        if diff:
            block += "\nDiff =\n" + "\n".join(diff_line(change) for change in diff)
        blocks.append(block)
    return "\n\n".join(blocks)


def diff_line(change: dict) -> str:
    """``  task_groups[0].count: 2 => 3`` (added: ``+``, removed: ``-``)."""
    old, new = change.get("old"), change.get("new")
    path = change.get("path")
    if old is None:
        return f"+ {path}: {_value(new)}"
    if new is None:
        return f"- {path}: {_value(old)}"
    return f"  {path}: {_value(old)} => {_value(new)}"


def _value(value) -> str:
    return json.dumps(value, ensure_ascii=False)


@client_command
def job_revert(args, client: Client) -> int:
    with about_job(args.id):
        resp = client.jobs.revert(args.id, args.version)
    say(
        f'Job "{args.id}" reverted to version {args.version}: now version '
        f"{resp.get('version')}; evaluation {resp.get('evaluation_id')}"
    )
    return EXIT_OK
