"""orch.fastjson: orjson's speed, the standard library's answers."""

import dataclasses
import datetime
import json
import random
import struct

import pytest

from orch import fastjson
from orch.errors import ValidationError
from orch.validation import document

STDLIB_UTF8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@pytest.fixture(params=["orjson", "stdlib only"])
def codec(request, monkeypatch):
    """Every test runs with orjson and as a checkout without it would."""
    if request.param == "orjson":
        assert fastjson.orjson is not None, "orjson is a dependency: installed with the rest"
    else:
        monkeypatch.setattr(fastjson, "orjson", None)
    return fastjson


def _string(rng: random.Random) -> str:
    alphabet = 'abc XYZ 0123456789 "\\/\b\f\n\r\t\x00\x1f\x7f é中文 🚀 \u2028'
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def _value(rng: random.Random, depth: int):
    kind = rng.randint(0, 8 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-(2**63), 2**64 - 1) if rng.random() < 0.2 else rng.randint(-999, 10**6)
    if kind == 3:
        return rng.choice([0.0, -0.0, 0.5, 1796251479.35, 1e300, 123.456, rng.random() * 1000])
    if kind in (4, 5):
        return _string(rng)
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_string(rng): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _documents(count: int):
    rng = random.Random(17)
    return [_value(rng, 0) for _ in range(count)]


