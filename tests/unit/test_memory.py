"""Freed heap pages go back to the OS (glibc's malloc_trim)."""
import platform

import pytest

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
    blocks = [bytearray(100_000) for _ in range(400)]     # ~40 MB, touched
    pin = bytearray(100_000)
    del blocks
    before = rss_kb()
    assert release_free_memory()
    after = rss_kb()
    assert before - after > 20_000, (before, after)
    del pin


def test_is_harmless_to_call_repeatedly():
    for _ in range(3):
        release_free_memory()
