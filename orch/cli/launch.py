"""`orch job dispatch` and `orch job periodic force`: children of parent jobs."""

from __future__ import annotations

import argparse
import base64
import sys

from orch import errors
from orch.cli.commands import EXIT_OK, about_job, client_command, say
from orch.cli.format import ago, table
from orch.client import Client


def parse_meta(pairs: list[str] | None) -> dict[str, str]:
    """`-meta k=v` pairs (repeatable) as a dict."""
    meta = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise errors.ValidationError(f"-meta {pair!r}: must be KEY=VALUE")
        meta[key] = value
    return meta


def dispatch_target(args) -> tuple[list[str], str | None]:
    """`-meta k=v` pairs and the payload path; what follows the job id is parsed here.

    argparse cannot give an optional positional its value once options came
    between (`ID -meta k=v FILE`); a parser for the rest alone can, intermixed.
    Client options given after the id (`--address`, `--token`) are applied."""
    rest = argparse.ArgumentParser(prog="orch job dispatch ID", add_help=False)
    rest.add_argument("-meta", "--meta", action="append", default=[])
    rest.add_argument("--address")
    rest.add_argument("--token")
    rest.add_argument("payload", nargs="?")
    parsed = rest.parse_intermixed_args(args.rest)
    if parsed.address:
        args.address = parsed.address.rstrip("/")
    if parsed.token:
        args.token = parsed.token
    return [*(args.meta or ()), *parsed.meta], parsed.payload


def read_payload(path: str | None) -> str | None:
    """The payload file (or - for stdin) as base64; None without one."""
    if path is None:
        return None
    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except OSError as exc:
        raise errors.ValidationError(f"{path}: {exc.strerror}") from exc
    return base64.b64encode(raw).decode("ascii")


def job_dispatch(args) -> int:
    args.meta_pairs, args.payload = dispatch_target(args)  # may set args.address
    return _dispatch(args)


@client_command
def _dispatch(args, client: Client) -> int:
    meta, payload = parse_meta(args.meta_pairs), read_payload(args.payload)
    with about_job(args.id):
        resp = client.jobs.dispatch(args.id, meta, payload)
    if resp.get("evaluation_id") is None:  # the child of its idempotency token
        say(str(resp.get("message")))
        return EXIT_OK
    say(f'Dispatched job "{resp.get("dispatched_job_id")}"; evaluation {resp.get("evaluation_id")}')
    return EXIT_OK


@client_command
def job_periodic_force(args, client: Client) -> int:
    with about_job(args.id):
        resp = client.jobs.periodic_force(args.id)
    say(f'Launched job "{resp.get("job_id")}"; evaluation {resp.get("evaluation_id")}')
    return EXIT_OK


def next_launch_text(job: dict, now: float) -> str:
    """A periodic job's next launch: "in 60s", or "none" when disabled or stopped."""
    when = job.get("next_launch")
    if when is None:
        return "none"
    return f"in {int(when - now)}s" if when >= now else ago(when, now)


def children_text(job: dict, now: float) -> str:
    """The table `orch job status ID` adds for a periodic or parameterized job."""
    children = job.get("children") or []
    if not children:
        return "\nNo children"
    rows = [[c.get("job_id"), c.get("status")] for c in children]
    return "\nChildren\n" + table(["ID", "Status"], rows)
