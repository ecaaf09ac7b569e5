"""orch: a small Nomad-like cluster orchestrator."""

__version__ = "0.1.0"
