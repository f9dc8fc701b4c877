"""Memory of the analysing process (an edge: the CLI calls it once, before reading).

The analysis of a 1.3M-packet capture allocates and frees hundreds of ~10 MB arrays (one
number per packet). By default glibc gives freed blocks of that size back to the kernel
(munmap, or trimming the top of the heap), and the next array faults its pages in again:
~70k page faults a run, at 2-20 µs each on the VMs measured, so 0.15-1 s of system time,
more than any stage of the analysis. Keeping freed memory for reuse takes a quarter of
those faults away (and halves the system time of a typical run) for no more peak memory.

It also says how much memory the process may still use (available_memory_bytes), which
bounds how many spilled shards are classified at once (analyze/spill.py).
"""

from __future__ import annotations

import ctypes
import sys

# mallopt(3) parameters, malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks below this come from the heap (and are reused once freed); larger ones are
#: still mapped on their own. The largest value glibc accepts on 64-bit (32 MB): setting
#: it also stops glibc from moving the threshold itself.
MMAP_THRESHOLD_BYTES = 32 << 20
#: Free memory at the top of the heap kept rather than given back to the kernel.
TRIM_THRESHOLD_BYTES = 1 << 30
#: prctl(2) option, linux/prctl.h
PR_SET_THP_DISABLE = 41


def libc_function(name: str):
    """The C library's function ``name``; None off Linux or where it has none (a C
    library other than glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def reuse_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for the next allocations. Returns whether
    it could (False where the C library is not glibc: nothing changes there)."""
    mallopt = libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def no_huge_pages() -> bool:
    """Ask the kernel not to back this process's memory, from now on, with transparent
    huge pages (prctl PR_SET_THP_DISABLE; its forked children inherit it). Returns
    whether it could. Called where one process classifies spilled shards in turn
    (analyze/spill.py): shards too big for two at once, each ~150 bytes a packet.

    numpy advises huge pages for every array of 4 MB and more, and the first such shard
    writes hundreds of them into memory the process has not touched before. On the 2-core
    VMs measured, a fresh 2 MB page took ~2 ms to fault when the host had to back it anew
    (500 MB of arrays in 1.1 s of system time; 0.05 s when it did not), against a steady
    ~0.25 s for 500 MB of 4 KB pages. On the 13M-packet capture (four 3.25M-packet
    connections, each classified in ~500 MB): system time 1.9 s -> 1.3 s, wall 0.89x (4
    paired runs), user time unchanged, so the gathers over 28 MB columns did not slow for
    the smaller pages (on a VM, where a TLB miss costs a two-level page walk). Not for the
    whole process: on the capture of 125k connections (many small shards on forked
    workers, warm memory) huge pages everywhere were a little faster (0.97x, 4 pairs)."""
    prctl = libc_function("prctl")
    if prctl is None:
        return False
    prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    return prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0


def available_memory_bytes() -> int | None:
    """Memory this process may still use: the kernel's MemAvailable, and under a memory
    cgroup (v1 memory.limit_in_bytes, v2 memory.max, at its own level and every level
    above) what the tightest limit leaves. None where neither can be read."""
    best: int | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    best = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for left in _cgroup_room():
        best = left if best is None else min(best, left)
    return best


def _cgroup_room() -> list[int]:
    """Limit minus usage of each limited memory cgroup this process is in (and above)."""
    room: list[int] = []
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return room
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "memory":  # v1
            root, files = (
                "/sys/fs/cgroup/memory",
                ("memory.limit_in_bytes", "memory.usage_in_bytes"),
            )
        elif controllers == "":  # v2
            root, files = "/sys/fs/cgroup", ("memory.max", "memory.current")
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            where = "/".join([root, *parts[:depth]])
            try:
                with open(f"{where}/{files[0]}") as f:
                    limit = f.read().strip()
                with open(f"{where}/{files[1]}") as f:
                    used = int(f.read().strip())
            except (OSError, ValueError):
                continue
            if limit.isdigit() and int(limit) < 1 << 60:  # "max" or ~2^63: no limit
                room.append(max(0, int(limit) - used))
    return room
