"""Client commands of the CLI over ``orch.client``: shared plumbing, node and
alloc commands. Job commands are in ``job``, `job run`'s follower in
``run``."""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from contextlib import contextmanager

from orch import errors
from orch.cli.format import (
    PLAIN,
    TERMINAL_ALLOC,
    Style,
    ago,
    alloc_status,
    colour_enabled,
    drain_cells,
    event_line,
    fields,
    matches_short,
    node_row,
    short,
    table,
)
from orch.cli.messages import in_english, with_english
from orch.client import Client
from orch.jobspec import parse_job
from orch.nomad.translate import is_nomad_job, job_from_nomad

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR = 0, 1
LOG_POLL_INTERVAL = 0.25
ALLOC_CHECK_INTERVAL = 1.0


def say(line: str = "") -> None:
    print(line, flush=True)


def client_command(fn):
    """Open a Client from --address/--token; errors become one line and exit 1."""

    @functools.wraps(fn)
    def handler(args) -> int:
        try:
            client = Client(args.address, token=args.token)
        except errors.OrchError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return EXIT_ERROR
        try:
            return fn(args, client)
        except errors.OrchError as exc:  # ClientError included
            print(f"error: {with_english(exc.message)}", file=sys.stderr)
        except (KeyError, TypeError, AttributeError) as exc:
            # JSON of another shape than orch's (something else on the port,
            # an incompatible server): one line, the trace at DEBUG.
            log.debug("unexpected answer", exc_info=True)
            print(
                f"error: {client.address} answered JSON orch does not understand "
                f"({type(exc).__name__}: {exc}); is it an orch server?",
                file=sys.stderr,
            )
        finally:
            client.close()
        return EXIT_ERROR

    return handler


def print_json(body) -> None:
    say(json.dumps(body, indent=2, ensure_ascii=False, sort_keys=True))


def style() -> Style:
    """Colour for stdout: on a terminal only, and never with NO_COLOR set."""
    return Style(colour_enabled(sys.stdout))


