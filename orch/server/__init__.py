"""The orch control plane."""
