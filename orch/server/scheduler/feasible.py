"""Feasibility: can a node run a task group at all (capacity aside)?

Checks run cheapest first and stop at the first rejection, whose reason is a
named string counted per evaluation: ``"missing drivers"`` or
``"constraint <attribute> <operator> <value>"``. Nodes of one computed class
answer every check the same way, so checks run once per class, except for
constraints on attributes unique to a node (``node_id``, ``hostname``),
which run per node as Nomad's "escaped" constraints do.
"""
from __future__ import annotations

import operator
import re
from collections import Counter
from typing import Any, Iterable

from orch.structs import Constraint, Job, Node, TaskGroup

MISSING_DRIVERS = "missing drivers"
# Attributes that differ between nodes of one class: checked per node.
UNIQUE_ATTRIBUTES = frozenset({"node_id", "hostname", "attr.hostname"})
DRIVER_ATTRIBUTES = ("driver.exec", "driver.docker")

_COMPARE = {"=": operator.eq, "!=": operator.ne, ">": operator.gt,
            "<": operator.lt, ">=": operator.ge, "<=": operator.le}
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
        return re.search(wanted, _text(actual)) is not None
    compare = _COMPARE.get(op)
    if compare is None:
        return False
    if isinstance(actual, bool) and op in ("=", "!=") and (
            wanted.lower() in _TRUE or wanted.lower() in _FALSE):
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
        exec_fallback = (task.driver == "docker" and "command" in task.config
                         and has_driver(node, "exec"))
        if not exec_fallback:
            return False
    return True


def is_unique(constraint: Constraint) -> bool:
    return constraint.attribute in UNIQUE_ATTRIBUTES or \
        constraint.attribute.startswith("unique.")


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


def feasible_nodes(cluster, job: Job, group: TaskGroup) -> tuple[list[str], Counter]:
    """Healthy node ids that can run the group, and why the others cannot."""
    # One check per class: the node lists of feasible classes are concatenated,
    # a rejected class counts its reason once per node it holds.
    candidates: list[str] = []
    failures: Counter = Counter()
    per_node = any(is_unique(c) for c in (*job.constraints, *group.constraints))
    for node_ids in cluster.classes().values():
        sample = _first_known(cluster, node_ids)
        reason = None if sample is None else class_feasible(sample, job, group)
        if reason is not None:
            failures[reason] += len(node_ids)
        elif per_node:
            _filter_nodes(cluster, node_ids, job, group, candidates, failures)
        else:
            candidates.extend(node_ids)
    return candidates, failures


def _first_known(cluster, node_ids: list[str]) -> Node | None:
    # A node may be removed between classes() and node(); any member will do.
    for node_id in node_ids:
        node = cluster.node(node_id)
        if node is not None:
            return node
    return None


def _filter_nodes(cluster, node_ids, job, group, candidates, failures) -> None:
    for node_id in node_ids:
        node = cluster.node(node_id)
        if node is None:
            continue
        reason = node_feasible(node, job, group)
        if reason is None:
            candidates.append(node_id)
        else:
            failures[reason] += 1
