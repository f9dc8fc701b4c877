"""`retranscope record`: the loop that joins the probe, the writer, tcpdump, the metrics
and the run's metadata.

Kernel events -> probe (read in batches) -> decode -> journal (synced every 0.25 s) ->
Parquet at each rotation; run.json rewritten at each rotation, so it always describes the
files that exist. How a run ends:
  SIGINT, SIGTERM or --duration: the buffers drained, the last file closed, tcpdump
      stopped, the kernel's lost-event count saved; exit 0.
  a full disk (less than --min-free-mb left, or a write failing) or tcpdump dying: the
      same closing as far as the disk allows, what was kept and what was not in run.json,
      and one line; exit 1.
Nothing is dropped silently.
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from retranscope.accounting import GapTracker
from retranscope.errors import BadInput, EnvironmentProblem
from retranscope.fileio import write_json_atomic
from retranscope.record import probe as probe_mod
from retranscope.record import procnet
from retranscope.record.decode import decode
from retranscope.record.privileges import OUTPUT_UMASK, Owner, effective_capabilities
from retranscope.record.reasons import KernelSymbols
from retranscope.record.tcpdump import Tcpdump
from retranscope.record.terminal import count_rows, format_counts, live_header, live_lines
from retranscope.record.writer import (
    LOCK_NAME,
    RESERVE_NAME,
    RUN_META,
    EventWriter,
    OutputFailed,
    SpaceReserve,
    lock_output,
)
from retranscope.schemas.events import (
    COUNTS_SCHEMA,
    EV_SOCK_GONE,
    EVENT_SCHEMA,
    EVENTS_DIR,
    SCHEMA_NAME,
    SCHEMA_VERSION,
)

if TYPE_CHECKING:
    from retranscope.record.metrics import RecorderMetrics

TICK_S = 1.0  # free space, tcpdump's health, metrics: this often
TCPDUMP_STATS_S = 5.0
CLOCK_OFFSETS_KEPT = 100  # run.json keeps the first and the latest samples


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
    flush_seconds: float = 0.25
    max_size_mb: int | None = None
    max_files: int | None = None
    min_free_mb: float = 1.0
    metrics: str | None = None
    metrics_remote: bool = False
    force_perf_buffer: bool = False
    ring_reader: str = "mmap"
    buffer_mb: int = 16


def check_options(opts: RecordOptions) -> None:
    if opts.out is None:
        for given, flag in (
            (opts.pcap, "--pcap"),
            (opts.max_size_mb, "--max-size"),
            (opts.max_files, "--max-files"),
        ):
            if given is not None:
                raise BadInput(f"{flag} needs --out DIR (the events and metadata go there)")
    if opts.pid is not None and not Path(f"/proc/{opts.pid}").exists():
        raise BadInput(f"--pid {opts.pid}: no such process")
    if not 0 < opts.flush_seconds <= 1:
        raise BadInput(f"--flush-seconds {opts.flush_seconds}: give a value in (0, 1]")
    if opts.max_files is not None and opts.max_files < 2:
        raise BadInput(f"--max-files {opts.max_files}: at least 2 (the open file and one more)")
    if opts.max_size_mb is not None and opts.max_size_mb < 1:
        raise BadInput(f"--max-size {opts.max_size_mb}: at least 1 (MB)")
    if opts.max_files is not None and opts.max_size_mb is None and opts.pcap is not None:
        raise BadInput("--max-files with --pcap needs --max-size (tcpdump's -W needs -C)")
    if opts.ring_reader not in ("mmap", "bcc"):
        raise BadInput(f"--ring-reader {opts.ring_reader!r}: give mmap or bcc")


def netns_filter(netns: str, ident: dict) -> int | None:
    if netns == "self" or (netns == "auto" and ident.get("in_init_netns") is False):
        return ident["netns_ino"]
    if netns in ("auto", "all"):
        return None
    try:
        return int(netns)
    except ValueError as exc:
        raise BadInput(f"--netns {netns!r}: give auto, all, self or an inode") from exc


class PidSockets:
    """--pid: the socket inodes a process holds (/proc/PID/fd -> socket:[INODE]). Two
    generations are kept, so a socket closed just before its last events still counts
    and the set does not grow with every socket the process ever had."""

    def __init__(self, pid: int):
        self.pid = pid
        self.inodes: set[int] = set()
        self._older: set[int] = set()
        self._last_scan = 0.0
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_scan < 0.2:
            return
        self._last_scan = now
        found = set()
        try:
            for fd in Path(f"/proc/{self.pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    found.add(int(target[8:-1]))
        except PermissionError as exc:
            raise EnvironmentProblem(
                f"--pid {self.pid}: cannot read /proc/{self.pid}/fd (another user's process "
                "needs CAP_SYS_PTRACE)"
            ) from exc
        except OSError:
            return  # the process has gone: keep what it had
        self._older, self.inodes = self.inodes, found

    def mask(self, sock_ino: np.ndarray) -> np.ndarray:
        keep = np.isin(sock_ino, list(self.inodes | self._older))
        if not keep.all():
            self.refresh()
            keep = np.isin(sock_ino, list(self.inodes | self._older))
        return keep


class LiveGapTracker(GapTracker):
    """GapTracker for a recorder that runs for days: it forgets the sockets the kernel
    destroyed (RTS_EV_SOCK_GONE records), so its state is the live sockets' only."""

    def __init__(self) -> None:
        super().__init__()
        self.forgotten_with_gaps = 0

    def forget(self, skaddrs: np.ndarray) -> None:
        for sk in skaddrs.astype(np.int64).tolist():
            self._last.pop(sk, None)
            if sk in self._gapped:
                self._gapped.discard(sk)
                self.forgotten_with_gaps += 1

    def summary(self) -> dict[str, int]:
        out = super().summary()
        out["sockets_with_gaps"] += self.forgotten_with_gaps
        return out


