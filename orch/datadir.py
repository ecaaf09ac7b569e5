"""One orch process per data dir: an exclusive lock held for the process's life.

Two servers on one SQLite file (or two agents on one allocation dir) would
each believe its memory is the truth and overwrite the other's writes. At
start the process takes ``fcntl.flock`` on ``<data_dir>/orch.lock`` and keeps
the descriptor open until it exits: the kernel releases the lock when the
process dies however it dies (``kill -9`` included), so nothing stale is ever
left to clean up. The holder writes its PID into the file, so the one refused
can name it.
"""

from __future__ import annotations

import fcntl
import logging
import os

from orch.errors import DataDirError, DataDirInUse

log = logging.getLogger(__name__)

LOCK_FILE = "orch.lock"


def lock_data_dir(data_dir: str, role: str) -> int:
    """Lock ``data_dir`` for this process; its descriptor, open until exit.

    DataDirInUse when another live process holds it; DataDirError when it
    cannot be made or opened. The descriptor is not
    inherited by children (tasks): only this process's death frees it."""
    path = os.path.join(os.path.abspath(data_dir), LOCK_FILE)
    try:
        os.makedirs(data_dir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileExistsError:  # makedirs(exist_ok=True): something else is there
        raise DataDirError(f"data dir {data_dir}: not a directory") from None
    except OSError as exc:  # no permission, a read-only file system...
        raise DataDirError(f"data dir {data_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise DataDirInUse(
            f"data dir {os.path.dirname(path)} is in use by another orch process "
            f"(pid {holder}, lock {path}): one {role} per data dir; stop it or "
            f"pick another --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    log.debug("data dir %s locked by pid %d", data_dir, os.getpid())
    return fd


def _holder(fd: int) -> str:
    """The PID the holder wrote (unknown for the instant before it writes)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"
