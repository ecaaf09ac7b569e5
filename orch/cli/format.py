"""Pure text formatting for the CLI: tables, ages, placement failures in words."""

from __future__ import annotations

import os
import re

TERMINAL_ALLOC = frozenset({"complete", "failed", "stopped", "lost"})


# Time-ordered (UUIDv7) ids share their first characters for a minute; their
# random part is at the end.
UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def short(ident: str | None, n: int = 8) -> str:
    """The 8 characters that tell ids apart: the start of a random id, the end
    of a time-ordered one."""
    if not ident:
        return "-"
    return ident[-n:] if UUID7.fullmatch(ident) else ident[:n]


def matches_short(ident: str, given: str) -> bool:
    """Does ``given`` name ``ident``: the short id the tables print, or a
    prefix of the full id? Never any other end of it: 8 characters then have
    one meaning per id, the one a table showed."""
    return given == short(ident) or ident.startswith(given)


def table(headers: list[str], rows: list[list], paint=None) -> str:
    """Left-aligned columns two spaces apart, no trailing blanks.

    ``paint(column, text)`` may wrap a body cell in colour; widths are those
    of the plain text, so colour codes never misalign the columns.
    """
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        out = [
            (paint(headers[i], c) if paint and n else c) + " " * (widths[i] - len(c))
            for i, c in enumerate(row)
        ]
        lines.append("  ".join(out).rstrip())
    return "\n".join(lines)


