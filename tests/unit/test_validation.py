"""The one validation layer: document limits, shared field rules, bodies, regex."""

import json
import math
import random

import pytest

from orch.agent.spec import parse_alloc
from orch.errors import ValidationError
from orch.jobspec import parse_job
from orch.server.views import node_from_register
from orch.structs import Resources
from orch.validation import bodies, document, fields, regex


def message(fn, *args):
    with pytest.raises(ValidationError) as info:
        fn(*args)
    return info.value.message


# ---- document: bytes to JSON values ----------------------------------------


@pytest.mark.parametrize(
    "raw", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1e400}', b"[-1e999]"]
)
def test_non_finite_numbers_are_refused(raw):
    assert message(document.loads, raw).startswith("body: ")


def test_deep_nesting_is_refused_before_the_parser_recurses():
    raw = b"[" * 10000 + b"]" * 10000
    assert message(document.loads, raw) == "body: nested deeper than 64 levels"
    raw = b'{"a":' * 10000 + b"1" + b"}" * 10000
    assert "nested deeper" in message(document.loads, raw)
    assert document.loads(b"[" * 64 + b"]" * 64) is not None


def test_brackets_inside_strings_are_not_nesting():
    assert document.depth(b'{"a": "[[[[{{{{", "b": ["]]\\"]]"]}') == 2
    text = json.dumps({"x": "[" * 200, "y": ['\\"' + "{" * 200]}).encode()
    assert document.loads(text)["x"] == "[" * 200


def _tree_depth(value) -> int:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return 1 + max(map(_tree_depth, value), default=0)
    return 0


def _random_json(rng: random.Random, level: int = 0):
    """Nested lists and objects whose strings are full of brackets, quotes and escapes."""
    roll = rng.random()
    if level > 8 or roll < 0.3:
        return "".join(rng.choice('[]{}"\\a\n') for _ in range(rng.randint(0, 6)))
    if roll < 0.65:
        return [_random_json(rng, level + 1) for _ in range(rng.randint(0, 3))]
    return {_random_json(rng, 9): _random_json(rng, level + 1) for _ in range(rng.randint(0, 3))}


def test_depth_on_bytes_equals_the_parsed_depth():
    rng = random.Random(7)
    for _ in range(1000):
        value = _random_json(rng)
        for ascii_only in (True, False):
            raw = json.dumps(value, ensure_ascii=ascii_only).encode()
            assert document.depth(raw) == _tree_depth(value), raw


def test_too_deep_agrees_with_the_exact_depth_at_every_bound():
    rng = random.Random(11)
    for _ in range(500):
        raw = json.dumps(_random_json(rng)).encode()
        exact = document.depth(raw)
        for bound in range(max(0, exact - 2), exact + 2):
            assert document.too_deep(raw, bound) == (exact > bound), (raw, bound)
    # Unbalanced texts (the parser refuses them later) are measured as before.
    for raw in (b"[" * 70, b"]]]" + b"[" * 70, b"[" * 40 + b"]" * 45 + b"[" * 40, b"{" * 65 + b"]"):
        assert document.too_deep(raw, 64) == (document.depth(raw) > 64), raw


def test_too_deep_measures_a_balanced_body_without_a_step_per_bracket(monkeypatch):
    # Many brackets, shallow: the peeling decides, the per-bracket walk never runs.
    raw = json.dumps({"allocations": [{"tasks": [{"env": {}, "meta": {}}]}] * 200}).encode()
    monkeypatch.setattr(document, "depth", lambda raw: 10**6)
    assert not document.too_deep(raw, 64)
    assert document.too_deep(b"[" * 65 + b"]" * 65, 64)  # deeper: measured exactly


def test_lone_surrogates_are_refused_naming_the_field():
    raw = b'{"task_groups": [{"tasks": [{"config": {"env": {"X": "\\ud800"}}}]}]}'
    assert (
        message(document.loads, raw)
        == "task_groups[0].tasks[0].config.env.X: must be valid Unicode (lone surrogate)"
    )
    assert message(document.loads, b'{"\\udfff": 1}').startswith("body: keys")
    assert message(document.loads, b'["\\uDC00"]').startswith("body[0]: ")


def test_surrogate_pairs_and_raw_utf8_pass_and_raw_surrogates_do_not():
    assert document.loads(b'{"e": "\\ud83d\\ude00"}') == {"e": "\U0001f600"}
    assert document.loads('{"e": "é"}'.encode()) == {"e": "é"}
    assert "invalid UTF-8" in message(document.loads, b'"\xed\xa0\x80"')


