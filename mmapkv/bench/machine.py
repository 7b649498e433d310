"""What the system says about this process (faults, resident pages) and about the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["SOURCE_ROOT", "machine_info", "scheduling_stalls"]

# The directory that holds the mmapkv package: a checkout's top, or site-packages.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _faults() -> tuple[int, int]:
    """(minor, major) page faults of this process so far; zeros where unknown."""
    try:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_minflt, usage.ru_majflt
    except (ImportError, OSError):  # pragma: no cover - not Unix
        return 0, 0


def _page_cache_drops() -> int | None:
    """How often anyone wrote to /proc/sys/vm/drop_caches since boot (Linux), or None."""
    try:
        with open("/proc/vmstat") as f:
            lines = f.readlines()  # read whole, looped over outside the `with` (tests/test_backward_jumps.py)
    except OSError:
        return None
    return next((int(line.split()[1]) for line in lines if line.startswith("drop_pagecache ")), None)


def _anon_kib() -> int | None:
    """Anonymous resident memory of this process in KiB (Linux), or None."""
    for path, field in (("/proc/self/smaps_rollup", "Anonymous:"), ("/proc/self/status", "RssAnon:")):
        try:
            with open(path) as f:
                lines = f.readlines()  # looped over outside the `with`, as in _page_cache_drops
        except OSError:
            continue
        found = next((int(line.split()[1]) for line in lines if line.startswith(field)), None)
        if found is not None:
            return found
    return None


def _mapping_rss_kib(path: str) -> int | None:
    """Resident KiB of this process's mappings of *path* (from /proc/self/smaps)."""
    real = os.path.realpath(path)
    total, inside, found = 0, False, False
    try:
        with open("/proc/self/smaps") as f:
            lines = f.readlines()  # looped over outside the `with`, as in _page_cache_drops
    except OSError:
        return None
    for line in lines:
        first = line.split(None, 5)
        if len(first) >= 5 and "-" in first[0] and not first[0].endswith(":"):
            inside = len(first) == 6 and first[5].strip() == real
            found = found or inside
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total if found else None


def _mincore_pages(path: str) -> int | None:
    """Pages of *path* in the page cache (mincore on a fresh read-only map of it)."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long)
        libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
        size = os.path.getsize(path)
        page = os.sysconf("SC_PAGE_SIZE")
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if addr in (None, ctypes.c_void_p(-1).value):
                return None
            try:
                vec = ctypes.create_string_buffer((size + page - 1) // page)
                if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                    return None
                return sum(b & 1 for b in vec.raw)
            finally:
                libc.munmap(ctypes.c_void_p(addr), size)
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        return None


STALL_NS = 10_000  # a gap in a loop that only reads the clock: the machine took the CPU away


def scheduling_stalls(seconds: float = 0.25,
                      clock: Callable[[], int] = time.perf_counter_ns) -> dict[str, Any]:
    """How often this process loses the CPU for ``STALL_NS`` or more while it runs: a loop
    that only reads the clock, for *seconds*.  Timer ticks, other processes and a
    hypervisor's steal all show up as gaps.  A call of ``d`` microseconds meets one with a
    probability of about ``d * per_second / 1e6``, so a p99 of calls longer than
    ``p99_clear_below_us`` is set by the machine, not by the code measured.

    >>> s = scheduling_stalls(0.01)
    >>> s["per_second"] >= 0 and s["p99_clear_below_us"] > 0
    True
    """
    gaps: list[int] = []
    start = last = clock()
    end = start + int(seconds * 1e9)
    while last < end:
        now = clock()
        if now - last >= STALL_NS:
            gaps.append(now - last)
        last = now
    elapsed = (last - start) / 1e9
    gaps.sort()
    per_second = len(gaps) / elapsed
    return {"seconds": round(elapsed, 3), "threshold_us": STALL_NS / 1e3, "stalls": len(gaps),
            "per_second": round(per_second, 1),
            "median_us": round(gaps[len(gaps) // 2] / 1e3, 1) if gaps else 0.0,
            "max_us": round(gaps[-1] / 1e3, 1) if gaps else 0.0,
            "cpu_lost": round(sum(gaps) / 1e9 / elapsed, 4),
            # the call length at which 1 % of calls meet a stall
            "p99_clear_below_us": round(1e4 / per_second, 1) if gaps else float(seconds * 1e6)}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"uname": " ".join(platform.uname()), "python": sys.version.split()[0],
                            "implementation": platform.python_implementation(),
                            "cpus": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        lscpu = ""
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "CPU(s)", "Hypervisor vendor", "L2 cache", "L3 cache"):
            info[key.strip()] = value.strip()
    try:
        with open("/proc/meminfo") as f:
            info["memory"] = f.readline().split(":")[1].strip()
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    versions = {}
    for module in ("orjson", "xxhash", "lmdb", "diskcache", "sqlitedict", "matplotlib"):
        try:
            versions[module] = getattr(__import__(module), "__version__", "?")
        except ImportError:
            pass
    from .. import __version__

    versions["mmapkv"] = __version__
    info["versions"] = versions
    try:  # which code was measured, when run from a checkout
        git = ["git", "-C", SOURCE_ROOT]
        info["commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                                        timeout=10, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "mmapkv"], capture_output=True,
                               text=True, timeout=10, check=True).stdout
        info["mmapkv_changed_since_commit"] = sorted(line[3:] for line in dirty.splitlines())
    except (OSError, subprocess.SubprocessError):
        pass
    return info
