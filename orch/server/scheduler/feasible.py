"""Feasibility: can a node run a task group at all (capacity aside)?

Checks run cheapest first and stop at the first rejection, whose reason is a
named string counted per evaluation: ``"missing drivers"`` or
``"constraint <attribute> <operator> <value>"``. Nodes of one computed class
answer every check the same way, so checks run once per class (and the
verdict is remembered by the cluster for later evaluations asking the same),
except for constraints on attributes unique to a node (``node_id``,
``hostname``), which run per node as Nomad's "escaped" constraints do.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from orch.structs import Constraint, Job, Node, TaskGroup
from orch.validation import regex

MISSING_DRIVERS = "missing drivers"
# Attributes that differ between nodes of one class: checked per node.
UNIQUE_ATTRIBUTES = frozenset({"node_id", "hostname", "attr.hostname"})
DRIVER_ATTRIBUTES = ("driver.exec", "driver.docker")

_COMPARE = {
    "=": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def check_constraint(node: Node, constraint: Constraint) -> bool:
    """Does the node satisfy one constraint? Numbers compare as numbers."""
    actual = node.attribute(constraint.attribute)
    op, wanted = constraint.operator, constraint.value
    if actual is None:
        return op == "!="
    if op == "regex":
        # RE2, compiled once per pattern: linear time, never a stalled server.
        try:
            return regex.search(wanted, _text(actual))
        except regex.error:
            return False  # stored before patterns were checked with RE2
    compare = _COMPARE.get(op)
    if compare is None:
        return False
    if (
        isinstance(actual, bool)
        and op in ("=", "!=")
        and (wanted.lower() in _TRUE or wanted.lower() in _FALSE)
    ):
        return compare(actual, wanted.lower() in _TRUE)
    left, right = _text(actual), wanted
    left_num, right_num = _number(left), _number(right)
    if left_num is not None and right_num is not None:
        return compare(left_num, right_num)
    return compare(left, right)


def has_driver(node: Node, driver: str) -> bool:
    """Is the node fingerprinted with this driver ("driver.exec": True / "1")?"""
    value = node.attributes.get(f"driver.{driver}")
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value)


def _fingerprinted(node: Node) -> bool:
    return any(name in node.attributes for name in DRIVER_ATTRIBUTES)


def drivers_feasible(node: Node, group: TaskGroup) -> bool:
    """Can every task of the group run on the node (docker may fall back to exec)?"""
    # A node registered with the seed's body reports no drivers at all;
    # it predates fingerprinting and is taken to run anything.
    if not _fingerprinted(node):
        return True
    for task in group.tasks:
        if has_driver(node, task.driver):
            continue
        exec_fallback = (
            task.driver == "docker" and "command" in task.config and has_driver(node, "exec")
        )
        if not exec_fallback:
            return False
    return True


def is_unique(constraint: Constraint) -> bool:
    return constraint.attribute in UNIQUE_ATTRIBUTES or constraint.attribute.startswith("unique.")


def _first_failed(node: Node, constraints: Iterable[Constraint]) -> str | None:
    for constraint in constraints:
        if not check_constraint(node, constraint):
            return f"constraint {constraint}"
    return None


def class_feasible(node: Node, job: Job, group: TaskGroup) -> str | None:
    """None if the node's class can run the group, else the rejection reason."""
    if not drivers_feasible(node, group):
        return MISSING_DRIVERS
    shared = (c for c in (*job.constraints, *group.constraints) if not is_unique(c))
    return _first_failed(node, shared)


def node_feasible(node: Node, job: Job, group: TaskGroup) -> str | None:
    """The per-node part of the checks: constraints on unique attributes."""
    unique = (c for c in (*job.constraints, *group.constraints) if is_unique(c))
    return _first_failed(node, unique)


