"""Host ports as a scheduled resource (Nomad's NetworkIndex, reduced to ports).

A node's ports in use live on its ``Room`` (orch.server.scheduler.cluster),
reserved and released with each allocation. A placement needs every static
port of its group free on the node and one free port of the node's range
per dynamic port. The placement paths (the stack, the system scheduler) and
the plan commit all ask the same two questions here: is there a conflict,
and which host ports does the placement get.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable

from orch.structs import Allocation, TaskGroup

PORTS_EXHAUSTED = "dynamic ports exhausted"


def port_taken(port: int) -> str:
    """The failure reason for a static port in use (counted like other reasons)."""
    return f"port {port} taken"


def in_use(used: dict[int, int], port: int, freed: Collection[int], local: Collection[int]) -> bool:
    """Is a host port held on the node, given what the plan frees and takes there?"""
    return (port in used and port not in freed) or port in local


def conflict(
    group: TaskGroup,
    used: dict[int, int],
    port_range: tuple[int, int],
    freed: Collection[int] = (),
    local: Collection[int] = (),
) -> str | None:
    """Why the group's ports do not fit on the node, or None when they do."""
    dynamic = 0
    for port in group.ports:
        if port.static is None:
            dynamic += 1
        elif in_use(used, port.static, freed, local):
            return port_taken(port.static)
    if dynamic:
        low, high = port_range
        busy = sum(1 for p in used if low <= p <= high and p not in freed)
        busy += sum(1 for p in local if low <= p <= high)
        if high - low + 1 - busy < dynamic + _statics_in(group, low, high):
            return PORTS_EXHAUSTED
    return None


def _statics_in(group: TaskGroup, low: int, high: int) -> int:
    # A static port inside the range takes a slot the dynamic ones cannot use.
    return sum(1 for p in group.ports if p.static is not None and low <= p.static <= high)


def assign(
    group: TaskGroup,
    used: dict[int, int],
    port_range: tuple[int, int],
    rng,
    freed: Collection[int] = (),
    local: Collection[int] = (),
) -> list[dict]:
    """The host ports of one placement: statics as asked, dynamics free in the range.

    Dynamic ports are the lowest free ones from a random start in the range,
    wrapping around, so copies on one node spread over the range instead of
    fighting over its first ports. Call only after conflict() said None.
    """
    taken = {p.static for p in group.ports if p.static is not None}
    low, high = port_range
    size = high - low + 1
    candidate = low + int(rng.random() * size)
    out = []
    for port in group.ports:
        value = port.static
        if value is None:
            for _ in range(size):
                if candidate not in taken and not in_use(used, candidate, freed, local):
                    break
                candidate = candidate + 1 if candidate < high else low
            value = candidate
        taken.add(value)
        out.append({"label": port.label, "value": value, "to": port.to})
    return out


def values(allocs: Iterable[Allocation]) -> set[int]:
    """Every host port held by the allocations."""
    return {p["value"] for alloc in allocs for p in alloc.ports}


class PlanPorts:
    """The host ports one plan frees (its stops) and takes (its placements), per node.

    Read over a node's index record (``room.ports``, ``room.port_range``):
    the shared helper of every path that places or commits allocations.
    """

    def __init__(self, stopping: Iterable[Allocation] = ()):
        """``stopping``: the plan's stops that still hold their ports."""
        self._freed: dict[str, set[int]] = defaultdict(set)
        self._taken: dict[str, set[int]] = defaultdict(set)
        for alloc in stopping:
            if alloc.ports:
                self._freed[alloc.node_id].update(values([alloc]))

    def conflict(self, group: TaskGroup, room) -> str | None:
        """Why the group's ports do not fit on the node now, or None."""
        node_id = room.node_id
        return conflict(
            group, room.ports, room.port_range, self._freed[node_id], self._taken[node_id]
        )

    def take(self, group: TaskGroup, room, rng) -> list[dict]:
        """Pick a placement's host ports (after conflict() said None) and hold them."""
        node_id = room.node_id
        chosen = assign(
            group, room.ports, room.port_range, rng, self._freed[node_id], self._taken[node_id]
        )
        self._taken[node_id].update(p["value"] for p in chosen)
        return chosen

    def clash(self, alloc: Allocation, room) -> bool:
        """Is a port of a planned allocation in use now (the commit's re-check)?"""
        freed, taken = self._freed[alloc.node_id], self._taken[alloc.node_id]
        return any(in_use(room.ports, p["value"], freed, taken) for p in alloc.ports)

    def hold(self, alloc: Allocation) -> None:
        """Count a committed allocation's ports as taken by the plan."""
        self._taken[alloc.node_id].update(p["value"] for p in alloc.ports)
