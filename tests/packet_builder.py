"""Build packet tables (schemas/packets.py) from a short description of a trace.

A test describes what the capture on the sender's host would show, segment by segment::

    tr = Trace()
    c = tr.conn()                      # client 10.0.0.1:40000 -> server 10.0.0.2:5001
    t = c.handshake(0, rtt_ms=10)      # SYN, SYN-ACK, ACK; returns the time after it
    c.send(t, 1, 1000)                 # client data: relative seq 1, 1000 bytes
    c.ack(t + 10, 1001)                # server ACK of it
    pk = tr.packets()                  # the column dict, frames in time order

Sequence numbers are relative to each side's ISN (data starts at 1, as Wireshark shows);
the builder adds the ISN and wraps to 32 bits. Times are milliseconds from the trace start.
Timestamps (RFC 7323) are filled in from the time: TSval = ms + a per-side offset, and TSecr
echoes the peer's most recent TSval unless given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from retranscope.schemas.packets import (
    PACKET_DTYPES,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    addr_from_str,
)

T0_NS = 1_700_000_000_000_000_000
M32 = 0xFFFFFFFF


@dataclass
class Side:
    addr: str
    port: int
    isn: int
    ts_offset: int
    last_tsval: int = 0
    last_sent_ms: float = -1.0


@dataclass
class Conn:
    trace: Trace
    c: Side
    s: Side
    mss: int = 1460  # the SYN option; payloads are 12 bytes less with timestamps
    sack: bool = True
    ts: bool = True
    wscale: int = 7
    win: int = 502
    rows: list = field(default_factory=list)

    def _side(self, by: str) -> tuple[Side, Side]:
        return (self.c, self.s) if by == "c" else (self.s, self.c)

    def packet(
        self,
        t_ms: float,
        by: str,
        *,
        seq: int,
        ack: int | None,
        flags: int,
        length: int = 0,
        sack: tuple = (),
        tsval: int | None = None,
        tsecr: int | None = None,
        win: int | None = None,
        syn_opts: bool = False,
        raw_seq: bool = False,
    ) -> dict:
        me, peer = self._side(by)
        row = {k: 0 for k in PACKET_DTYPES}
        hi, lo, fam = addr_from_str(me.addr)
        dhi, dlo, _ = addr_from_str(peer.addr)
        row.update(
            ts_ns=T0_NS + int(round(t_ms * 1e6)),
            family=fam,
            iface=0,
            pkttype=-1,
            saddr_hi=hi,
            saddr_lo=lo,
            daddr_hi=dhi,
            daddr_lo=dlo,
            sport=me.port,
            dport=peer.port,
            flags=flags,
            payload_len=length,
            win=self.win if win is None else win,
            opt_wscale=-1,
        )
        row["seq"] = (seq if raw_seq else me.isn + seq) & M32
        if ack is not None:
            row["ack"] = (peer.isn + ack) & M32
            row["flags"] |= TCP_ACK
        if syn_opts:
            row.update(opt_mss=self.mss, opt_wscale=self.wscale, opt_sackok=self.sack)
        if self.ts:
            row["opt_ts"] = True
            row["tsval"] = (me.ts_offset + int(t_ms)) & M32 if tsval is None else tsval
            if tsecr is None:
                tsecr = peer.last_tsval if row["flags"] & TCP_ACK else 0
            row["tsecr"] = tsecr & M32
            me.last_tsval = row["tsval"]
        sack = tuple(sack)
        assert len(sack) <= 4
        row["sack_n"] = len(sack)
        for i, (left, right) in enumerate(sack):
            row[f"sack_l{i}"] = (peer.isn + left) & M32
            row[f"sack_r{i}"] = (peer.isn + right) & M32
        self.trace._add(row)
        return row

    # -- handshake ------------------------------------------------------------------------
    def syn(self, t_ms: float) -> dict:
        return self.packet(t_ms, "c", seq=0, ack=None, flags=TCP_SYN, syn_opts=True)

    def synack(self, t_ms: float) -> dict:
        return self.packet(t_ms, "s", seq=0, ack=1, flags=TCP_SYN, syn_opts=True)

    def handshake(self, t_ms: float = 0.0, rtt_ms: float = 1.0) -> float:
        self.syn(t_ms)
        self.synack(t_ms + rtt_ms)
        self.packet(t_ms + rtt_ms + 0.01, "c", seq=1, ack=1, flags=0)
        return t_ms + rtt_ms + 0.01

    # -- data and acks ----------------------------------------------------------------------
    def send(
        self,
        t_ms: float,
        seq: int,
        length: int,
        *,
        by: str = "c",
        ack: int = 1,
        flags: int = TCP_PSH,
        **kw,
    ) -> dict:
        """A data segment; ``ack`` is what it acknowledges of the peer (default 1)."""
        return self.packet(t_ms, by, seq=seq, ack=ack, flags=flags, length=length, **kw)

    def burst(
        self,
        t_ms: float,
        seq: int,
        n: int,
        *,
        gap_ms: float = 0.01,
        size: int | None = None,
        by: str = "c",
    ) -> tuple[float, int]:
        """``n`` full segments back to back; returns (time of the last, next seq)."""
        size = size or (self.mss - 12 if self.ts else self.mss)
        t = t_ms
        for i in range(n):
            t = t_ms + i * gap_ms
            self.send(t, seq + i * size, size, by=by)
        return t, seq + n * size

    def ack(
        self, t_ms: float, ack: int, *, by: str = "s", sack: tuple = (), seq: int = 1, **kw
    ) -> dict:
        """A pure ACK from ``by`` (default the server) acknowledging ``ack``."""
        return self.packet(t_ms, by, seq=seq, ack=ack, flags=0, sack=sack, **kw)

    def fin(self, t_ms: float, seq: int, *, by: str = "c", ack: int = 1) -> dict:
        return self.packet(t_ms, by, seq=seq, ack=ack, flags=TCP_FIN)

    def rst(self, t_ms: float, seq: int, *, by: str = "c") -> dict:
        return self.packet(t_ms, by, seq=seq, ack=None, flags=TCP_RST)


class Trace:
    """A capture under construction: any number of connections, merged in time order."""

    def __init__(self) -> None:
        self._rows: list[dict] = []

    def _add(self, row: dict) -> None:
        self._rows.append(row)

    def conn(
        self,
        client: str = "10.0.0.1",
        server: str = "10.0.0.2",
        cport: int = 40000,
        sport: int = 5001,
        isn_c: int = 1_000_000,
        isn_s: int = 3_000_000_000,
        **kw,
    ) -> Conn:
        return Conn(
            self,
            Side(client, cport, isn_c, ts_offset=50_000),
            Side(server, sport, isn_s, ts_offset=9_000_000),
            **kw,
        )

    def packets(self) -> dict[str, np.ndarray]:
        rows = sorted(self._rows, key=lambda r: r["ts_ns"])  # stable: insertion order on ties
        out = {}
        for name, dt in PACKET_DTYPES.items():
            out[name] = np.array([r[name] for r in rows], dtype=dt) if rows else np.zeros(0, dt)
        out["frame"] = np.arange(1, len(rows) + 1, dtype=np.int64)
        return out

    def frame_of(self, row: dict) -> int:
        """The frame number a row will get (rows sort stably by time)."""
        rows = sorted(self._rows, key=lambda r: r["ts_ns"])
        for i, r in enumerate(rows):
            if r is row:
                return i + 1
        raise KeyError("row not in this trace")