def _same(a, b) -> bool:
    """Equal, and ints are ints and floats floats all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return a == b


def test_written_as_json_writes_it(codec):
    for doc in _documents(3000):
        written = codec.dumps(doc)
        assert _same(json.loads(written), doc)
        # Byte for byte, but where a float may be in the other exponent
        # style (1e+300 / 1e300: the same number).
        assert written.decode() == STDLIB_UTF8(doc) or _has_float(doc)


def _has_float(doc) -> bool:
    if isinstance(doc, float):
        return True
    if isinstance(doc, dict):
        return any(map(_has_float, doc.values()))
    if isinstance(doc, list):
        return any(map(_has_float, doc))
    return False


def test_read_as_json_reads_it(codec):
    for doc in _documents(3000):
        for text in (
            STDLIB_UTF8(doc).encode(),
            json.dumps(doc).encode(),
            json.dumps(doc, indent=1),
        ):
            assert _same(codec.loads(text), json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        b"9223372036854775807",
        b"-9223372036854775808",
        b"-9223372036854775809",  # orjson alone would read these as floats
        b"18446744073709551616",
        b'{"n":123456789012345678901234567890}',
        b'["a123456789012345678901234567890",1]',  # a long digit run in a string
        b"NaN",
        b"[Infinity,-Infinity]",
        b"1e999",
        b'"\xed\xa0\x80"',  # an encoded surrogate: json reads it (surrogatepass)
        b'"\\ud800"',
        b'{"a":1,"a":2}',
        "é中文 as str".join('""'),
    ],
)
def test_texts_orjson_declines_or_misreads_are_read_as_json_reads_them(codec, text):
    expected = json.loads(text)
    got = codec.loads(text)
    assert type(got) is type(expected)
    assert repr(got) == repr(expected)  # NaN == NaN by repr


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b" ",
        b"01",
        b"1.",
        b"[1,]",
        b"{'a':1}",
        b'"a\x01b"',
        b"tru",
        b'{"a":1}x',
        b"\xff",
        b"[" * 5,
    ],
)
def test_what_json_refuses_is_refused(codec, text):
    _both_raise(ValueError, lambda: json.loads(text), lambda: codec.loads(text))


def _both_raise(error: type[Exception], reference, ours) -> None:
    with pytest.raises(error):
        reference()
    with pytest.raises(error):
        ours()


def test_the_fallback_parses_every_declined_text_and_nothing_else(codec):
    seen = []

    def fallback(raw):
        seen.append(raw)
        return json.loads(raw)

    assert codec.loads(b'{"a":[1,2.5,"x"]}', fallback) == {"a": [1, 2.5, "x"]}
    assert seen == ([] if codec.orjson else [b'{"a":[1,2.5,"x"]}'])
    assert codec.loads(b"[NaN]", fallback)[0] != 0
    assert seen[-1] == b"[NaN]"


@dataclasses.dataclass
class _Record:
    name: str


@pytest.mark.parametrize(
    "value",
    [
        {1: "one", 2.5: "two and a half", None: "none", False: "no"},  # keys json turns to text
        {"big": 10**30, "small": -(10**30)},
        [{"中": "文"}, {1: "é"}],
    ],
)
def test_documents_orjson_declines_are_written_by_json(codec, value):
    assert codec.dumps(value) == STDLIB_UTF8(value).encode()
    assert codec.dumps(value, escape=True) == json.dumps(value, separators=(",", ":")).encode()


@pytest.mark.parametrize("value", [_Record("x"), {"at": datetime.datetime(2026, 12, 3)}, {1, 2}])
def test_what_json_cannot_write_raises_as_json_raises(codec, value):
    _both_raise(TypeError, lambda: json.dumps(value), lambda: codec.dumps(value))


def test_a_lone_surrogate_is_escaped_on_request_and_refused_otherwise(codec):
    # os.environ holds undecodable bytes as lone surrogates: a task's start
    # line must carry them (escaped), as json.dumps did.
    line = codec.dumps({"env": {"X": "a\udcffb"}}, escape=True)
    assert line == b'{"env":{"X":"a\\udcffb"}}'
    assert json.loads(line) == {"env": {"X": "a\udcffb"}}
    with pytest.raises(UnicodeEncodeError):
        codec.dumps({"x": "\ud800"})


def test_nan_is_written_as_null_where_orjson_writes(codec):
    written = json.loads(codec.dumps({"x": float("nan")}))["x"]
    assert written is None if codec.orjson else written != written


def test_request_bodies_keep_their_answers(codec):
    assert document.loads(b'{"n":123456789012345678901234567890}') == {
        "n": 123456789012345678901234567890
    }
    assert document.loads('\ufeff{"a":"中"}'.encode()) == {"a": "中"}
    for body, message in [
        (b'{"x":NaN}', "body: NaN is not a valid JSON number"),
        (b'{"x":1e999}', "body: number 1e999 is out of range"),
        (b'{"x":"\\ud800"}', "x: must be valid Unicode"),
        (b'{"x":', "body: invalid JSON: "),
    ]:
        with pytest.raises(ValidationError) as info:
            document.loads(body)
        assert str(info.value).startswith(message)


def test_a_float_is_written_as_repr_writes_it(codec):
    rng = random.Random(23)
    edges = [0.0, -0.0, 1e-4, -1e-4, 9.99e-5, 1e-5, 5e-324, 1e16, 1e22, 1.7976931348623157e308]
    edges += [float("nan"), float("inf"), float("-inf"), 1764790000.125437, 0.1, 2.0**53]
    bits = [
        struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(50_000)
    ]
    for value in edges + bits + [rng.uniform(-1e10, 1e10) for _ in range(20_000)]:
        assert codec.float_text(value) == repr(value)


def test_strict_ascii_takes_orjson_only_where_its_text_is_the_strict_encoders(codec):
    strict = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    taken = 0
    for doc in _documents(3000):
        text = codec.strict_ascii(doc)
        if text is None:
            continue
        taken += 1
        assert text.isascii() and "null" not in text
        assert _same(json.loads(text), doc)
        # Byte for byte, but for DEL (json escapes it, orjson does not) and
        # floats in the other exponent style.
        assert text == strict(doc).replace("\\u007f", "\x7f") or _has_float(doc)
    assert taken > 300 if codec.orjson else taken == 0
    for declined in ({"x": float("nan")}, [float("inf")], {"x": None}, {"中": 1}, {1: "a"}):
        assert codec.strict_ascii(declined) is None
    assert codec.strict_ascii({"x": [1.5, "a", True], "y": {"z": 7}}) == (
        None if codec.orjson is None else '{"x":[1.5,"a",true],"y":{"z":7}}'
    )


def test_sorted_ascii_is_jsons_sorted_text_byte_for_byte_or_declines(codec):
    # Spec hashes are taken of this text: a byte off would read as a changed
    # job after an upgrade, and replace its allocations.
    rng = random.Random(29)
    docs = _documents(3000) + [
        {"b": 1, "a": {"z": [1.5, 0.25], "y": 1e-05}},
        {"small": 9.99e-5, "tiny": 1.5e-7, "zero": 0.0, "big": 1e300},
        {"del": "\x7f", "ctl": "\x1f\n", "quote": '"\\'},
        {"nan": float("nan")},
        {"said": "null and e- and 0.0000 in a string"},
        {"中": "文"},
        {"tasks": [{"config": {"command": "true"}, "name": "t"}], "constraints": []},
    ]
    docs += [{_string(rng): rng.random() / 10 ** rng.randint(0, 9)} for _ in range(2000)]
    taken = 0
    for doc in docs:
        text = codec.sorted_ascii(doc)
        if text is None:
            continue
        taken += 1
        assert text == json.dumps(doc, sort_keys=True, separators=(",", ":"))
    assert taken > 1000 if codec.orjson else taken == 0
    assert codec.sorted_ascii({"b": 1, "a": 2}) == (
        None if codec.orjson is None else '{"a":2,"b":1}'
    )
