"""orch's web UI: server-rendered pages under <prefix>/ui/ (see routes.py),
and their event and log streams (streams.py)."""

from orch.server.ui.routes import mount

__all__ = ["mount"]
