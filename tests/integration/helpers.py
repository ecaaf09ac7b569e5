"""The names older tests import from here; everything lives in harness.py now.

``Proc`` keeps this module's old signature, ``Proc(pyz, args, log_dir, name)``,
with stdout and stderr in ``<name>.stdout`` and ``<name>.stderr``.
"""

from __future__ import annotations

from pathlib import Path

import harness
from harness import (  # noqa: F401
    MAKE_PYZ,
    PYZ,
    ROOT,
    STOP_GRACE,
    GiveUp,
    clean_env,
    ensure_pyz,
    free_port,
    http_get,
    nodes,
    sources_mtime,
    wait_until,
)


class Proc(harness.Proc):
    """harness.Proc started the way helpers.Proc used to be."""

    def __init__(
        self,
        pyz: Path,
        args: list[str],
        log_dir: Path,
        name: str,
        env: dict | None = None,
        cwd: Path | None = None,
    ):
        super().__init__(
            args,
            log_dir / f"{name}.stdout",
            env,
            stderr_path=log_dir / f"{name}.stderr",
            cwd=cwd,
            pyz=pyz,
            name=name,
        )
