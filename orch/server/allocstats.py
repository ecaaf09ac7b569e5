"""An allocation's measured resource use, asked of its agent when wanted.

As Nomad relays GET /v1/client/allocation/<id>/stats: the agent measures
on demand; nothing of it rides in heartbeats or lands in the state store.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import quote

from orch import transport
from orch.errors import BadGateway, NotFound
from orch.transport import HttpClient, Response

if TYPE_CHECKING:
    from orch.server.server import Server
    from orch.structs import Allocation

log = logging.getLogger(__name__)

# (connect, read) seconds: the agent samples CPU for ~0.1 s, so 5 s is slack.
RELAY_TIMEOUT = (2.0, 5.0)
# The UI's page must not wait long on a slow agent: past this, "unavailable".
# Not 1 s: the docker engine answers a stats call after ~1 s (its next sample).
PAGE_TIMEOUT = (0.5, 2.0)


def fetch(server: Server, alloc: Allocation, timeout=RELAY_TIMEOUT) -> Response:
    """The agent's answer to GET /allocations/<id>/stats (BadGateway: unreachable)."""
    endpoint = server.endpoint_of(alloc.node_id)
    if endpoint is None:
        raise NotFound("the allocation's node is unknown")
    # One client per call: rare enough that a kept connection would sit idle.
    client = HttpClient(timeout=timeout, token=server.config.token, keep_alive=False)
    try:
        return client.get(f"{endpoint}/allocations/{quote(alloc.allocation_id)}/stats")
    except (*transport.ERRORS, ValueError) as exc:
        raise BadGateway(f"node unreachable: {exc}") from exc
    finally:
        client.close()


def for_page(server: Server, alloc: Allocation) -> dict | None:
    """Per task {"memory_rss_mb", "cpu_percent", "pids"}; None when unavailable."""
    if alloc.terminal():
        return None  # nothing runs: no agent to bother
    try:
        resp = fetch(server, alloc, PAGE_TIMEOUT)
        if resp.status_code != 200:
            return None
        tasks = resp.json().get("tasks")
    except (NotFound, BadGateway, ValueError, AttributeError) as exc:
        log.debug("stats of alloc %s unavailable: %s", alloc.allocation_id, exc)
        return None
    return tasks if isinstance(tasks, dict) else None
