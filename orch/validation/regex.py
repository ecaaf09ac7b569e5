"""Regex constraints on RE2: linear time in the text, whatever the pattern.

Python's ``re`` backtracks: ``(.*)`` repeated 15 times against one kernel
version holds the GIL for seconds, and the whole server (heartbeats
included) stalls with it. RE2 (google-re2) refuses the features that need
backtracking (backreferences, lookaround) at submission, and matches in
time linear in the attribute's length.
"""

from __future__ import annotations

import functools

import re2

from orch.validation.fields import fail

PATTERN_MAX = 1000
error = re2.error
# RE2 compiles into a bounded automaton; a pattern needing more is refused.
_MAX_MEM = 8 << 20


def _options() -> re2.Options:
    options = re2.Options()
    options.max_mem = _MAX_MEM
    # RE2 would also print every refused pattern to stderr: the 400 says it.
    options.log_errors = False
    return options


@functools.lru_cache(maxsize=1024)
def compiled(pattern: str):
    """The compiled pattern, once per distinct text; re2.error if unsupported."""
    return re2.compile(pattern, options=_options())


def pattern(value: str, path: str) -> str:
    """A regex constraint's value: bounded length and RE2 syntax, else 400."""
    if len(value) > PATTERN_MAX:
        fail(path, f"regex must be at most {PATTERN_MAX} characters")
    try:
        compiled(value)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        fail(path, f"invalid regex: {detail}")
    return value


def search(pattern_text: str, text: str) -> bool:
    """Does the (already validated) pattern match anywhere in the text?"""
    return compiled(pattern_text).search(text) is not None
