"""`retranscope record`: the loop that joins the probe, the writer, tcpdump and the metadata.

Kernel events -> probe (bulk decode) -> Arrow batches -> rotating Parquet + run.json.
SIGINT/SIGTERM end the loop cleanly: the buffers are drained, the last file written,
tcpdump stopped, and the kernel's lost-event count saved. Nothing is dropped silently.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from retranscope.accounting import GapTracker
from retranscope.errors import BadInput, EnvironmentProblem
from retranscope.fileio import write_json_atomic
from retranscope.record import procnet
from retranscope.record.decode import decode, format_addrs
from retranscope.record.probe import Probe, ProbeConfig, require_root
from retranscope.record.reasons import KernelSymbols
from retranscope.record.tcpdump import Tcpdump
from retranscope.record.writer import RUN_META, RotatingWriter
from retranscope.schemas.events import COUNTS_SCHEMA, EVENT_SCHEMA, SCHEMA_NAME, SCHEMA_VERSION


@dataclass
class RecordOptions:
    out: Path | None = None
    pcap: Path | None = None
    interface: str = "any"
    family: int | None = None
    port: int | None = None
    pid: int | None = None
    netns: str = "auto"  # "auto" (own namespace when not in the initial one), "all", "self"
    duration_s: float | None = None
    count: bool = False
    lossprobe: bool = False
    sequence: bool = False
    live: bool = True
    rotate_seconds: float = 10.0
    rotate_rows: int = 200_000
    force_perf_buffer: bool = False
    buffer_mb: int = 16


class PidSockets:
    """--pid: the socket inodes a process holds (/proc/PID/fd -> socket:[INODE])."""

    def __init__(self, pid: int):
        self.pid = pid
        self.inodes: set[int] = set()
        self._last_scan = 0.0
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_scan < 0.2:
            return
        self._last_scan = now
        fd_dir = Path(f"/proc/{self.pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    self.inodes.add(int(target[8:-1]))
        except OSError:
            pass

    def mask(self, sock_ino: np.ndarray) -> np.ndarray:
        keep = np.isin(sock_ino, list(self.inodes))
        if not keep.all():
            self.refresh()
            keep = np.isin(sock_ino, list(self.inodes))
        return keep


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


class _Stop:
    def __init__(self) -> None:
        self.requested = False
        self.signal: str | None = None

    def __call__(self, signum, _frame) -> None:
        self.requested = True
        self.signal = signal.Signals(signum).name


def record(opts: RecordOptions, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> dict:
    """Run the recorder until a signal, --duration, or an error. Returns the run metadata."""
    require_root()
    if opts.out is None and opts.pcap is not None:
        raise BadInput("--pcap needs --out DIR (the events and metadata go there)")
    if opts.pid is not None and not Path(f"/proc/{opts.pid}").exists():
        raise BadInput(f"--pid {opts.pid}: no such process")

    ident = procnet.host_identity()
    netns_ino = None
    if opts.netns == "self" or (opts.netns == "auto" and ident.get("in_init_netns") is False):
        netns_ino = ident["netns_ino"]
    elif opts.netns not in ("auto", "all", "self"):
        try:
            netns_ino = int(opts.netns)
        except ValueError as exc:
            raise BadInput(f"--netns {opts.netns!r}: give auto, all, self or an inode") from exc

    cfg = ProbeConfig(
        family=opts.family,
        port=opts.port,
        netns_ino=netns_ino,
        count=opts.count,
        lossprobe=opts.lossprobe,
        force_perf_buffer=opts.force_perf_buffer,
        buffer_mb=opts.buffer_mb,
    )
    stop = _Stop()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    run_id = uuid.uuid4().hex
    meta: dict = {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": "starting",
        "complete": False,
        **ident,
        "filters": {
            "family": opts.family,
            "port": opts.port,
            "pid": opts.pid,
            "netns_ino": netns_ino,
        },
        "argv": sys.argv,
    }
    probe = dump = writer = None
    try:
        try:
            symbols = KernelSymbols.load()
        except (OSError, PermissionError) as exc:
            raise EnvironmentProblem(
                f"cannot read kernel symbols ({exc}); run as root with kernel.kptr_restrict <= 1"
            ) from exc
        missing = symbols.has_all_callers()
        probe = Probe(cfg)
        for notice in probe.info.notices:
            print(f"retranscope: notice: {notice}", file=stderr)
        if missing:
            print(
                f"retranscope: notice: kernel symbols not found: {', '.join(missing)}; "
                "those reasons will read 'other'",
                file=stderr,
            )
        meta["probe"] = asdict(probe.info)
        meta["missing_callers"] = missing
        if opts.out is not None:
            writer = RotatingWriter(
                Path(opts.out) / "events",
                EVENT_SCHEMA,
                rotate_seconds=opts.rotate_seconds,
                rotate_rows=opts.rotate_rows,
                file_metadata={"run_id": run_id},
            )
        if opts.pcap is not None:
            dump = Tcpdump(opts.pcap, interface=opts.interface, family=opts.family, port=opts.port)
            dump.start()
            meta["pcap"] = {"path": str(opts.pcap), "argv": dump.argv}
        mono0, off0, unc0 = procnet.clock_offset_ns()
        meta["clock_offsets"] = [{"mono_ns": mono0, "offset_ns": off0, "uncertainty_ns": unc0}]
        meta["started_wall_ns"] = mono0 + off0
        meta["counters_start"] = procnet.read_counters()
        meta["status"] = "recording"
        if opts.out is not None:
            write_json_atomic(Path(opts.out) / RUN_META, meta)
        what = "per-flow counts" if opts.count and opts.out is None else "retransmits"
        print(
            f"retranscope: recording {what} ({probe.info.transport}, "
            f"{', '.join(probe.info.attach)}"
            f"{'; netns ' + str(netns_ino) if netns_ino else ''}); Ctrl-C to stop",
            file=stderr,
            flush=True,
        )
        if opts.live and not opts.count:
            hdr = (
                f"{'TIME':<12} {'PID':<7} IP {'LADDR:LPORT':<24} T> "
                f"{'RADDR:RPORT':<24} {'STATE':<12}"
            )
            print(
                hdr + (f" {'SEQ':<10}" if opts.sequence else "") + " REASON",
                file=stdout,
                flush=True,
            )

        pid_filter = PidSockets(opts.pid) if opts.pid is not None else None
        gaps = GapTracker()
        filtered_pid = 0
        received = 0
        offset = off0
        deadline = None if opts.duration_s is None else time.monotonic() + opts.duration_s

        def handle(raw: np.ndarray) -> bool:
            """One batch: filter, decode, show, write. True when a file was closed."""
            nonlocal received, filtered_pid
            received += len(raw)
            if pid_filter is not None and len(raw):
                keep = pid_filter.mask(raw["sock_ino"])
                filtered_pid += int((~keep).sum())
                raw = raw[keep]
            if not len(raw):
                return writer.maybe_rotate() if writer is not None else False
            table = decode(raw, symbols, offset)
            gaps.update(*_gap_columns(table))
            if opts.live and not opts.count:
                print("\n".join(live_lines(table, opts.sequence)), file=stdout, flush=True)
            return writer.append(table) if writer is not None else False

        while True:
            done = stop.requested or (deadline is not None and time.monotonic() >= deadline)
            # Once stopping, drain what the kernel already handed over, without waiting.
            rotated = handle(probe.drain() if done else probe.poll(100))
            if rotated:
                # A file was closed: resample the clock offset and make run.json describe it.
                mono, offset, unc = procnet.clock_offset_ns()
                meta["clock_offsets"].append(
                    {"mono_ns": mono, "offset_ns": offset, "uncertainty_ns": unc}
                )
                _update_meta(meta, probe, writer, received, filtered_pid)
                write_json_atomic(Path(opts.out) / RUN_META, meta)
            if done:
                break
        meta["stopped_by"] = stop.signal or ("duration" if deadline else None)
        # Detach, then take what is left: the kernel's count is final from here on.
        probe.detach()
        handle(probe.drain())
        mono1, off1, unc1 = procnet.clock_offset_ns()
        meta["clock_offsets"].append({"mono_ns": mono1, "offset_ns": off1, "uncertainty_ns": unc1})
        meta["ended_wall_ns"] = mono1 + off1
        meta["counters_end"] = procnet.read_counters()
        meta["counters_delta"] = procnet.counter_delta(meta["counters_start"], meta["counters_end"])
        if writer is not None:
            writer.flush()
        _update_meta(meta, probe, writer, received, filtered_pid)
        if opts.count:
            rows = _count_rows(probe.flow_counts())
            meta["flow_counts"] = len(rows)
            print(format_counts(rows), file=stdout, flush=True)
            if opts.out is not None:
                table = pa.Table.from_pylist(rows, schema=COUNTS_SCHEMA)
                pq.write_table(table, Path(opts.out) / "counts.parquet")
        if dump is not None:
            meta["pcap"]["tcpdump"] = dump.stop()
            dump = None
        meta["accounting"] = _accounting(gaps, meta, opts)
        meta["status"] = "complete"
        meta["complete"] = True
        lost = meta["events_lost_in_kernel"]
        msg = (
            f"retranscope: {meta['events_received']} events received, {lost} lost in the "
            f"kernel buffer" + (f", {filtered_pid} filtered by --pid" if pid_filter else "")
        )
        if writer is not None:
            msg += f"; {writer.rows_written} written to {opts.out}"
        print(msg, file=stderr, flush=True)
        if lost:
            print(
                f"retranscope: warning: {lost} events were lost (buffer full); they are "
                "counted in run.json",
                file=stderr,
            )
        unseen = meta["accounting"].get("unreported_segments") or 0
        if unseen:
            print(
                f"retranscope: warning: the kernel retransmitted {unseen} segments that no event "
                "reported (its per-socket and namespace counts say so; the kernel did not run "
                "the probe for them); counted in run.json under accounting",
                file=stderr,
            )
        return meta
    except BaseException as exc:
        meta["status"] = f"failed: {exc}"
        raise
    finally:
        if dump is not None:
            meta.setdefault("pcap", {})["tcpdump"] = dump.stop()
        if opts.out is not None and Path(opts.out).exists():
            write_json_atomic(Path(opts.out) / RUN_META, meta)
        if probe is not None:
            probe.close()
        for s, h in old.items():
            signal.signal(s, h)


def _update_meta(meta: dict, probe, writer, received: int, filtered_pid: int) -> None:
    seen, lost = probe.kernel_stats()
    meta["events_in_kernel"] = seen
    meta["events_lost_in_kernel"] = lost
    meta["events_missed_in_kernel"] = probe.missed()
    meta["events_received"] = received
    meta["events_filtered_pid"] = filtered_pid
    if writer is not None:
        meta["events_written"] = writer.rows_written
        meta["events_pending"] = writer.pending_rows
        meta["files"] = writer.files


def _gap_columns(table: pa.Table) -> tuple[np.ndarray, ...]:
    """The columns GapTracker.update takes, from a decoded batch."""
    valid = (pc.equal(table["event_type"], "retransmit").to_numpy(zero_copy_only=False)
             & table["segs"].is_valid().to_numpy(zero_copy_only=False)
             & table["total_retrans"].is_valid().to_numpy(zero_copy_only=False))
    sent = table["err"].fill_null(0).to_numpy(zero_copy_only=False) == 0
    # A SYN-ACK resent from a request socket is one segment (tcp_rtx_synack counts it in
    # RetransSegs only when it went out).
    synacks = int((pc.equal(table["event_type"], "synack").to_numpy(zero_copy_only=False)
                   & sent).sum())
    return (table["skaddr"].to_numpy(), table["ts_mono_ns"].to_numpy(),
            table["segs"].fill_null(0).to_numpy().astype(np.int64),
            table["total_retrans"].fill_null(0).to_numpy().astype(np.int64), valid, synacks)


def _accounting(gaps: GapTracker, meta: dict, opts) -> dict:
    """Retransmitted segments the kernel made vs those the events reported.

    Two independent checks: each socket's own total between two of its events (exact, per
    socket), and the namespace's RetransSegs counter against the events' segments (only
    when the recording is of one namespace and nothing else filters the events).
    """
    out: dict = dict(gaps.summary())
    kernel = (meta.get("counters_delta") or {}).get("Tcp:RetransSegs")
    filters = meta.get("filters") or {}
    unfiltered = not any(filters.get(k) is not None for k in ("port", "family", "pid"))
    out["kernel_retrans_segs"] = kernel
    namespace_gap = None
    if kernel is not None and unfiltered and filters.get("netns_ino") is not None:
        namespace_gap = max(0, int(kernel) - gaps.segs)
    out["namespace_counter_gap"] = namespace_gap
    out["unreported_segments"] = max(gaps.between_events, namespace_gap or 0)
    return out


def _count_rows(raw: list[tuple]) -> list[dict]:
    if not raw:
        return []
    fam4 = np.array([r[0] == 4 for r in raw])
    saddr = format_addrs(np.frombuffer(b"".join(r[1] for r in raw), np.uint8).reshape(-1, 16), fam4)
    daddr = format_addrs(np.frombuffer(b"".join(r[3] for r in raw), np.uint8).reshape(-1, 16), fam4)
    return [
        {"family": r[0], "saddr": s, "sport": r[2], "daddr": d, "dport": r[4], "retransmits": r[5]}
        for r, s, d in zip(raw, saddr, daddr)
    ]
