"""Pure text formatting for the CLI: tables, ages, placement failures in words."""
from __future__ import annotations

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
    """Does ``given`` (a prefix, or a short id as printed) name ``ident``?"""
    return ident.startswith(given) or (bool(UUID7.fullmatch(ident)) and ident.endswith(given))


def table(headers: list[str], rows: list[list]) -> str:
    """Left-aligned columns two spaces apart, no trailing blanks."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r]
                                            for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def fields(pairs: list[tuple[str, object]]) -> str:
    """``Key = value`` lines with the ``=`` aligned, as Nomad prints summaries."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)} = {'-' if v is None or v == '' else v}"
                     for k, v in pairs)


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


def describe_failures(failures: dict) -> str:
    """``memory exhausted on 2 nodes; constraint region = eu filtered 1 node``."""
    parts = []
    for reason, count in sorted(failures.items(), key=lambda kv: (-kv[1], kv[0])):
        nodes = plural(int(count), "node")
        verb = "on" if reason.endswith("exhausted") else "filtered"
        parts.append(f"{reason} {verb} {nodes}")
    return "; ".join(parts)


def describe_placement_failure(evaluation: dict) -> list[str]:
    """Lines saying how many allocations were not placed and why."""
    groups = evaluation.get("groups") or {}
    if groups:
        wanted = sum(int(g.get("wanted", 0)) for g in groups.values())
        failed = sum(int(g.get("failed", 0)) for g in groups.values())
    else:
        failed = int(evaluation.get("queued") or 0)
        wanted = failed + int(evaluation.get("placed") or 0)
    reasons = (describe_failures(evaluation.get("failures") or {})
               or evaluation.get("status_description")
               or "no eligible node")
    lines = [f"{failed} of {wanted} not placed: {reasons}"]
    failed_groups = {n: g for n, g in groups.items() if g.get("failed")}
    if len(failed_groups) > 1:
        for name, g in sorted(failed_groups.items()):
            lines.append(f'group "{name}": {g.get("failed")} of {g.get("wanted")} not placed')
    return lines


def wanted_count(job: dict) -> int:
    return sum(int(tg.get("count", 1)) for tg in job.get("task_groups") or [])


def current_allocs(job: dict) -> list[dict]:
    """Allocations the server wants running for the job's current version."""
    version = job.get("version")
    current = []
    for alloc in job.get("allocations") or []:
        if alloc.get("desired_status", "run") != "run":
            continue
        if version is not None and alloc.get("job_version", version) != version:
            continue
        current.append(alloc)
    return current


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
    """ID, Region, Endpoint, Healthy, CPU, Memory, Allocs."""
    live = [a for a in node.get("allocations") or [] if alloc_status(a) not in TERMINAL_ALLOC]
    res = node.get("resources") or {}
    known = [a for a in live if isinstance(a.get("resources"), dict)]
    cpu_used = sum(a["resources"].get("cpu", 0) for a in known) if known else None
    mem_used = sum(a["resources"].get("memory", 0) for a in known) if known else None
    return [short(node.get("node_id")), node.get("region"), node.get("endpoint"),
            str(bool(node.get("healthy"))).lower(),
            resource_cell(res.get("cpu"), cpu_used, "MHz"),
            resource_cell(res.get("memory"), mem_used, "MiB"), len(live)]


def event_line(event, now: float) -> list:
    if isinstance(event, dict):
        return [ago(event.get("time"), now), event.get("type") or "-",
                event.get("message") or ""]
    return ["-", "-", str(event)]
