"""Run records: one file per start (run) of a task, JSON lines appended in order.

The supervisor claims the run with a first line (`supervisor_pid`), created
exclusively before the task starts, then appends the task's `pid` (or why it
could not start), then how it ended (`exit_code`, `signal`, `oom_killed`).
An agent killed between asking for a start and saving the handle finds the
run there, and a start asked twice (by that agent, then by its successor)
runs once. Appending costs a write; creating and renaming files, on a busy
disk, costs a hundred times more. Stdlib only (the supervisor imports it), but
for orjson where it can be imported (``orch.fastjson``, as in ``protocol.py``).
"""

from __future__ import annotations

import os
import time

from orch import fastjson


def claim(path: str, supervisor_pid: int | None = None) -> int | None:
    """Create the run's record exclusively, with its first line: its fd if
    this start is the one (the caller appends the start's line through it
    with `append_fd`, then closes it), None if the run was claimed before.

    The fd saves the start a second open of the record (a path walk down
    the task dir): one of the supervisor's ~10 opens a start."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        return None
    pid = os.getpid() if supervisor_pid is None else supervisor_pid
    try:
        write_all(fd, b'{"supervisor_pid": %d}\n' % pid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def start_line(pid: int, memory_mb: object) -> bytes:
    """The started run's line (its pid): formatted, not json.dumps (~1 us
    against ~7, on every start), unless memory_mb is not a plain int."""
    if type(memory_mb) is int:
        return b'{"pid": %d, "memory_mb": %d}\n' % (pid, memory_mb)
    return line_of({"pid": pid, "memory_mb": memory_mb})


def line_of(doc: dict) -> bytes:
    """A record's line: the JSON object and its newline."""
    return fastjson.dumps(doc, escape=True) + b"\n"


def append_fd(fd: int, doc: dict | bytes) -> bool:
    """One line (a dict, or one `line_of`), in one write, through a claimed
    record's fd: False if the record was deleted meanwhile (its task dir
    removed: nobody will read it)."""
    write_all(fd, doc if isinstance(doc, bytes) else line_of(doc))
    return os.fstat(fd).st_nlink > 0


def append(path: str, doc: dict | bytes) -> None:
    """One line (a dict, or one `line_of`), in one write, at the end of a run's record."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        write_all(fd, doc if isinstance(doc, bytes) else line_of(doc))
    finally:
        os.close(fd)


def exit_doc(status: int | None, oom: bool) -> dict:
    """How the task ended, as its record's last line."""
    doc: dict[str, object]
    if status is None:
        doc = {"exit_code": None, "signal": None, "exit_error": "task exit status lost"}
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        doc = {"exit_code": 128 + sig, "signal": sig}
    else:
        doc = {"exit_code": os.WEXITSTATUS(status), "signal": None}
    doc["oom_killed"] = oom
    doc["finished_at"] = time.time()
    return doc


def read_record(path: str) -> dict | None:
    """A run's record: its JSON lines merged in order, None if it has none.

    A line not yet whole is not read.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    doc: dict = {}
    for line in data.split(b"\n"):
        try:
            part = fastjson.loads(line)
        except ValueError:
            continue  # empty, or being written
        if isinstance(part, dict):
            doc.update(part)
    return doc or None


def run_ended(record: dict | None) -> bool:
    """Does the record say how the task ended?"""
    return record is not None and "exit_code" in record


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to `fd` (os.write may take only part of it)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
