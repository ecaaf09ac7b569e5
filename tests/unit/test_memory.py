"""Freed heap pages go back to the OS (glibc's malloc_trim)."""

import platform

import pytest

from orch import memory
from orch.memory import release_free_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_freed_heap_pages_are_returned():
    # Blocks under glibc's mmap threshold live on the heap; one kept block
    # above them pins the heap's top, so only a trim can give them back.
    blocks = [bytearray(100_000) for _ in range(400)]  # ~40 MB, touched
    pin = bytearray(100_000)
    del blocks
    before = rss_kb()
    assert release_free_memory()
    after = rss_kb()
    assert before - after > 20_000, (before, after)
    del pin


def test_repeated_calls_answer_a_bool_and_leave_the_heap_usable():
    answers = [release_free_memory() for _ in range(3)]
    assert all(isinstance(answer, bool) for answer in answers), answers
    if not GLIBC:
        assert answers == [False, False, False]
    blocks = [bytes([i % 256]) * 10_000 for i in range(1000)]
    assert all(block[-1] == i % 256 for i, block in enumerate(blocks))


def test_without_malloc_trim_it_answers_false_and_looks_once(monkeypatch):
    """musl, macOS: the symbol is missing; every call says so, none raises."""
    looked_up = []

    def no_trim(name):
        looked_up.append(name)
        return object()  # a library without malloc_trim

    monkeypatch.setattr(memory, "_trim", None)
    monkeypatch.setattr(memory.ctypes, "CDLL", no_trim)
    assert [release_free_memory() for _ in range(3)] == [False, False, False]
    assert looked_up == [None]  # the process's own symbols, once