def feasible_parts(
    cluster, job: Job, group: TaskGroup
) -> tuple[list[tuple[str, Sequence[str]]], Counter]:
    """feasible_rooms with node ids: (class, ids) pairs, and the rejections."""
    parts, failures = feasible_rooms(cluster, job, group)
    return [(node_class, NodeIds(rooms)) for node_class, rooms in parts], failures


class NodeIds(Sequence):
    """The node ids of a sequence of records, read through (no copy)."""

    __slots__ = ("_rooms",)

    def __init__(self, rooms: Sequence):
        self._rooms = rooms

    def __len__(self) -> int:
        return len(self._rooms)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [room.node_id for room in self._rooms[index]]
        return self._rooms[index].node_id

    def __iter__(self) -> Iterator[str]:
        return (room.node_id for room in self._rooms)


# Distinct asks remembered per cluster before the memo starts over (a bound).
MAX_ASKS = 10_000


def _asks(job: Job, group: TaskGroup) -> tuple:
    """Everything class_feasible reads from the job and group, as plain tuples."""
    drivers = tuple((t.driver, "command" in t.config) for t in group.tasks)
    shared = tuple(
        (c.attribute, c.operator, c.value)
        for c in (*job.constraints, *group.constraints)
        if not is_unique(c)
    )
    return drivers, shared


def feasible_rooms(cluster, job: Job, group: TaskGroup) -> tuple[list[tuple], Counter]:
    """Feasible nodes as (class, node records) pairs, and the rejections.

    One check per class: a rejected class counts its reason once per node it
    holds. The records are the cluster's shared per-class tuples of ``Room``
    (cluster.members()), never copied. The cluster remembers, per kind of
    ask, each class's verdict (a class is a hash of everything the checks
    read, so a verdict never expires) and the whole answer for its current
    membership, so that an evaluation costs O(1) here while no node joins or
    leaves, O(classes) after, and never O(nodes) unless a constraint on a
    unique attribute (node_id, hostname) makes the check per node. Callers
    must not mutate what they get.
    """
    members = cluster.members()
    if any(is_unique(c) for c in (*job.constraints, *group.constraints)):
        return _per_node(cluster, members, job, group)
    memo = cluster.verdicts
    if len(memo) > MAX_ASKS:
        memo.clear()
    asks = _asks(job, group)
    # (members it answered for, parts, failures, class -> verdict), replaced
    # whole so that a concurrent reader never sees half of an update.
    known = memo.get(asks)
    if known is not None and known[0] is members:
        return known[1], known[2]
    verdicts = {} if known is None else known[3]
    parts: list[tuple] = []
    failures: Counter = Counter()
    for node_class, rooms in members.items():
        reason = verdicts.get(node_class, _UNKNOWN)
        if reason is _UNKNOWN:
            sample = _first_known(cluster, rooms)
            reason = None if sample is None else class_feasible(sample, job, group)
            if sample is not None:
                verdicts[node_class] = reason
        if reason is None:
            parts.append((node_class, rooms))
        else:
            failures[reason] += len(rooms)
    memo[asks] = (members, parts, failures, verdicts)
    return parts, failures


_UNKNOWN = object()


def _per_node(cluster, members, job: Job, group: TaskGroup):
    parts: list[tuple] = []
    failures: Counter = Counter()
    for node_class, rooms in members.items():
        sample = _first_known(cluster, rooms)
        reason = None if sample is None else class_feasible(sample, job, group)
        if reason is not None:
            failures[reason] += len(rooms)
            continue
        kept: list = []
        for room in rooms:
            node = cluster.node(room.node_id)
            if node is None:
                continue
            reason = node_feasible(node, job, group)
            if reason is None:
                kept.append(room)
            else:
                failures[reason] += 1
        parts.append((node_class, kept))
    return parts, failures


def _first_known(cluster, rooms: Sequence) -> Node | None:
    # A node may be removed between members() and node(); any member will do.
    for room in rooms:
        node = cluster.node(room.node_id)
        if node is not None:
            return node
    return None