# ---- fields: one rule per field, wherever it appears ------------------------


def test_names_are_63_characters_in_job_and_agent_bodies_alike():
    long = "a" * 64
    job = {"task_groups": [{"name": "g", "tasks": [{"name": long, "config": {"command": "true"}}]}]}
    alloc = {
        "allocation_id": "a1",
        "job_id": "j1",
        "task_group": {"name": "g", "tasks": [{"name": long, "config": {"command": "true"}}]},
    }
    job_msg = message(parse_job, job, "j1")
    alloc_msg = message(parse_alloc, alloc)
    assert job_msg.split(": ", 1)[1] == alloc_msg.split(": ", 1)[1]
    assert "1-63 characters" in job_msg


def test_ids_are_128_characters():
    assert fields.ident("a" * 128, "job_id") == "a" * 128
    assert message(fields.ident, "a" * 129, "job_id").startswith("job_id: must be 1-128")
    assert message(parse_alloc, {"allocation_id": "a" * 129}).startswith("allocation_id")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10**400, True, "1"])
def test_finite_refuses_what_is_not_a_real_number(value):
    assert message(fields.finite, value, "x.y").startswith("x.y: must be a")


def test_integers_are_bounded():
    assert fields.non_negative_int(2**53, "n") == 2**53
    assert message(fields.non_negative_int, 2**53 + 1, "n") == f"n: must be at most {2**53}"
    assert message(fields.non_negative_int, 1.0, "n") == "n: must be a non-negative integer"


def test_strings_are_bounded_and_nul_free():
    assert message(fields.text, "x" * (fields.STRING_MAX + 1), "s").startswith("s: must be at most")
    assert message(fields.text, "a\0b", "s") == "s: must not contain NUL characters"


def test_resources_share_one_rule():
    assert bodies.resources(None, "r", Resources(1, 2)) == Resources(1, 2)
    assert (
        message(bodies.resources, {"cpu": -1}, "r", Resources(1, 2))
        == "r.cpu: must be a non-negative integer"
    )
    assert (
        message(bodies.resources, None, "resources")
        == "resources: must be an object with cpu and memory"
    )


def test_job_env_refuses_non_finite_and_constraint_values_too():
    job = {
        "task_groups": [
            {
                "name": "g",
                "tasks": [{"name": "t", "config": {"command": "true", "env": {"X": float("nan")}}}],
            }
        ]
    }
    assert message(parse_job, job, "j").startswith("task_groups[0].tasks[0].config.env.X:")
    job = {
        "constraints": [{"attribute": "a", "operator": "=", "value": float("inf")}],
        "task_groups": [{"name": "g", "tasks": [{"name": "t", "config": {"command": "x"}}]}],
    }
    assert message(parse_job, job, "j").startswith("constraints[0].value:")


# ---- register and heartbeat bodies ----------------------------------------

REGISTER = {
    "node_id": "n1",
    "resources": {"cpu": 1000, "memory": 1024},
    "endpoint": "http://127.0.0.1:1",
}


def test_register_uses_the_shared_rules():
    assert node_from_register(REGISTER).node_id == "n1"
    assert message(node_from_register, {**REGISTER, "node_id": "n" * 129}).startswith("node_id: ")
    assert (
        message(node_from_register, {**REGISTER, "attributes": {"x": float("nan")}})
        == "attributes.x: must be a finite number"
    )
    assert message(
        node_from_register, {**REGISTER, "resources": {"cpu": 1, "memory": 2**60}}
    ).startswith("resources.memory: must be at most")


@pytest.mark.parametrize(
    "value",
    ["\u00b2-5", "1-\u00b2", "\u0663-\u0665", "1-" + "9" * 5000, "01-"],
    ids=["superscript-low", "superscript-high", "arabic-indic", "5000-digits", "no-high"],
)
def test_a_port_range_is_ascii_digits_only(value):
    """str.isdigit takes "²" (int() then raised: a 500), Arabic-Indic digits
    (stored as 3-5) and 5,000 digits (past int()'s limit: a 500)."""
    assert message(bodies.port_range, value).startswith('port_range: must be "LOW-HIGH"')
    assert bodies.port_range("20000-32000") == (20000, 32000)


