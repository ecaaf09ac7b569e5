"""Job bodies shared by the unit and integration tests (stdlib only)."""

from __future__ import annotations


def exec_job(
    job_id: str,
    command,
    *,
    count: int = 1,
    type_: str = "batch",
    cpu: int = 100,
    memory: int = 32,
    **group_extra,
) -> dict:
    """A job of one group ``g`` of one exec task ``t`` running ``command``."""
    return {
        "job_id": job_id,
        "type": type_,
        "task_groups": [
            {
                "name": "g",
                "count": count,
                **group_extra,
                "tasks": [
                    {
                        "name": "t",
                        "driver": "exec",
                        "config": {"command": command},
                        "resources": {"cpu": cpu, "memory": memory},
                    }
                ],
            }
        ],
    }
