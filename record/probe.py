"""Load and attach the BPF program (bpf/retranscope.bpf.c) and drain its events.

The kernel edge of the recorder: everything that touches bcc, tracefs and the BPF
syscalls lives here. Events come out as numpy records of ``schemas.events.RAW_DTYPE``,
decoded in batches (one ``np.frombuffer`` per poll, not one Python object per event).
"""

from __future__ import annotations

import ctypes as ct
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retranscope.bpf import BPF_DIR
from retranscope.errors import EnvironmentProblem
from retranscope.record import ringbuf
from retranscope.record.bpfsys import prog_recursion_misses
from retranscope.record.btf import BTF, VMLINUX_BTF, BTFError, kernel_offsets
from retranscope.record.privileges import capability_problem
from retranscope.schemas.events import RAW_DTYPE

TRACEFS = Path("/sys/kernel/tracing")
TP_FORMAT = TRACEFS / "events/tcp/tcp_retransmit_skb/format"
MOUNTS = Path("/proc/self/mounts")
EVENT_SIZE = RAW_DTYPE.itemsize


@dataclass
class ProbeConfig:
    family: int | None = None  # 4 or 6 (-4 / -6)
    port: int | None = None
    netns_ino: int | None = None
    count: bool = False  # -c: per-flow counts in the kernel
    lossprobe: bool = False  # -l: kprobe on tcp_send_loss_probe
    # 16 MiB: ~87,000 events of slack at 192 bytes each, several seconds of a storm of
    # ~19,000 retransmissions/s if the reader is starved of CPU.
    buffer_mb: int = 16
    force_perf_buffer: bool = False
    # "mmap": read the ring buffer's memory in batches (record/ringbuf.py); "bcc": bcc's
    # per-record callback (kept as the fallback, and for comparison in bench_record.py).
    ring_reader: str = "mmap"
    # With the mmap reader: gather at least this long between reads, so that a storm is
    # read in batches of hundreds (one wakeup and one decode per batch, not per event).
    batch_ms: float = 100.0


@dataclass
class ProbeInfo:
    """What was attached and how: saved in the run metadata."""

    transport: str = ""  # "ringbuf" | "perf"
    reader: str = ""  # "mmap" (direct, in batches) | "bcc" (bcc's callback per record)
    attach: list[str] = field(default_factory=list)
    tracepoint_has_err: bool = False
    offsets: dict[str, int] = field(default_factory=dict)
    offsets_missing: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def tracefs_mounted(mounts: Path = MOUNTS) -> bool:
    """From the mount table, not from a stat of TRACEFS: a recorder without root may not
    look into tracefs (0700) even where it is mounted."""
    try:
        text = mounts.read_text()
    except OSError:
        return (TRACEFS / "events").is_dir()
    return any(
        f[1] == str(TRACEFS) and f[2] == "tracefs"
        for f in (line.split() for line in text.splitlines())
        if len(f) > 2
    )


def ensure_tracefs() -> None:
    """Mount tracefs if it is not: `ip netns exec` gives a fresh /sys without it."""
    if tracefs_mounted():
        return
    try:
        subprocess.run(
            ["mount", "-t", "tracefs", "nodev", str(TRACEFS)],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EnvironmentProblem(
            f"tracefs is not mounted at {TRACEFS} and mounting it failed ({exc}); "
            f"run: mount -t tracefs nodev {TRACEFS}"
        ) from exc
    if not (TRACEFS / "events").is_dir():
        raise EnvironmentProblem(
            f"tracefs mounted but {TRACEFS}/events is missing; "
            "is CONFIG_FTRACE enabled in this kernel?"
        )


def require_root() -> None:
    """For the lab (`demo`): namespaces and nftables need root itself."""
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            "retranscope record needs root (BPF and tracefs): run it with sudo"
        )


def check_environment(pcap: bool = False) -> None:
    """Capabilities (not euid 0: record/privileges.py), tracefs, kernel headers; each
    problem is one line."""
    ensure_tracefs()
    problem = capability_problem(TP_FORMAT, pcap)
    if problem:
        raise EnvironmentProblem(problem)
    release = platform.release()
    build = Path("/lib/modules") / release / "build"
    if not build.exists():
        raise EnvironmentProblem(
            f"no kernel headers at {build} (bcc compiles the probe against them): run "
            f"./setup.sh, or apt-get install linux-headers-{release}"
        )


def _import_bcc():
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        raise EnvironmentProblem(
            "the bcc Python module is not importable: run ./setup.sh (it installs "
            "python3-bpfcc and links it into .venv)"
        ) from exc
    return bcc