def test_a_query_offset_is_bounded_ascii_digits():
    assert fields.query_offset(None) == fields.query_offset("") == 0
    assert fields.query_offset("0042") == 42
    for bad in ("-1", "1_0", " 7", "\u00b2", "x"):
        assert message(fields.query_offset, bad) == "offset: must be a non-negative integer"
    for huge in ("9" * 4301, str(2**63)):
        assert message(fields.query_offset, huge).startswith("offset: must be at most")


def test_heartbeat_reports_are_checked_field_by_field():
    beat = bodies.heartbeat(
        {
            "node_id": "n1",
            "allocations": {
                "a1": {
                    "status": "running",
                    "start_time": 1.0,
                    "tasks": {"t": {"restarts": 2, "exit_code": None}},
                }
            },
        }
    )
    assert beat.node_id == "n1" and beat.usage == {} and beat.healthy
    bad = {"node_id": "n1", "allocations": {"a1": {"end_time": float("nan")}}}
    assert message(bodies.heartbeat, bad) == "allocations.a1.end_time: must be a finite number"
    bad = {"node_id": "n1", "allocations": {"a1": {"tasks": {"t": {"restarts": 1.5}}}}}
    assert (
        message(bodies.heartbeat, bad)
        == "allocations.a1.tasks.t.restarts: must be a non-negative integer"
    )
    assert (
        message(bodies.heartbeat, {"node_id": "n1", "resources": {"cpu": float("inf")}})
        == "resources.cpu: must be a finite number"
    )
    assert message(bodies.heartbeat, {"node_id": ""}) == "node_id: must be a non-empty string"


def test_a_check_output_with_nul_is_kept_without_it_not_refused():
    """The whole beat was refused (400) for one NUL a check read: the node
    went down at its TTL and every allocation on it was lost."""
    check = {"status": "failing", "output": "HTTP 200: a\0b", "time": 1.0}
    body = {"node_id": "n1", "allocations": {"a1": {"status": "running", "checks": {"s/c": check}}}}
    beat = bodies.heartbeat(body)
    assert beat.allocations["a1"]["checks"]["s/c"]["output"] == "HTTP 200: a\ufffdb"


# ---- regex constraints ------------------------------------------------------


def test_catastrophic_patterns_match_in_linear_time():
    import time

    pattern = "(.*)" * 15 + "x"
    assert regex.pattern(pattern, "v") == pattern
    start = time.monotonic()
    assert not regex.search(pattern, "5.15.0-91-generic" * 4)
    # Backtracking would take years on this input; the bound only has to
    # tell linear from exponential, so it is loose enough for a loaded host.
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    "pattern, detail",
    [
        (r"(a)\1", "invalid regex"),
        ("(?=a)", "invalid regex"),
        ("[", "invalid regex"),
        ("a" * 1001, "at most 1000 characters"),
    ],
)
def test_unsupported_or_long_patterns_are_refused_naming_the_field(pattern, detail):
    job = {
        "constraints": [{"attribute": "kernel.version", "operator": "regex", "value": pattern}],
        "task_groups": [{"name": "g", "tasks": [{"name": "t", "config": {"command": "x"}}]}],
    }
    msg = message(parse_job, job, "j")
    assert msg.startswith("constraints[0].value: ") and detail in msg


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        8000,
        2**53,
        2**1023 - 1,
        -(2**1023) + 1,
        2**1023,
        2**1024 - 1,
        2**1024,
        10**400,
        True,
        False,
        1.5,
        float("inf"),
        float("nan"),
        -0.0,
        "1",
        None,
    ],
)
def test_plain_finite_says_yes_only_where_finite_accepts(value):
    """The fast check in front of ``finite``: never True for a value finite
    refuses, and True for the integers a heartbeat's resources carry."""
    try:
        accepted = math.isfinite(fields.finite(value, "x"))
    except ValidationError:
        accepted = False
    if fields.plain_finite(value):
        assert accepted, value
    if type(value) is int and abs(value) < 2**1023:
        assert fields.plain_finite(value), value


def test_heartbeat_resources_integers_and_overflow():
    base = {"node_id": "n", "healthy": True}
    assert bodies.heartbeat({**base, "resources": {"cpu": 8000, "cpu_used": 0}}).usage == {
        "cpu": 8000,
        "cpu_used": 0,
    }
    with pytest.raises(ValidationError, match="resources.cpu"):
        bodies.heartbeat({**base, "resources": {"cpu": 10**400}})
    with pytest.raises(ValidationError, match="resources.memory"):
        bodies.heartbeat({**base, "resources": {"memory": True}})
