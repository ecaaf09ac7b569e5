"""Pure placement: reconcile a job against its allocations, then place.

``generic.compute_plan`` is the entry point; ``cluster.Cluster`` is the
capacity index it reads, kept in sync by the state store.
"""
