"""What an exec task's files cost on a given filesystem.

Repeats, in a fresh directory under each DIR, the file operations the agent
and its task supervisor perform for one exec task: the allocation's and the
task's directories, alloc.json written twice (temporary file, rename), the
run record (created, then appended to twice), stdout and stderr, then the
removal of the allocation's directory (garbage collection). Prints the CPU
time per task of each part. Use it to see whether a data
dir's disk, rather than orch, bounds the batch figure of `bench/e2e.py`.

    python bench/fsops.py /tmp /var/tmp /dev/shm [--tasks 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

from benchutil import host  # bench/ is on sys.path


def one_task(root: str, i: int) -> None:
    alloc = os.path.join(root, f"alloc-{i}")
    task = os.path.join(alloc, "t")
    os.makedirs(task)
    for _ in range(2):
        tmp = os.path.join(alloc, "alloc.json.tmp")
        with open(tmp, "w") as f:
            f.write("x" * 600)
        os.replace(tmp, os.path.join(alloc, "alloc.json"))
    record = os.path.join(task, ".orch-run-0.json")
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
    os.close(fd)
    for line in (b'{"pid": 1}\n', b'{"exit_code": 0}\n'):
        fd = os.open(record, os.O_WRONLY | os.O_APPEND)
        os.write(fd, line)
        os.close(fd)
    for name in ("stdout.log", "stderr.log"):
        os.close(os.open(os.path.join(task, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))


def measure(base: str, tasks: int) -> tuple[float, float]:
    """CPU milliseconds per task in a fresh directory under `base`: making its
    files, then removing its allocation's directory as the agent's garbage
    collection does."""
    root = tempfile.mkdtemp(prefix="orch-fsops-", dir=base)
    try:
        started = time.process_time()
        for i in range(tasks):
            one_task(root, i)
        made = time.process_time()
        for i in range(tasks):
            shutil.rmtree(os.path.join(root, f"alloc-{i}"))
        removed = time.process_time()
        return (made - started) * 1000 / tasks, (removed - made) * 1000 / tasks
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    machine = host()
    figures = {d: measure(d, args.tasks) for d in args.dirs}
    result = {d: round(made, 3) for d, (made, _) in figures.items()}
    removal = {d: round(removed, 3) for d, (_, removed) in figures.items()}
    for d in args.dirs:
        print(f"{d:20s} {result[d]:.3f} ms of CPU per task, {removal[d]:.3f} ms to remove it")
    if args.json:
        summary = {"cpu_ms_per_task": result, "remove_ms_per_task": removal}
        print(json.dumps({**summary, "calibration": machine["calibration"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
