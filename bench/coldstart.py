"""`orch dev` cold start: wall and CPU to N healthy nodes, builds alternated.

Each ``--pyz`` is launched in turn (A, B, A, B, ...) ``--rounds`` times, as
``python3 orch.pyz dev --agents N`` in its own session with a fresh data dir;
a first launch of each build (not counted) unpacks it. Per launch:

- ``wall_s``: from Popen until the launcher prints "N nodes healthy in";
- ``reported_s``: that line's own figure (the launcher's clock);
- ``cpu_s``: user + system CPU seconds of the launcher and every process
  under it, read the moment the line appears (nothing has been reaped yet);
  ``cpu_by_role``: the same for the launcher, the server and each agent;
- ``rss_mb`` and ``pss_mb`` by role, read ``--idle`` seconds later (PSS
  splits pages shared with the launcher's fork between the processes).

Medians per build, the host calibration (benchutil) and the load average
before and after are printed; the last line is JSON with ``--json``.

    python bench/coldstart.py --pyz /tmp/orch-base.pyz --pyz dist/orch.pyz --rounds 5
    python bench/coldstart.py --pyz dist/orch.pyz --smoke --json   # one launch (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from benchutil import free_port, host, log, mb  # bench/ is on sys.path

TIMEOUT = 60.0  # a cluster not healthy by then fails the run


def role_of(proc: psutil.Process, launcher: int) -> str:
    """launcher, server, agent (by the command line, as `ps` shows it) or other."""
    if proc.pid == launcher:
        return "launcher"
    try:
        argv = proc.cmdline()
    except psutil.Error:
        return "other"
    if len(argv) == 1:  # a title set in place: one string, words split by spaces
        argv = argv[0].split(" ")
    for role in ("server", "agent"):
        if role in argv[1:4]:
            return role
    return "other"


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_by_role(pid: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for proc in tree(pid):
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        out.setdefault(role_of(proc, pid), []).append(round(t.user + t.system, 3))
    return out


def memory_by_role(pid: int) -> dict[str, dict[str, list[float]]]:
    rss: dict[str, list[float]] = {}
    pss: dict[str, list[float]] = {}
    for proc in tree(pid):
        try:
            full = proc.memory_full_info()
        except psutil.Error:
            continue
        role = role_of(proc, pid)
        rss.setdefault(role, []).append(mb(full.rss))
        pss.setdefault(role, []).append(mb(full.pss))
    return {"rss_mb": rss, "pss_mb": pss}


def launch(pyz: Path, workdir: Path, agents: int, idle: float) -> dict:
    """One cold start of `pyz`; the cluster is stopped before returning."""
    data_dir = Path(tempfile.mkdtemp(prefix="dev-", dir=workdir))
    argv = [sys.executable, str(pyz), "dev", "--agents", str(agents), "--port", str(free_port())]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*argv, "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
        text=True,
    )
    try:
        return measure(proc, started, idle)
    finally:
        stop(proc)
        shutil.rmtree(data_dir, ignore_errors=True)


def measure(proc: subprocess.Popen, started: float, idle: float) -> dict:
    deadline = started + TIMEOUT
    assert proc.stdout is not None
    for line in proc.stdout:  # the launcher flushes each line
        if "nodes healthy in" in line:
            wall = time.perf_counter() - started
            cpu = cpu_by_role(proc.pid)
            reported = float(line.rsplit(" in ", 1)[1].rstrip("s\n"))
            break
        if time.perf_counter() > deadline:
            raise RuntimeError("cluster not healthy in time")
    else:
        raise RuntimeError(f"orch dev exited ({proc.wait()}) before it was healthy")
    time.sleep(idle)
    return {
        "wall_s": round(wall, 3),
        "reported_s": reported,
        "cpu_s": round(sum(sum(v) for v in cpu.values()), 3),
        "cpu_by_role": cpu,
        **memory_by_role(proc.pid),
    }


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the launcher (it stops its children), then SIGKILL what is left."""
    try:
        pids = [p.pid for p in tree(proc.pid)]
    except psutil.Error:
        pids = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    for pid in pids:  # each child runs in a session (a group) of its own
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if proc.poll() is None:
        proc.wait(timeout=10)


def summary(runs: list[dict]) -> dict:
    def med(key):
        return round(statistics.median(r[key] for r in runs), 3)

    roles = {role for r in runs for role in r["cpu_by_role"]}
    out = {"wall_s": med("wall_s"), "reported_s": med("reported_s"), "cpu_s": med("cpu_s")}
    for role in sorted(roles):
        values = [v for r in runs for v in r["cpu_by_role"].get(role, [])]
        out[f"cpu_{role}_s"] = round(statistics.median(values), 3)
        for kind in ("rss_mb", "pss_mb"):
            sizes = [v for r in runs for v in r[kind].get(role, [])]
            if sizes:
                out[f"{kind[:3]}_{role}_mb"] = round(statistics.median(sizes), 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pyz", type=Path, action="append", required=True, help="a build (repeat)")
    p.add_argument("--rounds", type=int, default=5, help="launches per build")
    p.add_argument("--agents", type=int, default=3)
    p.add_argument("--idle", type=float, default=2.0, help="seconds from healthy to memory")
    p.add_argument("--json", action="store_true")
    p.add_argument("--smoke", action="store_true", help="one round, 0.5 s idle")
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.idle = 1, 0.5
    info = host()
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-cold-"))
    runs: dict[str, list[dict]] = {str(pyz): [] for pyz in args.pyz}
    try:
        for pyz in args.pyz:
            launch(pyz, workdir, args.agents, 0.0)  # unpacks the build: not counted
        for n in range(args.rounds):
            for pyz in args.pyz:
                run = launch(pyz, workdir, args.agents, args.idle)
                runs[str(pyz)].append(run)
                log(
                    f"round {n + 1} {pyz.name}: wall {run['wall_s']} s, reported "
                    f"{run['reported_s']} s, CPU {run['cpu_s']} s {run['cpu_by_role']}"
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        **info,
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "builds": {name: summary(r) for name, r in runs.items()},
        "runs": runs,
    }
    for name, figures in result["builds"].items():
        log(f"{name}: " + " ".join(f"{k}={v}" for k, v in figures.items()))
    if args.json:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
