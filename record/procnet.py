"""The kernel's TCP counters (/proc/net/netstat, /proc/net/snmp) and host identity.

Both files are per network namespace: read from inside the namespace being recorded.
Their deltas over a run (RetransSegs, TCPLossProbes, TCPFastRetrans, TCPTimeouts,
TCPSlowStartRetrans, TCPSynRetrans) are the kernel's own totals to set events against.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from pathlib import Path


def read_counters(paths=(Path("/proc/net/snmp"), Path("/proc/net/netstat"))) -> dict[str, int]:
    """All counters as "Prefix:Name" (Tcp:RetransSegs, TcpExt:TCPLossProbes, ...)."""
    out: dict[str, int] = {}
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for head, vals in zip(lines[::2], lines[1::2]):
            prefix, names = head.split(":", 1)
            _, values = vals.split(":", 1)
            for name, value in zip(names.split(), values.split()):
                try:
                    out[f"{prefix}:{name}"] = int(value)
                except ValueError:
                    pass
    return out


RETRANS_COUNTERS = (
    "Tcp:RetransSegs",
    "TcpExt:TCPLossProbes",
    "TcpExt:TCPLossProbeRecovery",
    "TcpExt:TCPFastRetrans",
    "TcpExt:TCPSlowStartRetrans",
    "TcpExt:TCPTimeouts",
    "TcpExt:TCPSynRetrans",
    "TcpExt:TCPRetransFail",
    "TcpExt:TCPSpuriousRTOs",
    "TcpExt:TCPDSACKRecv",
    "TcpExt:TCPLostRetransmit",
)


def counter_delta(start: dict[str, int], end: dict[str, int]) -> dict[str, int]:
    return {k: end[k] - start.get(k, 0) for k in RETRANS_COUNTERS if k in end}


def clock_offset_ns(samples: int = 7) -> tuple[int, int, int]:
    """(monotonic ns, realtime - monotonic ns, uncertainty ns), from the tightest bracket."""
    best = None
    for _ in range(samples):
        t1 = time.monotonic_ns()
        r = time.time_ns()
        t2 = time.monotonic_ns()
        width = t2 - t1
        if best is None or width < best[2]:
            mid = (t1 + t2) // 2
            best = (mid, r - mid, width)
    assert best is not None
    return best


PROC_NET_INIT_INO = 0xEFFFFFF9


def host_identity() -> dict[str, object]:
    def read(p: str) -> str | None:
        try:
            return Path(p).read_text().strip()
        except OSError:
            return None

    netns = init_netns = None
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
        init_netns = os.stat("/proc/1/ns/net").st_ino
    except OSError:
        # PID 1 may be hidden (containers, sandboxes); recent kernels give the initial
        # namespace a fixed inode: PROC_NET_INIT_INO, include/linux/proc_ns.h.
        init_netns = PROC_NET_INIT_INO
    return {
        "host": socket.gethostname(),
        "kernel_release": platform.release(),
        "boot_id": read("/proc/sys/kernel/random/boot_id"),
        "netns_ino": netns,
        "in_init_netns": netns == init_netns if netns is not None else None,
        "tcp_early_retrans": read("/proc/sys/net/ipv4/tcp_early_retrans"),
        "tcp_sack": read("/proc/sys/net/ipv4/tcp_sack"),
        "tcp_recovery": read("/proc/sys/net/ipv4/tcp_recovery"),
    }
