"""A request body from bytes to JSON values, refusing what no field may hold.

Before any field rule runs, the whole document is held to limits that keep
the server's own data readable and its stack intact: nesting depth is
bounded (checked on the bytes, before the recursive parser can blow up),
NaN, Infinity and numbers that overflow to infinity are refused (the store
writes JSON that must read back), and so are lone UTF-16 surrogates, which
no encoder can write as UTF-8 and which would poison every read of the
object holding them.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from itertools import accumulate

from orch import fastjson
from orch.errors import ValidationError

MAX_DEPTH = 64

# Only quotes and brackets matter to nesting; escaped backslashes and quotes
# are dropped first, so that every quote left opens or closes a string.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_DELTA = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_TO_PARENS = bytes.maketrans(b"[{]}", b"(())")
# A \uD800-\uDFFF escape: only then can a parsed string hold a surrogate
# (raw bytes are decoded strictly first).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _reject_constant(name: str):
    raise ValidationError(f"body: {name} is not a valid JSON number")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValidationError(f"body: number {literal[:40]} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def too_deep(raw: bytes, max_depth: int) -> bool:
    """Does a JSON text nest arrays and objects deeper than ``max_depth``?"""
    # Nesting needs as many opening brackets: most bodies stop at this count.
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False
    # Each pass takes the innermost level off all at once (an opening
    # bracket next to a closing one): a balanced text is gone after as many
    # passes as it is deep, a handful of C-level scans instead of a Python
    # step per bracket (which cost as much as parsing the body). What is
    # left after max_depth passes is measured exactly.
    pairs = _brackets(raw).translate(_TO_PARENS)
    for _ in range(max_depth):
        peeled = pairs.replace(b"()", b"")
        if len(peeled) == len(pairs):
            break
        pairs = peeled
    if not pairs:
        return False
    return depth(raw) > max_depth


def depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text."""
    brackets = _brackets(raw)
    if not brackets:
        return 0
    return max(accumulate(map(_DELTA.__getitem__, brackets)))


def _brackets(raw: bytes) -> bytes:
    """The brackets of a JSON text outside its strings, in order."""
    structure = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    # Split on quotes: even pieces lie outside strings, odd ones inside.
    return b"".join(structure.split(b'"')[0::2])


def loads(raw: bytes, *, max_depth: int = MAX_DEPTH):
    """Parse a request body; ValidationError (400) for anything unsafe to keep."""
    if too_deep(raw, max_depth):
        return _checked(raw, max_depth)  # its refusal, worded in its order
    # orjson's answer where it gives one: it refuses all that the checked
    # parse refuses (invalid UTF-8, NaN, Infinity, numbers that overflow,
    # lone surrogates, a second byte-order mark), and that parse then words
    # the error.
    sig = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    return fastjson.loads(raw[sig:] if sig else raw, lambda _text: _checked(raw, max_depth))


def _checked(raw: bytes, max_depth: int):
    """The body parsed by the standard library, every check worded."""
    try:
        # utf-8-sig, done by hand: its codec is Python code, 8x the C one's
        # cost on a heartbeat (the error offsets are the same: after the BOM).
        sig = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
        text = raw[sig:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"body: invalid UTF-8 at byte {exc.start}") from None
    if too_deep(raw, max_depth):
        raise ValidationError(f"body: nested deeper than {max_depth} levels")
    try:
        # One decoder for all: json.loads with hooks builds one per call. A
        # second BOM goes to json.loads, which words that error.
        parse = json.loads if text.startswith("\ufeff") else _DECODER.decode
        value = parse(text)
    except RecursionError:
        # Unreachable past the depth check; kept so that no parser path can 500.
        raise ValidationError(f"body: nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise ValidationError(f"body: invalid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(raw):
        check_strings(value, "")
    return value


def _bad_string(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_strings(value, path: str) -> None:
    """Every key and string encodes as UTF-8 (no lone surrogates), else 400 naming it."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if _bad_string(item):
                raise ValidationError(f"{where or 'body'}: must be valid Unicode (lone surrogate)")
        elif isinstance(item, dict):
            for key, child in item.items():
                if _bad_string(key):
                    raise ValidationError(
                        f"{where or 'body'}: keys must be valid Unicode (lone surrogate)"
                    )
                stack.append((child, f"{where}.{key}" if where else key))
        elif isinstance(item, list):
            stack.extend((child, f"{where or 'body'}[{i}]") for i, child in enumerate(item))