def fields(pairs: list[tuple[str, object]]) -> str:
    """``Key = value`` lines with the ``=`` aligned, as Nomad prints summaries."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)} = {'-' if v is None or v == '' else v}" for k, v in pairs)


def ago(ts: float | None, now: float) -> str:
    """``3s ago``, ``2m5s ago``, ``1h4m ago``, ``3d ago``; ``-`` when unknown."""
    if not ts:
        return "-"
    delta = max(0, int(now - ts))
    if delta < 60:
        return f"{delta}s ago"
    if delta < 3600:
        return f"{delta // 60}m{delta % 60}s ago"
    if delta < 86400:
        return f"{delta // 3600}h{delta % 3600 // 60}m ago"
    return f"{delta // 86400}d ago"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def alloc_status(alloc: dict) -> str:
    """The client status; the seed calls it ``status``."""
    return alloc.get("client_status") or alloc.get("status") or "pending"


def describe_failures(failures: dict, nodes: list[dict] | None = None) -> str:
    """``memory exhausted on node a1b2 (needs 512 MB, 300 free); 1 node
    filtered by constraint region = eu``: each reason with its node count,
    and for a resource the nodes that came closest (``failed_nodes``)."""
    parts = []
    # Capacity first: it is what more nodes or smaller tasks would fix.
    order = sorted(
        failures.items(), key=lambda kv: (not kv[0].endswith("exhausted"), -kv[1], kv[0])
    )
    for reason, count in order:
        count = int(count)
        if reason.endswith(("exhausted", " taken")):  # a resource (cpu, memory, ports)
            near = [n for n in nodes or () if n.get("reason") == reason]
            parts.append(_exhausted(reason, count, near))
        else:
            parts.append(f"{plural(count, 'node')} filtered by {reason}")
    return "; ".join(parts)


def _exhausted(reason: str, count: int, near: list[dict]) -> str:
    key, unit = ("cpu", "MHz") if reason.startswith("cpu") else ("memory", "MB")
    if not near:
        return f"{reason} on {plural(count, 'node')}"
    needs = (near[0].get("needs") or {}).get(key)
    free = [((n.get("free") or {}).get(key), short(n.get("node_id"))) for n in near]
    if count == 1 and len(near) == 1:
        return f"{reason} on node {free[0][1]} (needs {needs} {unit}, {free[0][0]} free)"
    listed = ", ".join(f"{node} {amount}" for amount, node in free)
    return f"{reason} on {plural(count, 'node')} (needs {needs} {unit}; free: {listed})"


def describe_placement_failure(evaluation: dict) -> list[str]:
    """Lines saying how many allocations were not placed and why."""
    groups = evaluation.get("groups") or {}
    nodes = evaluation.get("failed_nodes") or {}
    if groups:
        wanted = sum(int(g.get("wanted", 0)) for g in groups.values())
        failed = sum(int(g.get("failed", 0)) for g in groups.values())
    else:
        failed = int(evaluation.get("queued") or 0)
        wanted = failed + int(evaluation.get("placed") or 0)
    failed_groups = {n: g for n, g in groups.items() if g.get("failed")}
    # Node detail belongs to one group's demand: inline only when one failed.
    inline = nodes.get(next(iter(failed_groups))) if len(failed_groups) == 1 else None
    reasons = (
        describe_failures(evaluation.get("failures") or {}, inline)
        or evaluation.get("status_description")
        or "no eligible node"
    )
    lines = [f"{failed} of {wanted} not placed: {reasons}"]
    if len(failed_groups) > 1:
        for name, g in sorted(failed_groups.items()):
            line = f'group "{name}": {g.get("failed")} of {g.get("wanted")} not placed'
            near = nodes.get(name) or []
            if near:
                line += ": " + "; ".join(_node_detail(n) for n in near)
            lines.append(line)
    return lines


def _node_detail(node: dict) -> str:
    key, unit = ("cpu", "MHz") if str(node.get("reason")).startswith("cpu") else ("memory", "MB")
    return (
        f"{node.get('reason')} on node {short(node.get('node_id'))} "
        f"(needs {(node.get('needs') or {}).get(key)} {unit}, "
        f"{(node.get('free') or {}).get(key)} free)"
    )


def wanted_count(job: dict) -> int:
    if job.get("type") in ("system", "sysbatch"):
        # One copy per eligible node: what the server placed is what it wants.
        return len(current_allocs(job))
    return sum(int(tg.get("count", 1)) for tg in job.get("task_groups") or [])


def current_allocs(job: dict) -> list[dict]:
    """Allocations the server wants running.

    Not filtered by job version: an update that leaves a group unchanged
    keeps its allocations, with the version they were placed under; those
    the update replaces are set to stop by the same evaluation.
    """
    return [a for a in job.get("allocations") or [] if a.get("desired_status", "run") == "run"]


def alloc_counts(job: dict) -> str:
    """``running/wanted`` for the jobs table."""
    running = sum(1 for a in current_allocs(job) if alloc_status(a) == "running")
    wanted = 0 if job.get("status") == "dead" or job.get("stopped") else wanted_count(job)
    return f"{running}/{wanted}"


def resource_cell(total: int | None, used: int | None, unit: str) -> str:
    if total is None:
        return "-"
    if used is None:
        return f"{total} {unit}"
    return f"{used}/{total} {unit}"


def node_row(node: dict) -> list:
    """ID, Region, Endpoint, Healthy, CPU and Memory (allocated/total), Allocs."""
    live = [a for a in node.get("allocations") or [] if alloc_status(a) not in TERMINAL_ALLOC]
    res = node.get("resources") or {}
    held = node.get("allocated")
    if not isinstance(held, dict):
        # A server without the `allocated` field: add up what the allocations say.
        known = [a["resources"] for a in live if isinstance(a.get("resources"), dict)]
        held = (
            {
                "cpu": sum(r.get("cpu", 0) for r in known),
                "memory": sum(r.get("memory", 0) for r in known),
            }
            if known
            else {}
        )
    return [
        short(node.get("node_id")),
        node.get("region"),
        node.get("endpoint"),
        str(bool(node.get("healthy"))).lower(),
        resource_cell(res.get("cpu"), held.get("cpu"), "MHz"),
        resource_cell(res.get("memory"), held.get("memory"), "MB"),
        len(live),
    ]


def drain_cells(node: dict, now: float) -> list:
    """Eligibility and Drain columns: "draining: 2 left, deadline in 45s" or "-"."""
    drain = node.get("drain")
    if isinstance(drain, dict):
        left = drain.get("remaining_allocations")
        deadline = drain.get("deadline")
        until = f", deadline in {max(0, round(deadline - now))}s" if deadline else ""
        state = f"draining: {left} left{until}"
    elif node.get("drain_complete"):
        state = f"drained {ago(node.get('drain_complete'), now)}"
    else:
        state = "-"
    return [node.get("eligibility", "eligible"), state]


def event_line(event, now: float) -> list:
    if isinstance(event, dict):
        return [ago(event.get("time"), now), event.get("type") or "-", event.get("message") or ""]
    return ["-", "-", str(event)]


# ---- colour ------------------------------------------------------------------

_CODES = {"green": "32", "red": "31", "yellow": "33", "bold": "1"}
STATUS_COLOURS = {
    "running": "green",
    "complete": "green",
    "true": "green",
    "ready": "green",
    "failed": "red",
    "lost": "red",
    "dead": "red",
    "false": "red",
    "pending": "yellow",
    "blocked": "yellow",
    "stopped": "yellow",
}
STATUS_COLUMNS = frozenset({"Status", "Healthy", "Client Status"})


def is_terminal(stream, environ=None) -> bool:
    """A terminal that understands escape codes (not TERM=dumb)."""
    environ = os.environ if environ is None else environ
    if environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def colour_enabled(stream, environ=None) -> bool:
    """Colour only on a terminal, never when NO_COLOR is set (no-color.org)."""
    environ = os.environ if environ is None else environ
    return not environ.get("NO_COLOR") and is_terminal(stream, environ)


class Style:
    """ANSI colour when ``on``, the text unchanged otherwise."""

    def __init__(self, on: bool):
        self.on = on

    def __call__(self, text: str, colour: str | None) -> str:
        if not self.on or colour is None:
            return text
        return f"\x1b[{_CODES[colour]}m{text}\x1b[0m"

    def status(self, text) -> str:
        return self(str(text), STATUS_COLOURS.get(str(text)))

    def cell(self, column: str, text: str) -> str:
        """For ``table(paint=...)``: status-like columns in their colour."""
        return self.status(text) if column in STATUS_COLUMNS else text


# The default of every `paint=`/`style=` parameter: one shared colourless Style.
PLAIN = Style(False)


# ---- job run progress ----------------------------------------------------------


def group_progress(job: dict) -> dict[str, dict]:
    """Per group: count, and the placed, running, complete and failed
    allocations of the job as last submitted."""
    submitted = job.get("submit_time") or 0
    out = {
        tg.get("name"): {
            "count": int(tg.get("count", 1)),
            "placed": 0,
            "running": 0,
            "complete": 0,
            "failed": 0,
        }
        for tg in job.get("task_groups") or []
    }
    for alloc in job.get("allocations") or []:
        counts = out.get(alloc.get("task_group"))
        if counts is None:
            continue
        status, wanted = alloc_status(alloc), alloc.get("desired_status", "run") == "run"
        # Failures since this submission, replaced or not; older ones were
        # reported by the run that submitted them.
        if status == "failed" and (wanted or (alloc.get("create_time") or 0) >= submitted):
            counts["failed"] += 1
        if wanted:
            counts["placed"] += 1
            if status in ("running", "complete"):
                counts[status] += 1
    if job.get("type") in ("system", "sysbatch"):
        for counts in out.values():
            counts["count"] = counts["placed"]  # one copy per node, not a count
    return out


def progress_line(name: str, counts: dict, batch: bool, style: Style = PLAIN) -> str:
    """``web: 3 placed, 2 running, 0 failed of 3`` (batch: and ``complete``)."""
    failed = f"{counts['failed']} failed"
    parts = [
        f"{counts['placed']} placed",
        style(f"{counts['running']} running", "green" if counts["running"] else None),
    ]
    if batch:
        parts.append(
            style(f"{counts['complete']} complete", "green" if counts["complete"] else None)
        )
    parts.append(style(failed, "red" if counts["failed"] else None))
    return f"    {name}: {', '.join(parts)} of {counts['count']}"