def load_job_file(path: str) -> dict:
    """A job file: the seed's JSON job body, or a Nomad job (HCL or its JSON), translated.

    HCL is recognised by its extension (``.hcl``, ``.nomad``) or by not being
    JSON; ``-`` reads stdin."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise errors.ValidationError(f"{path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise errors.ValidationError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at {exc.start})"
        ) from exc
    if path.endswith((".hcl", ".nomad")) or not text.lstrip().startswith(("{", "[")):
        # Imported here: python-hcl2 builds its grammar on import (~0.4 s), which
        # no other command should pay for.
        from orch.nomad.hcl import job_from_hcl

        try:
            return job_from_hcl(text)  # translated and checked, errors with their line
        except errors.ValidationError as exc:
            raise errors.ValidationError(f"{path}: {exc.message}") from exc
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.ValidationError(f"{path}: invalid JSON: {exc}") from exc
    except RecursionError as exc:
        raise errors.ValidationError(f"{path}: invalid JSON: nested too deeply") from exc
    if not isinstance(spec, dict):
        raise errors.ValidationError(f"{path}: a job is a JSON object")
    if is_nomad_job(spec):
        spec = job_from_nomad(spec)
    # Checked here first, so a bad file is pointed at by its field path
    # (`task_groups[0].tasks[1].resources.memory: ...`) before any request.
    parse_job(spec, max_count=sys.maxsize)  # the server enforces its own limit
    return spec


@contextmanager
def about_job(job_id: str):
    """Name the job in a job route's 404 that says the job is missing (the
    seed's 作业不存在: 作业不存在 (job "web" not found)). Any other 404 (no
    such version, deployment, allocation) is its own message: the job is there."""
    try:
        yield
    except errors.NotFound as exc:
        if in_english(exc.message) != "job not found":
            raise
        raise errors.NotFound(f'{exc.message} (job "{job_id}" not found)') from exc


def get_job(client: Client, job_id: str) -> dict:
    with about_job(job_id):
        return client.jobs.get(job_id)


# As Nomad's CLI: a prefix names an id from two characters on (an empty one
# matched every node and every allocation: `node drain ''` drained a node).
MIN_PREFIX = 2


def check_prefix(ident: str, kind: str) -> None:
    """Refuse a prefix too short to name one ``kind`` (node, allocation)."""
    if len(ident) < MIN_PREFIX:
        raise errors.ValidationError(
            f'{kind} id "{ident}": give the id or a prefix of at least {MIN_PREFIX} characters'
        )


def resolve_alloc(client: Client, ident: str) -> dict:
    """The allocation by full id, by a unique prefix (as Nomad accepts), or by
    the short id the tables print."""
    if ident:
        try:
            return client.allocs.get(ident)
        except errors.NotFound:
            pass
    check_prefix(ident, "allocation")
    matches = {
        a["allocation_id"]
        for job in client.jobs.list()
        for a in job.get("allocations") or []
        if matches_short(str(a.get("allocation_id", "")), ident)
    }
    if len(matches) > 1:
        raise errors.ValidationError(
            f'allocation prefix "{ident}" matches {len(matches)} allocations'
        )
    if not matches:
        raise errors.NotFound(f'allocation "{ident}" not found')
    return client.allocs.get(matches.pop())


# ---- node status -----------------------------------------------------------


@client_command
def node_status(args, client: Client) -> int:
    nodes = client.nodes.list()
    if args.json:
        print_json(nodes)
    elif not nodes:
        say("No nodes")
    else:
        now = time.time()
        rows = [
            node_row(n) + drain_cells(n, now) + [ago(n.get("last_heartbeat"), now)]
            for n in sorted(nodes, key=lambda n: n.get("node_id", ""))
        ]
        say(
            table(
                [
                    "ID",
                    "Region",
                    "Endpoint",
                    "Healthy",
                    "CPU Allocated",
                    "Memory Allocated",
                    "Allocs",
                    "Eligibility",
                    "Drain",
                    "Heartbeat",
                ],
                rows,
                paint=style().cell,
            )
        )
    return EXIT_OK


# ---- alloc status / logs ---------------------------------------------------


@client_command
def alloc_status_cmd(args, client: Client) -> int:
    alloc = resolve_alloc(client, args.id)
    if args.json:
        print_json(alloc)
    else:
        say(alloc_summary(alloc, time.time(), style()))
    return EXIT_OK


def alloc_summary(alloc: dict, now: float, paint: Style = PLAIN) -> str:
    out = [
        fields(
            [
                ("ID", alloc.get("allocation_id")),
                ("Name", alloc.get("name")),
                ("Job", alloc.get("job_id")),
                ("Group", alloc.get("task_group")),
                ("Node", alloc.get("node_id")),
                ("Client Status", paint.status(alloc_status(alloc))),
                ("Desired Status", alloc.get("desired_status")),
                ("Description", alloc.get("description")),
                ("Created", ago(alloc.get("create_time"), now)),
                ("Started", ago(alloc.get("start_time"), now)),
                ("Finished", ago(alloc.get("end_time"), now)),
                *health_fields(alloc),
            ]
        )
    ]
    out.extend(checks_table(alloc, now))
    for name, task in sorted((alloc.get("tasks") or {}).items()):
        out.append("")
        out.append(f'Task "{name}" is "{paint.status(task.get("status", "pending"))}"')
        out.append(
            fields(
                [
                    ("Exit Code", task.get("exit_code")),
                    ("Restarts", task.get("restarts", 0)),
                    ("Error", task.get("error")),
                ]
            )
        )
        events = task.get("events") or []
        if events:
            out.append("Recent Events:")
            out.append(
                table(
                    ["Time", "Type", "Message"],
                    [event_line(e, now) for e in reversed(events[-10:])],
                )
            )
    return "\n".join(out)


def health_fields(alloc: dict) -> list[tuple[str, object]]:
    """The Health line of an allocation whose group has checks."""
    if alloc.get("health") is None and not alloc.get("checks"):
        return []
    return [("Health", alloc.get("health") or "unknown")]


def checks_table(alloc: dict, now: float) -> list[str]:
    """The last result of each health check, output on one line."""
    checks = alloc.get("checks") or {}
    if not checks:
        return []
    rows = [
        [key, c.get("status"), ago(c.get("time"), now), " ".join(str(c.get("output")).split())]
        for key, c in sorted(checks.items())
    ]
    return ["", "Checks", table(["Check", "Status", "Since", "Output"], rows)]


@client_command
def alloc_logs(args, client: Client) -> int:
    alloc = resolve_alloc(client, args.id)
    alloc_id = alloc["allocation_id"]
    task = args.task or only_task(client, alloc)
    out = sys.stdout.buffer
    if not args.follow:
        # The server answers a page (1 MiB) at a time: read on to the end.
        offset = 0
        while chunk := client.allocs.logs(alloc_id, task, stderr=args.stderr, offset=offset):
            out.write(chunk)
            offset += len(chunk)
        out.flush()
        return EXIT_OK
    try:
        follow_logs(client, alloc_id, task, args.stderr, out)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def only_task(client: Client, alloc: dict) -> str:
    """The allocation's one task; its group's spec says when no task has reported yet."""
    names = sorted(alloc.get("tasks") or {})
    if not names:
        job = get_job(client, alloc.get("job_id", ""))
        names = sorted(
            t.get("name")
            for tg in job.get("task_groups") or []
            if tg.get("name") == alloc.get("task_group")
            for t in tg.get("tasks") or []
        )
    if len(names) == 1:
        return names[0]
    short_id = short(alloc.get("allocation_id"))
    if not names:
        raise errors.NotFound(f"allocation {short_id} has no task to read the log of")
    raise errors.ValidationError(
        f"allocation {short_id} has tasks {', '.join(names)}: name one "
        f"(orch alloc logs {short_id} TASK)"
    )


def follow_logs(
    client: Client,
    alloc_id: str,
    task: str,
    stderr: bool,
    out,
    *,
    now=time.monotonic,
    sleep=time.sleep,
) -> None:
    """Poll the log from the last offset until the allocation is terminal."""
    offset, terminal, next_check = 0, False, 0.0
    while True:
        try:
            chunk = client.allocs.logs(alloc_id, task, stderr=stderr, offset=offset)
        except errors.NotFound:
            chunk = b""  # the task has not written its log yet
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
                continue  # read once more: the last lines may have landed
        sleep(LOG_POLL_INTERVAL)
