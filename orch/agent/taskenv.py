"""What a task gets from its job beyond the driver's basics: meta and payload.

Kept in one place, apart from the runner, so that exec and docker tasks see
the same ``ORCH_META_<KEY>`` variables and the same payload file.
"""

from __future__ import annotations

import logging
import os
import re

from orch.errors import DriverError

log = logging.getLogger(__name__)

_NOT_ENV = re.compile(r"[^A-Za-z0-9_]")


def meta_env(meta: dict) -> dict[str, str]:
    """``ORCH_META_<key>`` for each meta key, as given and upper-cased (as Nomad).

    '.' and '-' (allowed in meta keys) become '_' in the variable name."""
    env = {}
    for key, value in meta.items():
        name = _NOT_ENV.sub("_", key)
        env[f"ORCH_META_{name}"] = str(value)
        env[f"ORCH_META_{name.upper()}"] = str(value)
    return env


def write_payload(task_dir: str, relative: str | None, payload: bytes) -> None:
    """Write a dispatched job's payload to the task's dispatch_payload file.

    DriverError when it cannot be written: the task fails to start, as with
    any other start failure."""
    if relative is None or not payload:
        return
    path = os.path.normpath(os.path.join(task_dir, relative))
    # The name was checked (relative, no '..'); checked again here because
    # the agent may be called without the server.
    if not path.startswith(os.path.normpath(task_dir) + os.sep):
        raise DriverError(f"dispatch_payload.file {relative!r} leaves the task dir")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as out:
            out.write(payload)
        os.replace(tmp, path)
    except OSError as exc:
        raise DriverError(f"cannot write dispatch_payload.file {relative!r}: {exc}") from exc
    log.debug("payload written path=%s bytes=%d", path, len(payload))