def _tracepoint_fields(fmt: Path) -> set[str]:
    names = set()
    for line in fmt.read_text().splitlines():
        line = line.strip()
        if line.startswith("field:"):
            decl = line.split(";", 1)[0][len("field:") :]
            names.add(decl.split()[-1].split("[", 1)[0])
    return names


class Probe:
    """The attached BPF program. Use as a context manager; ``poll()`` returns a batch."""

    def __init__(self, cfg: ProbeConfig):
        check_environment()
        ensure_tracefs()
        bcc = _import_bcc()
        self.cfg = cfg
        self.info = ProbeInfo()
        self._chunks: list[bytes] = []
        self._perf_lost = 0
        self._ring: ringbuf.RingReader | None = None
        self._last_read = 0.0

        try:
            btf = BTF.load(VMLINUX_BTF) if VMLINUX_BTF.exists() else None
        except (OSError, BTFError) as exc:
            btf = None
            self.info.notices.append(f"BTF unreadable ({exc}): seq and socket fields off")
        offsets, missing = kernel_offsets(btf)
        self.info.offsets, self.info.offsets_missing = offsets, missing
        if btf is None:
            self.info.notices.append(
                "no kernel BTF (/sys/kernel/btf/vmlinux): seq/end_seq and socket state "
                "cannot be read safely and are left empty"
            )

        have_tp = TP_FORMAT.exists()
        cflags = [f"-I{BPF_DIR}", "-Wno-macro-redefined"]
        cflags += [f"-D{k}={v}" for k, v in offsets.items()]
        if have_tp:
            cflags.append("-DRTS_HAVE_TP")
            if "err" in _tracepoint_fields(TP_FORMAT):
                cflags.append("-DRTS_TP_HAS_ERR")
                self.info.tracepoint_has_err = True
        else:
            cflags.append("-DRTS_KPROBE_RETRANSMIT")
        if (
            offsets["RTS_OFF_CA_STATE_BYTE"] < 0
            and (TRACEFS / "events/tcp/tcp_cong_state_set").exists()
        ):
            cflags.append("-DRTS_CA_FROM_MAP")
        if cfg.family is not None:
            cflags.append(f"-DRTS_FILTER_FAMILY={2 if cfg.family == 4 else 10}")
        if cfg.port is not None:
            cflags.append(f"-DRTS_FILTER_PORT={int(cfg.port)}")
        if cfg.netns_ino is not None:
            cflags.append(f"-DRTS_FILTER_NETNS={int(cfg.netns_ino)}")
        if cfg.count:
            cflags.append("-DRTS_COUNT")
        if cfg.lossprobe:
            cflags.append("-DRTS_KPROBE_TLP")
        if have_tp and (TRACEFS / "events/tcp/tcp_destroy_sock").exists():
            cflags.append("-DRTS_SOCK_GONE")

        src = str(BPF_DIR / "retranscope.bpf.c")
        self.bpf = None
        errors = []
        transports = ["perf"] if cfg.force_perf_buffer else ["ringbuf", "perf"]
        for transport in transports:
            flags = list(cflags)
            if transport == "ringbuf":
                # The ring buffer's size must be a power of two pages.
                pages = 1 << max(0, (cfg.buffer_mb * 256 - 1).bit_length())
                flags += ["-DRTS_USE_RINGBUF", f"-DRTS_RINGBUF_PAGES={pages}"]
            try:
                self.bpf = bcc.BPF(src_file=src.encode(), cflags=flags)
                self.info.transport = transport
                break
            except Exception as exc:  # bcc raises bare Exception on compile/load failure
                errors.append(f"{transport}: {exc}")
        if self.bpf is None:
            raise EnvironmentProblem(
                "the BPF program failed to load: "
                + "; ".join(errors)
                + " (check kernel headers: ./setup.sh)"
            )

        if have_tp:
            self.info.attach.append("tracepoint:tcp:tcp_retransmit_skb")
            self.info.attach.append("tracepoint:tcp:tcp_retransmit_synack")
        else:
            self._attach_kprobe("tcp_retransmit_skb", "rts_kprobe_retransmit", required=True)
        if cfg.lossprobe:
            self._attach_kprobe("tcp_send_loss_probe", "rts_kprobe_tlp", required=False)

        if self.info.transport == "ringbuf":
            self._open_ring()
        else:
            self.info.reader = "bcc"
            # 256 pages per CPU; lost samples are reported by the kernel through lost_cb.
            self.bpf["events"].open_perf_buffer(self._on_perf, page_cnt=256, lost_cb=self._on_lost)

    def _open_ring(self) -> None:
        """The direct reader where it is safe, else bcc's callback."""
        why = "asked for" if self.cfg.ring_reader == "bcc" else ringbuf.available()
        if why is None:
            try:
                self._ring = ringbuf.RingReader(self.bpf["events"].map_fd, RAW_DTYPE)
                self.info.reader = "mmap"
                return
            except (OSError, ValueError) as exc:
                why = str(exc)
        if self.cfg.ring_reader != "bcc":
            self.info.notices.append(f"reading the ring buffer through bcc ({why})")
        self.bpf["events"].open_ring_buffer(self._on_ring)
        self.info.reader = "bcc"

    def _attach_kprobe(self, function: str, fn_name: str, required: bool) -> None:
        try:
            self.bpf.attach_kprobe(event=function, fn_name=fn_name)
            self.info.attach.append(f"kprobe:{function}")
        except Exception as exc:
            msg = (
                f"kprobe on {function} unavailable ({str(exc).splitlines()[0]}); "
                "this kernel has no kprobes (CONFIG_KPROBES)"
            )
            if required:
                raise EnvironmentProblem(
                    msg + " and no tcp:tcp_retransmit_skb tracepoint: cannot trace retransmits here"
                ) from exc
            self.info.notices.append(
                msg + ": -l cannot show probe attempts that send new data; TLP "
                "retransmissions are still recorded with reason=tlp"
            )

    def _on_ring(self, _ctx, data, size):
        self._chunks.append(ct.string_at(data, EVENT_SIZE))
        return 0

    def _on_perf(self, _cpu, data, _size):
        # A perf sample may be padded past the struct: take exactly one event.
        self._chunks.append(ct.string_at(data, EVENT_SIZE))

    def _on_lost(self, lost):
        self._perf_lost += int(lost)

    def poll(self, timeout_ms: int = 100) -> np.ndarray:
        """Wait up to timeout_ms for events; return every event that arrived, decoded."""
        if self._ring is not None:
            # Let a batch gather: the kernel wakes us once the first record lands, and
            # the rest of a storm's records then wait in the ring (it holds seconds).
            gather = self.cfg.batch_ms / 1000 - (time.monotonic() - self._last_read)
            if gather > 0:
                time.sleep(gather)
            self._ring.wait(timeout_ms)
            self._last_read = time.monotonic()
            return self._ring.read()
        if self.info.transport == "ringbuf":
            self.bpf.ring_buffer_poll(timeout_ms)
        else:
            self.bpf.perf_buffer_poll(timeout_ms)
        return self._take()

    def drain(self) -> np.ndarray:
        """Everything still in the buffers, without waiting."""
        if self._ring is not None:
            return self._ring.read()
        if self.info.transport == "ringbuf":
            self.bpf.ring_buffer_consume()
        else:
            self.bpf.perf_buffer_poll(0)
        return self._take()

    def _take(self) -> np.ndarray:
        if not self._chunks:
            return np.empty(0, dtype=RAW_DTYPE)
        buf = b"".join(self._chunks)
        self._chunks.clear()
        return np.frombuffer(buf, dtype=RAW_DTYPE)

    def kernel_stats(self) -> tuple[int, int]:
        """(events the kernel produced after filtering, events it could not hand over)."""
        vals = self.bpf["stats"]
        lost = sum(int(v) for v in vals[ct.c_int(0)])
        seen = sum(int(v) for v in vals[ct.c_int(1)])
        return seen, lost + self._perf_lost

    def missed(self) -> int | None:
        """Events the kernel made but our programs never saw: runs skipped because another
        BPF program was active on the CPU (an interrupt arriving while one ran). Summed over
        the attached programs; None if the kernel does not report it."""
        total = 0
        for fn in self.bpf.funcs.values():
            n = prog_recursion_misses(fn.fd)
            if n is None:
                return None
            total += n
        return total

    def flow_counts(self) -> list[tuple[int, bytes, int, bytes, int, int]]:
        """-c: (family, saddr16, sport, daddr16, dport, count) per flow."""
        if not self.cfg.count:
            return []
        out = []
        for k, v in self.bpf["counts"].items():
            fam = 4 if k.family == 2 else 6
            out.append(
                (fam, bytes(k.saddr), int(k.sport), bytes(k.daddr), int(k.dport), int(v.value))
            )
        return out

    def detach(self) -> None:
        """Stop producing events but keep the maps and buffers: after this, a final drain()
        and kernel_stats() agree exactly (no event can slip in between them)."""
        if self.bpf is None:
            return
        for tp in list(self.bpf.tracepoint_fds):
            self.bpf.detach_tracepoint(tp)
        for ev in list(self.bpf.kprobe_fds):
            self.bpf.detach_kprobe_event(ev)

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
