"""Give freed heap memory back to the operating system.

CPython frees objects into the C allocator, and glibc keeps freed heap pages
mapped: a burst of work (a start-up that retried for a while, a thousand
allocations) leaves a long-lived process larger than its live objects for
ever. `malloc_trim(0)` returns those pages; it costs well under a
millisecond and is safe to call at any time. Elsewhere (musl, macOS) it is
a no-op.
"""

from __future__ import annotations

import ctypes
from typing import Any

# None: not looked up yet; False: the C library has no malloc_trim.
_trim: Any = None


def _load() -> Any:
    global _trim
    if _trim is None:
        try:
            # The process's own symbols, libc's among them: no library search
            # (ctypes.util.find_library would run ldconfig in a subprocess).
            _trim = ctypes.CDLL(None).malloc_trim
            _trim.argtypes, _trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            _trim = False
    return _trim


def release_free_memory() -> bool:
    """Return free heap pages to the OS; True if the C library could."""
    trim = _load()
    if not trim:
        return False
    return bool(trim(0))
