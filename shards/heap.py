"""Keeping large image buffers in the process heap (glibc), shared by ingest workers and the
stream's DataLoader workers.

Every image allocates arrays of megabytes. glibc serves those with mmap and returns them with
munmap, so each new array costs one page fault per 4 KB page plus zeroing: measured here, a third
of ingest's time and 16-18 faults per streamed sample went to the kernel. Raising the mmap and
trim thresholds to glibc's 32 MB cap keeps freed buffers for reuse. No-op without glibc.
"""

from __future__ import annotations

import ctypes
import functools

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
GLIBC_MAX_MMAP_THRESHOLD = 32 << 20


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library (glibc), loaded once; None where there is none."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


def keep_buffers_in_heap() -> None:
    """Call once in a worker process that handles many images."""
    c = libc()
    if c is not None:
        c.mallopt(_M_MMAP_THRESHOLD, GLIBC_MAX_MMAP_THRESHOLD)
        c.mallopt(_M_TRIM_THRESHOLD, 8 * GLIBC_MAX_MMAP_THRESHOLD)


def return_buffers_to_os(threshold: int = 64 << 10) -> None:
    """The opposite of keep_buffers_in_heap, for measuring memory: every allocation over
    `threshold` gets its own mapping, unmapped on free (a fixed threshold also stops glibc raising
    it as it sees large frees), so the resident set follows the live buffers, not the heap's reserve."""
    c = libc()
    if c is not None:
        c.mallopt(_M_MMAP_THRESHOLD, threshold)
        c.mallopt(_M_TRIM_THRESHOLD, threshold)


def release_free_heap() -> None:
    """Hand free heap pages back before forking, or every child copies them on first write."""
    c = libc()
    if c is not None and hasattr(c, "malloc_trim"):
        c.malloc_trim(0)