class _Stop:
    def __init__(self) -> None:
        self.requested = False
        self.signal: str | None = None

    def __call__(self, signum, _frame) -> None:
        self.requested = True
        self.signal = signal.Signals(signum).name


def record(opts: RecordOptions, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> dict:
    """Run the recorder until a signal, --duration, or an error. Returns the run metadata."""
    # The C library's allocator, not Arrow's default (mimalloc, which keeps freed memory
    # for a while): measured by bench/soak_record.py, RSS then stays within 0.3 MB over
    # minutes instead of wandering by 4-14 MB, 16 MB smaller, at the same CPU per event.
    # The CLI sets ARROW_DEFAULT_MEMORY_POOL=system before pyarrow loads, so that mimalloc
    # never starts; here for callers that import pyarrow first.
    pa.set_memory_pool(pa.system_memory_pool())
    return Recorder(opts, stdout, stderr).run()


class Recorder:
    def __init__(self, opts: RecordOptions, stdout: TextIO, stderr: TextIO):
        self.opts = opts
        self.stdout, self.stderr = stdout, stderr
        self.out = Path(opts.out) if opts.out is not None else None
        self.owner = Owner.from_environment()
        self.meta: dict = {}
        self.probe: probe_mod.Probe | None = None
        self.writer: EventWriter | None = None
        self.dump: Tcpdump | None = None
        self.metrics: RecorderMetrics | None = None
        self.reserve: SpaceReserve | None = None
        self.lock_fd: int | None = None
        self.gaps = LiveGapTracker()
        self.pid_filter: PidSockets | None = None
        self.received = self.filtered_pid = 0
        self.offset_ns = 0
        self.stop = _Stop()
        self._space_paths: set[Path] = set()

    # -- the run -------------------------------------------------------------------------
    def run(self) -> dict:
        check_options(self.opts)
        probe_mod.check_environment(pcap=self.opts.pcap is not None)
        old = {s: signal.signal(s, self.stop) for s in (signal.SIGINT, signal.SIGTERM)}
        old_umask = os.umask(OUTPUT_UMASK)
        try:
            self._start()
            failure = self._loop()
            return self._finish(failure)
        except BaseException as exc:
            if not str(self.meta.get("status", "")).startswith("failed"):
                self.meta["status"] = f"failed: {exc}"
            self.meta["complete"] = False
            raise
        finally:
            self._cleanup()
            for s, h in old.items():
                signal.signal(s, h)
            os.umask(old_umask)

    def _start(self) -> None:
        opts = self.opts
        ident = procnet.host_identity()
        netns_ino = netns_filter(opts.netns, ident)
        run_id = uuid.uuid4().hex
        self.meta = {
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
            "process": {"euid": os.geteuid(), "capabilities": effective_capabilities()},
            "outputs": {
                "owner_uid": self.owner.uid,
                "umask": oct(OUTPUT_UMASK),
                "flush_seconds": opts.flush_seconds,
            },
        }
        if self.out is not None:
            self.owner.make_dir(self.out)
            self.lock_fd = lock_output(self.out)
            self.reserve = SpaceReserve(self.out / RESERVE_NAME)
            self.meta["previous_runs"] = _previous_runs(self.out / RUN_META)
        try:
            self.symbols = KernelSymbols.load()
        except (OSError, PermissionError) as exc:
            raise EnvironmentProblem(
                f"cannot read kernel symbols ({exc}); needs CAP_SYSLOG, or "
                "kernel.kptr_restrict=0 with kernel.perf_event_paranoid<=1"
            ) from exc
        missing = self.symbols.has_all_callers()
        self.probe = probe_mod.Probe(
            probe_mod.ProbeConfig(
                family=opts.family,
                port=opts.port,
                netns_ino=netns_ino,
                count=opts.count,
                lossprobe=opts.lossprobe,
                force_perf_buffer=opts.force_perf_buffer,
                ring_reader=opts.ring_reader,
                buffer_mb=opts.buffer_mb,
            )
        )
        for notice in self.probe.info.notices:
            self._say(f"notice: {notice}")
        if missing:
            self._say(
                f"notice: kernel symbols not found: {', '.join(missing)}; "
                "those reasons will read 'other'"
            )
        self.meta["probe"] = asdict(self.probe.info)
        self.meta["missing_callers"] = missing
        if self.out is not None:
            self.writer = EventWriter(
                self.out / EVENTS_DIR,
                EVENT_SCHEMA,
                rotate_seconds=opts.rotate_seconds,
                rotate_rows=opts.rotate_rows,
                flush_seconds=opts.flush_seconds,
                max_bytes=None if opts.max_size_mb is None else opts.max_size_mb * 1_000_000,
                max_files=opts.max_files,
                file_metadata={"run_id": run_id},
                owner=self.owner,
            )
        self._start_outputs()
        pcap_dir = Path(opts.pcap).parent if opts.pcap is not None else None
        self._space_paths = {p for p in (self.out, pcap_dir) if p is not None}
        mono0, off0, unc0 = procnet.clock_offset_ns()
        self.offset_ns = off0
        self.meta["clock_offsets"] = [{"mono_ns": mono0, "offset_ns": off0, "uncertainty_ns": unc0}]
        self.meta["started_wall_ns"] = mono0 + off0
        self.meta["counters_start"] = procnet.read_counters()
        self.meta["status"] = "recording"
        self._update_meta()
        self._write_meta()
        what = "per-flow counts" if opts.count and opts.out is None else "retransmits"
        info = self.probe.info
        self._say(
            f"recording {what} ({info.transport}/{info.reader}, {', '.join(info.attach)}"
            f"{'; netns ' + str(netns_ino) if netns_ino else ''}"
            f"{'; metrics on ' + self.metrics.address if self.metrics else ''}"
            "); Ctrl-C to stop"
        )
        if opts.live and not opts.count:
            print(live_header(opts.sequence), file=self.stdout, flush=True)
        if opts.pid is not None:
            self.pid_filter = PidSockets(opts.pid)

    def _start_outputs(self) -> None:
        """tcpdump and the metrics endpoint."""
        opts = self.opts
        if opts.pcap is not None:
            self.owner.make_dir(Path(opts.pcap).parent)
            self.dump = Tcpdump(
                opts.pcap,
                interface=opts.interface,
                family=opts.family,
                port=opts.port,
                user=self.owner.tcpdump_user,
                max_size_mb=opts.max_size_mb,
                max_files=opts.max_files,
            )
            self.dump.start()
            self.meta["pcap"] = {"path": str(opts.pcap), "argv": self.dump.argv}
        if opts.metrics is not None:
            from retranscope.record.metrics import RecorderMetrics

            self.metrics = RecorderMetrics(opts.metrics, remote=opts.metrics_remote)
            self.meta["metrics"] = self.metrics.address

    def _loop(self) -> OutputFailed | None:
        """Until asked to stop; returns the failure that ended it, if one did."""
        deadline = None if self.opts.duration_s is None else time.monotonic() + self.opts.duration_s
        next_tick = time.monotonic() + TICK_S
        next_stats = time.monotonic()
        assert self.probe is not None
        while True:
            done = self.stop.requested or (deadline is not None and time.monotonic() >= deadline)
            try:
                # Once stopping, drain what the kernel already handed over, without waiting.
                rotated = self._handle(self.probe.drain() if done else self.probe.poll(100))
                if rotated:
                    self._rotated()
                self._check_space()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK_S
                    self._tick(stats=now >= next_stats)
                    if now >= next_stats:
                        next_stats = now + TCPDUMP_STATS_S
            except OutputFailed as err:
                self.meta["stopped_by"] = "output_failed"
                return err
            if done:
                self.meta["stopped_by"] = self.stop.signal or ("duration" if deadline else None)
                return None

    def _handle(self, raw: np.ndarray) -> bool:
        """One batch: filter, decode, count, show, write. True when a file was closed."""
        gone = raw["event_type"] == EV_SOCK_GONE
        gone_sockets = raw["skaddr"][gone] if gone.any() else None
        if gone_sockets is not None:
            raw = raw[~gone]
        self.received += len(raw)
        if self.pid_filter is not None and len(raw):
            keep = self.pid_filter.mask(raw["sock_ino"])
            self.filtered_pid += int((~keep).sum())
            raw = raw[keep]
        rotated = False
        if len(raw):
            table = decode(raw, self.symbols, self.offset_ns)
            self.gaps.update(*_gap_columns(table))
            if self.metrics is not None:
                self.metrics.count(table)
            if self.opts.live and not self.opts.count:
                print(
                    "\n".join(live_lines(table, self.opts.sequence)), file=self.stdout, flush=True
                )
            if self.writer is not None:
                rotated = self.writer.append(table)
        elif self.writer is not None:
            rotated = self.writer.tick()
        if gone_sockets is not None:
            self.gaps.forget(gone_sockets)
        return rotated

    def _rotated(self) -> None:
        """A file was closed: resample the clock offset and make run.json describe it;
        hand the memory the rotation freed back to the kernel."""
        _trim_heap()
        mono, self.offset_ns, unc = procnet.clock_offset_ns()
        offsets = self.meta["clock_offsets"]
        offsets.append({"mono_ns": mono, "offset_ns": self.offset_ns, "uncertainty_ns": unc})
        if len(offsets) > CLOCK_OFFSETS_KEPT:
            del offsets[1]
        self._update_meta()
        self._write_meta()

    def _check_space(self) -> None:
        """Stop while files can still be closed: tcpdump does not check its writes, and a
        capture fills a small disk in a fraction of a second. (A statvfs: microseconds.)"""
        for path in self._space_paths:
            st = os.statvfs(path)
            free = st.f_bavail * st.f_frsize
            if free < self.opts.min_free_mb * 1e6:
                raise OutputFailed(
                    f"no space left on device ({free / 1e6:.1f} MB free in "
                    f"{path}, less than --min-free-mb {self.opts.min_free_mb:g})"
                )

    def _tick(self, stats: bool) -> None:
        """About once a second: tcpdump alive, metrics."""
        if self.dump is not None:
            ended = self.dump.exited()
            if ended:
                raise OutputFailed(f"{ended}; the capture stopped")
            if stats:
                self.dump.request_stats()
        if self.metrics is not None:
            assert self.probe is not None
            _seen, lost = self.probe.kernel_stats()
            self.metrics.set(
                events_lost=lost,
                events_missed=self.probe.missed(),
                unreported_segments=self.gaps.between_events,
                events_written=self.writer.rows_written if self.writer else None,
            )
            if self.dump is not None:
                self.metrics.set_tcpdump(self.dump.read_stats())

    def _finish(self, failure: OutputFailed | None) -> dict:
        """Detach, take what is left, close the files, account; the last word."""
        meta = self.meta
        assert self.probe is not None
        # Detach, then take what is left: the kernel's count is final from here on.
        self.probe.detach()
        try:
            self._handle(self.probe.drain())
        except OutputFailed as err:
            # What was left fills the disk (a storm stopped by --min-free-mb leaves more in
            # the ring buffer than the margin holds): the run ends on the first failure,
            # the journal cut back to its last complete batch, the rest counted unwritten.
            failure = failure or err
        mono1, off1, unc1 = procnet.clock_offset_ns()
        meta["clock_offsets"].append({"mono_ns": mono1, "offset_ns": off1, "uncertainty_ns": unc1})
        meta["ended_wall_ns"] = mono1 + off1
        meta["counters_end"] = procnet.read_counters()
        meta["counters_delta"] = procnet.counter_delta(meta["counters_start"], meta["counters_end"])
        if self.writer is not None and not self.writer.failed:
            try:
                self.writer.close()
            except OutputFailed as err:
                failure = failure or err
        if self.opts.count:
            self._write_counts()
        if self.dump is not None:
            meta["pcap"]["tcpdump"] = self.dump.stop()
            self.dump = None
        self._update_meta()
        meta["accounting"] = _accounting(self.gaps, meta)
        if failure is not None:
            raise self._failed(failure)
        meta["status"] = "complete"
        meta["complete"] = True
        self._summary()
        return meta

    def _failed(self, failure: OutputFailed) -> OutputFailed:
        """run.json and the one line for a run the disk (or tcpdump) ended."""
        meta = self.meta
        meta["status"] = f"failed: {failure}"
        meta["complete"] = False
        if self.reserve is not None:
            self.reserve.release()  # room for run.json
        w = self.writer
        kept = ""
        if w is not None:
            closed = sum(int(f["rows"]) for f in w.files)
            journal = w.rows_written - closed
            kept = (
                f"; {len(w.files)} event files are complete ({closed} events)"
                + (f", the journal holds {journal} more" if journal > 0 else "")
                + f"; {meta.get('events_not_written', 0)} events were not written"
            )
        if self.opts.pcap is not None and "no space" in str(failure):
            kept += "; the capture may end mid-packet (tcpdump does not check its writes)"
        where = f"; run.json in {self.out} says what was kept" if self.out else ""
        return OutputFailed(f"recording stopped: {failure}{kept}{where}")

    def _write_counts(self) -> None:
        assert self.probe is not None
        rows = count_rows(self.probe.flow_counts())
        self.meta["flow_counts"] = len(rows)
        print(format_counts(rows), file=self.stdout, flush=True)
        if self.out is not None:
            path = self.out / "counts.parquet"
            pq.write_table(pa.Table.from_pylist(rows, schema=COUNTS_SCHEMA), path)
            self.owner.apply(path)

    def _summary(self) -> None:
        meta = self.meta
        lost = meta["events_lost_in_kernel"]
        msg = f"{meta['events_received']} events received, {lost} lost in the kernel buffer" + (
            f", {self.filtered_pid} filtered by --pid" if self.pid_filter else ""
        )
        if self.writer is not None:
            msg += f"; {self.writer.rows_written} written to {self.out}"
        self._say(msg)
        if lost:
            self._say(
                f"warning: {lost} events were lost (buffer full); they are counted in run.json"
            )
        unseen = meta["accounting"].get("unreported_segments") or 0
        if unseen:
            self._say(
                f"warning: the kernel retransmitted {unseen} segments that no event "
                "reported (its per-socket and namespace counts say so; the kernel did "
                "not run the probe for them); counted in run.json under accounting"
            )

    def _cleanup(self) -> None:
        if self.dump is not None:
            self.meta.setdefault("pcap", {})["tcpdump"] = self.dump.stop()
            self.dump = None
        if self.reserve is not None:
            self.reserve.release()
        if self.lock_fd is not None and self.meta:  # never another recorder's run.json
            self._write_meta()
        if self.metrics is not None:
            self.metrics.close()
        if self.probe is not None:
            self.probe.close()
        if self.lock_fd is not None and self.out is not None:
            (self.out / LOCK_NAME).unlink(missing_ok=True)
            os.close(self.lock_fd)
            self.lock_fd = None

    # -- metadata ------------------------------------------------------------------------
    def _update_meta(self) -> None:
        meta = self.meta
        if self.probe is not None:
            seen, lost = self.probe.kernel_stats()
            meta["events_in_kernel"] = seen
            meta["events_lost_in_kernel"] = lost
            meta["events_missed_in_kernel"] = self.probe.missed()
        meta["events_received"] = self.received
        meta["events_filtered_pid"] = self.filtered_pid
        if self.writer is not None:
            w = self.writer
            meta["events_written"] = w.rows_written
            meta["events_pending"] = w.pending_rows
            # Pending rows wait for the next flush, unless the writer has failed.
            waiting = 0 if w.failed else w.pending_rows
            meta["events_not_written"] = max(
                0, self.received - self.filtered_pid - w.rows_written - waiting
            )
            meta.update(w.state())

    def _write_meta(self) -> None:
        if self.out is None:
            return
        path = self.out / RUN_META
        write_json_atomic(path, self.meta)
        self.owner.apply(path)

    def _say(self, text: str) -> None:
        print(f"retranscope: {text}", file=self.stderr, flush=True)


def _trim_heap() -> None:
    """glibc keeps freed memory for reuse, in the middle of its heaps too; malloc_trim
    returns whole free pages to the kernel (about a millisecond). Without it the RSS of a
    long run wanders by several MB around a flat floor (bench/soak_record.py)."""
    try:
        ct.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _previous_runs(path: Path) -> list[dict]:
    """A recorder restarted on the same --out (a service, within one boot) continues in
    it: what run.json said of the runs before, in brief, so that none goes unmentioned."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    keys = (
        "run_id",
        "status",
        "complete",
        "started_wall_ns",
        "ended_wall_ns",
        "events_written",
        "events_not_written",
        "events_lost_in_kernel",
    )
    brief = {k: old.get(k) for k in keys}
    brief["unreported_segments"] = (old.get("accounting") or {}).get("unreported_segments")
    return [*old.get("previous_runs", []), brief]


def _gap_columns(
    table: pa.Table,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The columns GapTracker.update takes, from a decoded batch."""
    valid = (
        pc.equal(table["event_type"], "retransmit").to_numpy(zero_copy_only=False)
        & table["segs"].is_valid().to_numpy(zero_copy_only=False)
        & table["total_retrans"].is_valid().to_numpy(zero_copy_only=False)
    )
    sent = table["err"].fill_null(0).to_numpy(zero_copy_only=False) == 0
    # A SYN-ACK resent from a request socket is one segment (tcp_rtx_synack counts it in
    # RetransSegs only when it went out).
    synacks = int(
        (pc.equal(table["event_type"], "synack").to_numpy(zero_copy_only=False) & sent).sum()
    )
    return (
        table["skaddr"].to_numpy(),
        table["ts_mono_ns"].to_numpy(),
        table["segs"].fill_null(0).to_numpy().astype(np.int64),
        table["total_retrans"].fill_null(0).to_numpy().astype(np.int64),
        valid,
        synacks,
    )


def _accounting(gaps: GapTracker, meta: dict) -> dict:
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
    # The counters are those of the recorder's own namespace: they describe the events
    # only when the filter is that namespace (not --netns INODE of another one).
    own = filters.get("netns_ino") is not None and filters.get("netns_ino") == meta.get("netns_ino")
    if kernel is not None and unfiltered and own:
        namespace_gap = max(0, int(kernel) - gaps.segs)
    out["namespace_counter_gap"] = namespace_gap
    out["unreported_segments"] = max(gaps.between_events, namespace_gap or 0)
    return out
