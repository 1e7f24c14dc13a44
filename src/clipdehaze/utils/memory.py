"""Peak memory of a piece of work, measured: CUDA allocator statistics, or the process's resident set on CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import resource
import sys
from pathlib import Path
from typing import Callable

import torch

__all__ = ["available_memory_bytes", "peak_memory_bytes", "release_freed_memory"]


def _proc_status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Give the memory the C allocator holds but no longer uses back to the OS (glibc's ``malloc_trim``; a no-op
    elsewhere). glibc serves allocations of up to 32 MB from its heap once such a block was freed, and a heap
    fragmented by a previous tile can grow by another tile's worth instead of reusing it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def reset_peak_rss() -> int | None:
    """Reset this process's RSS high-water mark; return the baseline to subtract, or ``None`` where the OS offers
    no reset (then no peak of a part of the run can be measured).

    Linux: writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS. glibc keeps freed memory in its
    heap, where the next allocations would reuse it without growing the RSS, so it is given back first
    (``malloc_trim``) and growth counts everything the work allocates. getrusage's ru_maxrss is never reset and
    carries the *parent's* peak over fork + exec, so it cannot serve.
    """
    release_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _proc_status_bytes("VmRSS")


def peak_rss() -> int:
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def peak_memory_bytes(work: Callable[[], object], device: torch.device) -> int | None:
    """Bytes ``work()`` needed at its peak beyond what was allocated before it, on ``device``; ``None`` where this
    cannot be measured (CPU without /proc/self/clear_refs)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        work()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if device.type != "cpu":
        return None
    base = reset_peak_rss()
    if base is None:
        return None
    work()
    return max(0, peak_rss() - base)


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory free for new work on ``device`` now: the GPU's free memory, or the system's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
