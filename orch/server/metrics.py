"""Prometheus text exposition of the server's counters and gauges."""

from __future__ import annotations

from collections import Counter


def _line(name: str, value, labels: dict | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


def render_metrics(server) -> str:
    store = server.store
    nodes = store.list_nodes()
    allocs: Counter[str] = Counter()
    for job in store.list_jobs():
        for alloc in store.allocs_for_job(job.job_id):
            allocs[alloc.client_status.value] += 1
    lines = [
        "# TYPE orch_nodes gauge",
        _line("orch_nodes", sum(n.healthy for n in nodes), {"healthy": "true"}),
        _line("orch_nodes", sum(not n.healthy for n in nodes), {"healthy": "false"}),
        "# TYPE orch_jobs gauge",
        _line("orch_jobs", len(store.list_jobs())),
        "# TYPE orch_allocations gauge",
    ]
    lines += [_line("orch_allocations", n, {"client_status": s}) for s, n in sorted(allocs.items())]
    lines.append("# TYPE orch_broker_evaluations gauge")
    lines += [
        _line("orch_broker_evaluations", n, {"state": s})
        for s, n in sorted(server.broker.stats().items())
    ]
    lines.append("# TYPE orch_push_total counter")
    lines += [
        _line("orch_push_total", n, {"result": s}) for s, n in sorted(server.pusher.stats.items())
    ]
    lines.append("# TYPE orch_hurry_total counter")
    lines += [
        _line("orch_hurry_total", n, {"result": s}) for s, n in sorted(server.hurrier.stats.items())
    ]
    lines.append("# TYPE orch_push_suspect_nodes gauge")
    lines.append(_line("orch_push_suspect_nodes", server.pusher.suspects()))
    # Several servers: alert when no server, or more than one, reports 1.
    lines.append("# TYPE orch_leader gauge")
    lines.append(_line("orch_leader", int(server.leadership.is_leader())))
    lines.append("# TYPE orch_leader_term gauge")
    lines.append(_line("orch_leader_term", server.leadership.leader().term))
    return "\n".join(lines) + "\n"
