"""What the recorder prints: tcpretrans-style lines (live, and -c's per-flow table)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from retranscope.record.decode import format_addrs


def live_header(sequence: bool) -> str:
    hdr = f"{'TIME':<12} {'PID':<7} IP {'LADDR:LPORT':<24} T> {'RADDR:RPORT':<24} {'STATE':<12}"
    return hdr + (f" {'SEQ':<10}" if sequence else "") + " REASON"


def live_lines(table: pa.Table, sequence: bool) -> list[str]:
    """tcpretrans-style lines: TIME PID IP LADDR:LPORT T> RADDR:RPORT STATE [SEQ] REASON."""
    d = table.to_pydict()
    out = []
    for i in range(table.num_rows):
        ts = time.strftime("%H:%M:%S", time.localtime(d["ts_wall_ns"][i] / 1e9))
        ms = (d["ts_wall_ns"][i] // 1_000_000) % 1000
        typ = "L>" if d["event_type"][i] == "tlp_attempt" else "R>"
        fam = d["family"][i]
        la = (
            f"{d['saddr'][i]}:{d['sport'][i]}" if fam == 4 else f"[{d['saddr'][i]}]:{d['sport'][i]}"
        )
        ra = (
            f"{d['daddr'][i]}:{d['dport'][i]}" if fam == 4 else f"[{d['daddr'][i]}]:{d['dport'][i]}"
        )
        line = f"{ts}.{ms:03d} {d['pid'][i]:<7} {fam}  {la:<24} {typ} {ra:<24} {d['state'][i]:<12}"
        if sequence:
            seq = d["seq"][i]
            line += f" {seq if seq is not None and typ == 'R>' else 0:<10}"
        line += f" {d['reason'][i]}"
        out.append(line)
    return out


def format_counts(rows: list[dict]) -> str:
    """Like tcpretrans -c."""
    lines = [f"{'LADDR:LPORT':<24} {'RADDR:RPORT':<28} RETRANSMITS"]
    for r in sorted(rows, key=lambda r: -r["retransmits"]):
        la = f"{r['saddr']}:{r['sport']}"
        ra = f"{r['daddr']}:{r['dport']}"
        lines.append(f"{la:<24} <-> {ra:<24} {r['retransmits']:>10}")
    return "\n".join(lines)


def count_rows(raw: list[tuple]) -> list[dict]:
    """-c's kernel map, (family, saddr16, sport, daddr16, dport, count), as rows."""
    if not raw:
        return []
    fam4 = np.array([r[0] == 4 for r in raw])
    saddr = format_addrs(np.frombuffer(b"".join(r[1] for r in raw), np.uint8).reshape(-1, 16), fam4)
    daddr = format_addrs(np.frombuffer(b"".join(r[3] for r in raw), np.uint8).reshape(-1, 16), fam4)
    return [
        {"family": r[0], "saddr": s, "sport": r[2], "daddr": d, "dport": r[4], "retransmits": r[5]}
        for r, s, d in zip(raw, saddr, daddr)
    ]
