"""A throw-away network lab: a sender and a receiver namespace, real TCP between them.

::

    rtt_ms == 0:   [sender_ns] sender_if ──veth── receiver_if [receiver_ns]
    rtt_ms  > 0:   [sender_ns] sender_if ──veth── [middle_ns: delay line] ──veth── receiver_if
    tap=True:      [sender_ns] ──veth── [middle_ns: line ─ tap_a ══ tap_b ─ line] ──veth── [rcv]
    router_mtu:    [sender_ns] ──veth── [middle_ns: IP router] ──veth (MTU router_mtu)── [rcv]

With ``tap=True`` the middle namespace holds two delay lines joined by a veth pair of its
own (``tap_ifs``): a capture on ``tap_a`` is a mid-path tap, with part of the one-way delay
before it and the rest after it (``tap_split``). With ``router_mtu`` the middle namespace is
an IP router (forwarding on, its own addresses) whose link towards the receiver has a
smaller MTU: a segment too big for it is dropped and answered with an ICMP "fragmentation
needed" / ICMPv6 "packet too big" (RFC 1191, RFC 8201), path MTU discovery as on the Internet.

Loss comes from nftables rules in an ``input`` chain of the lab's own table (``inet
retranscope``) in the receiver's namespace (or, for SYN-ACKs, the sender's): this kernel has
no netem (docs/kernel-notes.md). Round-trip times come from :mod:`retranscope.lab.delay`,
an AF_PACKET delay line in the middle namespace. The veth ends are created directly inside the lab's
namespaces (``ip link add ... netns``), so nothing of the lab ever exists in the root
namespace, and deleting the namespaces deletes the veths.

Every command runs through ``ip netns exec NS argv...`` (an argv list, never a shell). Note:
``ip netns exec`` also enters a new mount namespace with a fresh ``/sys`` that has **no
tracefs**; a BPF recorder started that way must mount tracefs itself (or run in the root
namespace: tracepoints see every namespace).

Cleanup is guaranteed three ways: ``__exit__`` (also when the body raises), an ``atexit``
hook, and SIGTERM/SIGHUP handlers (installed from the main thread, chaining to any previous
handler) for every lab still open. Each kills the process groups of the commands this lab
started (by the PIDs it recorded; every command is started in its own session) and deletes
the namespaces it created (after SIGKILLing anything still inside them, ``ip netns pids``).
Against a SIGKILL of the lab's own process nothing in-process can help: the lab's own
programs (delay line, traffic) ask for SIGTERM when their parent dies (``PR_SET_PDEATHSIG``)
and have overall deadlines, and :func:`cleanup_stale` (``python -m retranscope.lab.netns
cleanup-stale``) removes the namespaces left behind: only names of this lab's pattern whose
owning PID is gone.

Other things the lab sets up, and why: static neighbour entries (no ARP/ND before the first
SYN), RPS steering every lab interface to one CPU (veth must not reorder a flow, or RACK
fast-retransmits spuriously), ``tcp_no_metrics_save`` (no flow inherits the previous one's
ssthresh), and no IPv6 link-local addresses (quiet captures).
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_PREFIX_BASE = "rtsc"
#: Matches names made by the default prefix; group 1 is the PID of the owning process.
DEFAULT_STALE_PATTERN = r"rtsc(\d+)n\d+"
NFT_TABLE = "retranscope"  # "inet retranscope": the only table the lab ever touches
NFT_ONCE_SET = "once"
IFNAMSIZ = 15  # usable chars of an interface name (IFNAMSIZ 16 with the NUL)
CMD_TIMEOUT_S = 20.0
ADDR4 = {"sender": "10.77.0.1", "receiver": "10.77.0.2"}
ADDR6 = {"sender": "fd00:77::1", "receiver": "fd00:77::2"}
#: The router's own addresses (router_mtu): on its sender-side and receiver-side links.
#: Host routes (/32, /128) only: the endpoints keep their one subnet and reach each other
#: through static neighbour entries that point at the router's interfaces.
ROUTER_ADDR4 = ("10.77.0.254", "10.77.0.253")
ROUTER_ADDR6 = ("fd00:77::fe", "fd00:77::fd")
#: Frames the delay line may drop: TCP with payload, or pure ACKs (delay.py --drop).
LINE_DROP_WHAT = ("data", "ack")
_NAME_OK = re.compile(r"^[A-Za-z0-9_.-]+$")
# Counter names as nstat prints them: section prefix ("Tcp", "TcpExt", "Ip6"...) + field.
_COUNTER_FILES = ("/proc/net/snmp", "/proc/net/netstat", "/proc/net/snmp6")

_instances = itertools.count()
_live_labs: set[Lab] = set()
_live_lock = threading.RLock()  # re-entered by the signal handler
_atexit_registered = False
_signals_installed = False


class LabError(RuntimeError):
    """The lab could not be built or a command inside it failed."""


@dataclass(frozen=True)
class RuleHandle:
    """An nftables rule the lab added: its namespace and the kernel's rule handle."""

    ns: str
    handle: int
    expr: str


def _ifname(prefix: str, suffix: str) -> str:
    # Names need only be unique inside the lab's own namespaces, so truncating the prefix is
    # safe; keeping it makes a capture's interface name say which lab it came from.
    return prefix[: IFNAMSIZ - len(suffix)] + suffix


def _run(
    argv: list[str],
    timeout_s: float = CMD_TIMEOUT_S,
    check: bool = True,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, input=input_text
        )
    except subprocess.TimeoutExpired as err:
        raise LabError(f"{' '.join(argv)}: no answer after {timeout_s} s") from err
    except FileNotFoundError as err:
        raise LabError(f"{argv[0]}: not installed (need iproute2, nftables, ethtool)") from err
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _veth(a: str, a_ns: str, b: str, b_ns: str) -> None:
    """A veth pair made with each end already inside its namespace (an end that never
    sits in the root namespace cannot outlive the lab there)."""
    _run(["ip", "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns])


def _netns_list() -> list[str]:
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def cleanup_stale(prefix_pattern: str = DEFAULT_STALE_PATTERN) -> list[str]:
    """Delete namespaces left by crashed lab runs; return the names deleted.

    Only namespaces whose name is ``<prefix>-<role>`` with ``<prefix>`` fully matching
    ``prefix_pattern`` are considered. If the pattern has a group, group 1 is the PID of the
    process that made the lab, and the namespace is left alone while that PID lives (a
    parallel run). Processes still inside a stale namespace (``ip netns pids``) are killed
    first: a namespace is only gone once nothing holds it.
    """
    regex = re.compile(prefix_pattern)
    removed = []
    for name in _netns_list():
        prefix, sep, role = name.rpartition("-")
        if not sep or role not in ("snd", "rcv", "mid"):
            continue
        match = regex.fullmatch(prefix)
        if not match:
            continue
        if match.groups() and match.group(1):
            owner = int(match.group(1))
            if owner == os.getpid():
                with _live_lock:
                    if any(name in lab.namespaces for lab in _live_labs):
                        continue  # one of this process's open labs
            elif _pid_alive(owner):
                continue  # a parallel run
        pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        if _run(["ip", "netns", "del", name], check=False).returncode == 0:
            removed.append(name)
    return removed


def _cleanup_all_labs() -> None:
    with _live_lock:
        labs = list(_live_labs)
    for lab in labs:
        lab.close()


def _on_signal(signum: int, frame: Any) -> None:
    _cleanup_all_labs()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


_previous_handlers: dict[int, Any] = {}


def _install_handlers() -> None:
    global _atexit_registered, _signals_installed
    if not _atexit_registered:
        atexit.register(_cleanup_all_labs)
        _atexit_registered = True
    # signal.signal() works only in the main thread; a lab made elsewhere still has atexit.
    if not _signals_installed and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(signum)
            if previous == signal.SIG_IGN:
                continue
            _previous_handlers[signum] = previous
            signal.signal(signum, _on_signal)
        _signals_installed = True


class Lab:
    """Sender and receiver network namespaces joined by veth, optionally through a delay line.

    Parameters
    ----------
    prefix:
        Names of namespaces (``<prefix>-snd``, ``-rcv``, ``-mid``) and interfaces derive from
        it. The default ``rtsc<pid>n<k>`` is unique per process and per lab, so parallel runs
        never collide, and :func:`cleanup_stale` recognises it.
    rtt_ms:
        0: one veth pair. > 0: a middle namespace with the delay line forwarding each
        direction after ``rtt_ms / 2``.
    ipv6:
        Also configure IPv6 addresses (``nodad``, usable at once); False disables IPv6 on
        the lab's interfaces.
    tso:
        TSO/GSO/GRO on or off (``ethtool -K``) on both endpoint interfaces. Off, the sender
        emits MSS-sized segments, one per packet the receiver's rules see.
    python:
        Interpreter for the lab's own programs (default: this one).
    rx_cpu:
        CPU whose backlog receives every frame of the lab's interfaces (RPS), so that veth
        never reorders a flow; None leaves RPS off (reordering then happens now and then,
        and with it spurious fast retransmits).
    mtu:
        None keeps the veth default (1500); otherwise the MTU of every lab interface (the
        middle namespace's too), e.g. 1000 for a smaller MSS.
    reorder_pct, reorder_ms, jitter_ms:
        Disorder in the delay line (``rtt_ms > 0`` only), sender->receiver frames only:
        ``reorder_pct`` % of them held ``reorder_ms`` longer than the rest, and/or every one
        delayed by an extra uniform [0, ``jitter_ms``] ms (see :mod:`retranscope.lab.delay`).
        ``disorder_seed`` seeds the choice.
    sysctls:
        ``(role, key, value)`` triples, role ``"sender"`` or ``"receiver"``: per-namespace
        ``net.*`` sysctls set while the lab is built (before anything runs in it), e.g.
        ``("sender", "net.ipv4.tcp_sack", "0")``.
    tap, tap_split:
        A mid-path tap (``rtt_ms > 0``): two delay lines in the middle namespace joined by
        the veth pair ``tap_ifs``; the sender-side line delays each direction by
        ``tap_split`` of the one-way delay, the receiver-side line by the rest. Disorder
        (reorder/jitter) happens in the sender-side line, before the tap.
    line_drops:
        ``(direction, what, pct)`` triples: loss in the delay line, seeded by
        ``disorder_seed``. ``direction`` ``"to_receiver"`` or ``"to_sender"``, ``what``
        ``"data"`` (TCP with payload, SYNs spared) or ``"ack"`` (pure ACKs). With ``tap``
        each direction loses its frames in the line *before* the tap (so the tap never sees
        them); nftables rules at the endpoints drop after it.
    router_mtu:
        The middle namespace is an IP router (no delay line, ``rtt_ms`` must be 0) whose link
        to the receiver has this MTU (>= 1280 with IPv6).

    Attributes: ``sender_ns``, ``receiver_ns``, ``middle_ns`` (None without delay or
    router), ``sender_if``, ``receiver_if``, ``middle_ifs``, ``tap_ifs``,
    ``sender_addr4/6``, ``receiver_addr4/6``.
    """

    def __init__(
        self,
        prefix: str | None = None,
        rtt_ms: float = 0.0,
        ipv6: bool = True,
        tso: bool = True,
        python: str | None = None,
        rx_cpu: int | None = 0,
        mtu: int | None = None,
        reorder_pct: float = 0.0,
        reorder_ms: float = 0.0,
        jitter_ms: float = 0.0,
        disorder_seed: int | None = None,
        sysctls: tuple[tuple[str, str, str], ...] = (),
        tap: bool = False,
        tap_split: float = 0.5,
        line_drops: tuple[tuple[str, str, float], ...] = (),
        router_mtu: int | None = None,
    ):
        if prefix is None:
            prefix = f"{DEFAULT_PREFIX_BASE}{os.getpid()}n{next(_instances)}"
        if not _NAME_OK.match(prefix):
            raise ValueError(f"prefix {prefix!r}: use letters, digits, '_', '.', '-' only")
        if rtt_ms < 0:
            raise ValueError(f"rtt_ms={rtt_ms}: must be >= 0")
        if mtu is not None and not 576 <= mtu <= 65535:
            raise ValueError(f"mtu={mtu}: want 576-65535 (IPv6 needs >= 1280)")
        if mtu is not None and ipv6 and mtu < 1280:
            raise ValueError(f"mtu={mtu}: IPv6 needs >= 1280 (or ipv6=False)")
        if reorder_pct < 0 or reorder_pct > 100 or reorder_ms < 0 or jitter_ms < 0:
            raise ValueError("reorder_pct must be 0-100; reorder_ms and jitter_ms >= 0")
        if (reorder_pct or jitter_ms) and rtt_ms <= 0:
            raise ValueError("reordering and jitter need the delay line (rtt_ms > 0)")
        for role, key, _value in sysctls:
            if role not in ("sender", "receiver"):
                raise ValueError(f"sysctl {key}: role {role!r}, want 'sender' or 'receiver'")
        if (tap or line_drops) and rtt_ms <= 0:
            raise ValueError("a mid-path tap and delay-line loss need the delay line (rtt_ms > 0)")
        if not 0.0 < tap_split < 1.0:
            raise ValueError(f"tap_split={tap_split}: want a fraction strictly between 0 and 1")
        for direction, what, pct in line_drops:
            if direction not in ("to_receiver", "to_sender") or what not in LINE_DROP_WHAT:
                raise ValueError(
                    f"line drop {(direction, what, pct)}: want direction "
                    f"to_receiver/to_sender and what in {LINE_DROP_WHAT}"
                )
            if not 0 < pct <= 100:
                raise ValueError(f"line drop {(direction, what, pct)}: pct must be 0-100")
        if router_mtu is not None:
            if rtt_ms > 0:
                raise ValueError("router_mtu: the router has no delay line (rtt_ms must be 0)")
            if not 576 <= router_mtu <= 65535 or (ipv6 and router_mtu < 1280):
                raise ValueError(f"router_mtu={router_mtu}: want 576-65535 (IPv6: >= 1280)")
        n_cpus = os.cpu_count() or 1
        if rx_cpu is not None and not 0 <= rx_cpu < n_cpus:
            raise ValueError(f"rx_cpu={rx_cpu}: this machine has CPUs 0-{n_cpus - 1}")
        self.prefix = prefix
        self.rtt_ms = float(rtt_ms)
        self.ipv6 = ipv6
        self.tso = tso
        self.python_exe = python or sys.executable
        self.rx_cpu = rx_cpu
        self.mtu = mtu
        self.reorder_pct = float(reorder_pct)
        self.reorder_ms = float(reorder_ms)
        self.jitter_ms = float(jitter_ms)
        self.disorder_seed = disorder_seed
        self.sysctls = tuple(sysctls)
        self.tap = tap
        self.tap_split = float(tap_split)
        self.line_drops = tuple(line_drops)
        self.router_mtu = router_mtu
        self.sender_ns = f"{prefix}-snd"
        self.receiver_ns = f"{prefix}-rcv"
        has_middle = rtt_ms > 0 or router_mtu is not None
        self.middle_ns: str | None = f"{prefix}-mid" if has_middle else None
        self.sender_if = _ifname(prefix, "s")
        self.receiver_if = _ifname(prefix, "r")
        self.middle_ifs = (_ifname(prefix, "ms"), _ifname(prefix, "mr"))
        self.tap_ifs = (_ifname(prefix, "ta"), _ifname(prefix, "tb"))
        self.sender_addr4, self.receiver_addr4 = ADDR4["sender"], ADDR4["receiver"]
        self.sender_addr6, self.receiver_addr6 = ADDR6["sender"], ADDR6["receiver"]
        self.delay_proc: subprocess.Popen[str] | None = None
        #: Every delay line started (two with a tap): delay_stats() sums their counters.
        self.delay_procs: list[subprocess.Popen[str]] = []
        self._created_ns: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._rules: list[RuleHandle] = []
        self._closed = False
        self._started = False

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def namespaces(self) -> list[str]:
        return [ns for ns in (self.sender_ns, self.receiver_ns, self.middle_ns) if ns]

    def start(self) -> Lab:
        """Build the namespaces, links, addresses, rules table and delay line."""
        if self._started:
            raise LabError("lab already started")
        self._started = True
        _install_handlers()
        with _live_lock:
            _live_labs.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        existing = set(_netns_list())
        clash = [ns for ns in self.namespaces if ns in existing]
        if clash:
            raise LabError(
                f"namespaces {clash} exist already: a crashed run? "
                "retranscope.lab.netns.cleanup_stale() removes dead runs' leftovers"
            )
        for ns in self.namespaces:
            _run(["ip", "netns", "add", ns])
            self._created_ns.append(ns)
            self._ip(ns, "link", "set", "lo", "up")
        if self.middle_ns is None:
            _veth(self.sender_if, self.sender_ns, self.receiver_if, self.receiver_ns)
        else:
            self._build_middle(self.middle_ns)
        for role, ns, ifname in (
            ("sender", self.sender_ns, self.sender_if),
            ("receiver", self.receiver_ns, self.receiver_if),
        ):
            self._ip(ns, "addr", "add", f"{ADDR4[role]}/24", "dev", ifname)
            if self.ipv6:
                # No link-local address: nothing to run DAD or router solicitation for, so
                # captures hold little besides the lab's own flows (neighbours are static).
                self._ip(ns, "link", "set", ifname, "addrgenmode", "none")
                self.sysctl(ns, f"net.ipv6.conf.{ifname}.accept_ra", "0")
                self._ip(ns, "-6", "addr", "add", f"{ADDR6[role]}/64", "dev", ifname, "nodad")
            else:
                self.sysctl(ns, f"net.ipv6.conf.{ifname}.disable_ipv6", "1")
            onoff = "on" if self.tso else "off"
            self._ethtool(ns, ifname, tso=onoff, gso=onoff, gro=onoff)
            # tcp_init_metrics() would seed a new flow's ssthresh and RTT from the previous
            # flow to the same host: scenarios must not depend on what ran before them.
            self.sysctl(ns, "net.ipv4.tcp_no_metrics_save", "1")
            for where, key, value in self.sysctls:
                if where == role:
                    self.sysctl(ns, key, value)
            if self.mtu is not None:
                self._ip(ns, "link", "set", ifname, "mtu", str(self.mtu))
            self._ip(ns, "link", "set", ifname, "up")
            self._nft_setup(ns)
        if self.router_mtu is not None:
            self._route_middle()
        self._static_neighbours()
        self._steer_rx()
        if self.middle_ns is not None and self.router_mtu is None:
            self._start_delay_line()

    def _build_middle(self, mid: str) -> None:
        mid_s, mid_r = self.middle_ifs
        router = self.router_mtu is not None
        if not (router and self.ipv6):
            # A wire, not a host: no IPv6 link-local, no router solicitations.
            for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
                self.sysctl(mid, key, "1")
        _veth(self.sender_if, self.sender_ns, mid_s, mid)
        _veth(mid_r, mid, self.receiver_if, self.receiver_ns)
        ifnames = list(self.middle_ifs)
        if self.tap:
            tap_a, tap_b = self.tap_ifs
            _run(["ip", "-n", mid, "link", "add", tap_a, "type", "veth", "peer", "name", tap_b])
            ifnames += [tap_a, tap_b]
        for ifname in ifnames:
            # GRO would merge frames before the packet socket sees them; keep them as sent.
            self._ethtool(mid, ifname, gro="off")
            if router and self.ipv6:
                # Only the global address the ICMPv6 errors come from: no link-local, so
                # no DAD or MLD traffic in the captures.
                self._ip(mid, "link", "set", ifname, "addrgenmode", "none")
                self.sysctl(mid, f"net.ipv6.conf.{ifname}.accept_ra", "0")
            mtu = self.router_mtu if router and ifname == mid_r else self.mtu
            if mtu is not None:
                self._ip(mid, "link", "set", ifname, "mtu", str(mtu))
            self._ip(mid, "link", "set", ifname, "up")

    def _route_middle(self) -> None:
        """The middle namespace as a router: forwarding on, an address and a host route
        per side, no ICMP rate limit (every too-big segment gets its answer, as the sender's
        PMTU handling expects: tcp_v4_err / tcp_v6_err)."""
        mid = self.middle_ns
        assert mid is not None
        self.sysctl(mid, "net.ipv4.ip_forward", "1")
        self.sysctl(mid, "net.ipv4.icmp_ratelimit", "0")
        self.sysctl(mid, "net.ipv4.icmp_msgs_per_sec", "100000")
        for ifname, own4, peer in zip(self.middle_ifs, ROUTER_ADDR4, ("sender", "receiver")):
            self._ip(mid, "addr", "add", f"{own4}/32", "dev", ifname)
            self._ip(mid, "route", "add", f"{ADDR4[peer]}/32", "dev", ifname)
        if not self.ipv6:
            return
        self.sysctl(mid, "net.ipv6.conf.all.forwarding", "1")
        self.sysctl(mid, "net.ipv6.icmp.ratelimit", "0")
        for ifname, own6, peer in zip(self.middle_ifs, ROUTER_ADDR6, ("sender", "receiver")):
            self._ip(mid, "-6", "addr", "add", f"{own6}/128", "dev", ifname, "nodad")
            self._ip(mid, "-6", "route", "add", f"{ADDR6[peer]}/128", "dev", ifname)

    def close(self) -> None:
        """Kill every process the lab started, then delete its namespaces. Idempotent.

        Work is popped off the lists as it is done, so a close() interrupted (by a signal
        whose handler closes all labs, or by an exception) is finished by the next call.
        """
        self._closed = True  # no new processes from here on
        while self._procs:
            _kill_group(self._procs.pop())
        self.delay_proc = None
        self.delay_procs = []
        while self._created_ns:
            ns = self._created_ns[-1]
            # Anything still inside (a child of a child) would keep the namespace alive.
            pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            res = _run(["ip", "netns", "del", ns], check=False)
            if res.returncode != 0 and ns in _netns_list():
                log.warning("lab cleanup: ip netns del %s: %s", ns, res.stderr.strip())
            self._created_ns.remove(ns)
        self._rules.clear()
        with _live_lock:
            _live_labs.discard(self)

    # --- commands in namespaces -------------------------------------------------------------

    def _check_ns(self, ns: str) -> None:
        if ns not in self._created_ns:
            raise LabError(f"namespace {ns!r} is not one this lab created ({self._created_ns})")

    def _ip(self, ns: str, *args: str) -> None:
        self._check_ns(ns)
        _run(["ip", "-n", ns, *args])

    def _ethtool(self, ns: str, ifname: str, **features: str) -> None:
        argv = ["ethtool", "-K", ifname]
        for feature, onoff in features.items():
            argv += [feature, onoff]
        self.run(ns, argv)

    def run(
        self, ns: str, argv: list[str], timeout_s: float = CMD_TIMEOUT_S, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion in namespace ``ns``; raise LabError on failure."""
        self._check_ns(ns)
        return _run(["ip", "netns", "exec", ns, *argv], timeout_s=timeout_s, check=check)

    def popen(self, ns: str, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in namespace ``ns`` (``ip netns exec``, which execs in place, so the
        PID is the command's). It gets its own session, and ``close()`` kills that process
        group. Keyword arguments go to :class:`subprocess.Popen`.

        The command sees the namespace's own ``/sys`` (no tracefs mounted there): a BPF
        recorder started this way must mount tracefs itself."""
        self._check_ns(ns)
        if self._closed:
            raise LabError("lab is closed")
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a list of arguments, not a shell string")
        kw.setdefault("start_new_session", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self._procs.append(proc)
        return proc

    def pymodule(self, ns: str, module: str, args: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``python -m module args...`` in namespace ``ns`` (stdout/stderr piped, text)."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        return self.popen(ns, [self.python_exe, "-m", module, *args], **kw)

    def sysctl(self, ns: str, key: str, value: str | int) -> None:
        """Set a ``net.*`` sysctl inside ``ns`` (per-namespace keys only: never the host's)."""
        if not key.startswith("net.") or not re.fullmatch(r"[A-Za-z0-9_.\-/]+", key):
            raise ValueError(f"sysctl {key!r}: only per-namespace net.* keys may be set")
        self.run(ns, ["sysctl", "-q", "-w", f"{key}={value}"])

    def tcp_counters(self, ns: str) -> dict[str, int]:
        """The namespace's SNMP/netstat counters, named as ``nstat`` names them
        (``TcpRetransSegs``, ``TcpExtTCPLossProbes``...). They are per network namespace,
        so in a lab they count exactly the lab's own flows."""
        out = self.run(ns, ["cat", *_COUNTER_FILES]).stdout
        return parse_counters(out)

    # --- addresses --------------------------------------------------------------------------

    def sender_addr(self, family: int = 4) -> str:
        return self._addr("sender", family)

    def receiver_addr(self, family: int = 4) -> str:
        return self._addr("receiver", family)

    def _addr(self, role: str, family: int) -> str:
        if family == 4:
            return ADDR4[role]
        if family == 6:
            if not self.ipv6:
                raise LabError("lab built with ipv6=False has no IPv6 address")
            return ADDR6[role]
        raise ValueError(f"family={family}: want 4 or 6")

    def _mac(self, ns: str, ifname: str) -> str:
        info = json.loads(_run(["ip", "-n", ns, "-j", "link", "show", "dev", ifname]).stdout)
        return str(info[0]["address"])

    def _static_neighbours(self) -> None:
        # Permanent neighbour entries: no ARP/ND exchange delays the first SYN (whose timing
        # the RTT and SYN-loss scenarios depend on) or clutters the captures.
        macs = {
            "sender": self._mac(self.sender_ns, self.sender_if),
            "receiver": self._mac(self.receiver_ns, self.receiver_if),
        }
        # Through a router each endpoint's next hop is the router's interface on its link.
        next_hop = dict(macs)
        if self.router_mtu is not None:
            assert self.middle_ns is not None
            next_hop = {
                "receiver": self._mac(self.middle_ns, self.middle_ifs[0]),
                "sender": self._mac(self.middle_ns, self.middle_ifs[1]),
            }
            for ifname, role in zip(self.middle_ifs, ("sender", "receiver")):
                self._neigh(self.middle_ns, ifname, role, macs[role])
        for ns, ifname, peer_role in (
            (self.sender_ns, self.sender_if, "receiver"),
            (self.receiver_ns, self.receiver_if, "sender"),
        ):
            self._neigh(ns, ifname, peer_role, next_hop[peer_role])

    def _neigh(self, ns: str, ifname: str, peer_role: str, mac: str) -> None:
        self._ip(
            ns,
            "neigh",
            "replace",
            ADDR4[peer_role],
            "lladdr",
            mac,
            "dev",
            ifname,
            "nud",
            "permanent",
        )
        if self.ipv6:
            self._ip(
                ns,
                "-6",
                "neigh",
                "replace",
                ADDR6[peer_role],
                "lladdr",
                mac,
                "dev",
                ifname,
                "nud",
                "permanent",
            )

    def _steer_rx(self) -> None:
        # veth delivers through netif_rx() into the backlog of whichever CPU sent the frame;
        # a sender that migrates between CPUs then has its segments processed out of order
        # by two CPUs, and RACK (RFC 8985) answers with spurious fast retransmits (seen as
        # D-SACKs here). RPS steers every frame of an interface to one CPU's backlog
        # (get_rps_cpu), which keeps the wire order.
        if self.rx_cpu is None:
            return
        mask = f"{1 << self.rx_cpu:x}"
        ends = [(self.sender_ns, self.sender_if), (self.receiver_ns, self.receiver_if)]
        if self.middle_ns is not None:
            ends += [(self.middle_ns, ifname) for ifname in self.middle_ifs]
            if self.tap:
                ends += [(self.middle_ns, ifname) for ifname in self.tap_ifs]
        for ns, ifname in ends:
            path = f"/sys/class/net/{ifname}/queues/rx-0/rps_cpus"
            self._check_ns(ns)
            # ip netns exec mounts the namespace's own /sys, where the interface is visible.
            _run(["ip", "netns", "exec", ns, "tee", path], input_text=mask)

    # --- delay line -------------------------------------------------------------------------

    def _start_delay_line(self) -> None:
        """One delay line between the middle interfaces, or (``tap``) one on each side of
        the tap's veth pair. Direction ``a`` of every line is sender -> receiver."""
        assert self.middle_ns is not None
        one_way_ms = self.rtt_ms / 2.0
        if not self.tap:
            lines = [(self.middle_ifs[0], self.middle_ifs[1], one_way_ms, True, ("a", "b"))]
        else:
            before = one_way_ms * self.tap_split
            # Each direction loses frames in the line it crosses before the tap.
            lines = [
                (self.middle_ifs[0], self.tap_ifs[0], before, True, ("a",)),
                (self.tap_ifs[1], self.middle_ifs[1], one_way_ms - before, False, ("b",)),
            ]
        for k, (if_a, if_b, delay_ms, disorder, drop_dirs) in enumerate(lines):
            args = [if_a, if_b, "--delay-ms", f"{delay_ms:g}", "--realtime"]
            if disorder and self.reorder_pct:
                args += [
                    "--reorder-pct",
                    f"{self.reorder_pct:g}",
                    "--reorder-ms",
                    f"{self.reorder_ms:g}",
                ]
            if disorder and self.jitter_ms:
                args += ["--jitter-ms", f"{self.jitter_ms:g}"]
            for direction, what, pct in self.line_drops:
                code = "a" if direction == "to_receiver" else "b"
                if code in drop_dirs:
                    args += ["--drop", f"{code}:{what}:{pct:g}"]
            if self.disorder_seed is not None:
                args += ["--seed", str(self.disorder_seed + k)]
            proc = self.pymodule(self.middle_ns, "retranscope.lab.delay", args)
            self.delay_procs.append(proc)
            if self.delay_proc is None:
                self.delay_proc = proc
            line = read_first_line(proc, timeout_s=10.0)
            if line.strip() != "READY":
                raise LabError(f"delay line did not start: {line!r} {stderr_if_exited(proc)}")

    def delay_stats(self) -> dict[str, int] | None:
        """Stop the delay line(s) and return their counters, summed (None without one).
        With a tap a frame crosses both lines, so ``arrivals``/``forwarded`` count it twice;
        ``dropped_*`` and ``held_back`` happen in one line only and stay exact."""
        if not self.delay_procs:
            return None
        total: dict[str, int] = {}
        for proc in self.delay_procs:
            for key, value in _stop_delay_line(proc).items():
                total[key] = total.get(key, 0) + value
        return total

    # --- nftables ---------------------------------------------------------------------------

    def _nft_setup(self, ns: str) -> None:
        # The "once" set lets a rule drop only the first matching packet of each client port:
        #   tcp flags syn tcp sport != @once add @once { tcp sport } drop
        ruleset = (
            f"table inet {NFT_TABLE} {{\n"
            f"  set {NFT_ONCE_SET} {{ type inet_service; flags dynamic,timeout; timeout 5m; }}\n"
            "  chain input { type filter hook input priority filter; policy accept; }\n"
            "}\n"
        )
        self._check_ns(ns)
        _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input_text=ruleset)

    def add_rule(self, nft_expr: str, ns: str | None = None) -> RuleHandle:
        """Append ``nft_expr`` to the lab's input chain in ``ns`` (default: the receiver's),
        e.g. ``tcp dport 5001 ct original packets 6 drop``. Returns its handle."""
        ns = ns or self.receiver_ns
        self._check_ns(ns)
        if ns == self.middle_ns:
            raise LabError("rules go in the sender's or receiver's namespace, not the middle")
        argv = ["nft", "--echo", "--handle", "add", "rule", "inet", NFT_TABLE, "input", nft_expr]
        out = self.run(ns, argv).stdout
        match = re.search(r"# handle (\d+)", out)
        if not match:
            raise LabError(f"nft gave no handle for rule {nft_expr!r}: {out!r}")
        rule = RuleHandle(ns=ns, handle=int(match.group(1)), expr=nft_expr)
        self._rules.append(rule)
        return rule

    def remove_rule(self, rule: RuleHandle) -> None:
        self.run(
            rule.ns,
            ["nft", "delete", "rule", "inet", NFT_TABLE, "input", "handle", str(rule.handle)],
        )
        self._rules = [r for r in self._rules if r != rule]

    def clear_rules(self, ns: str | None = None) -> None:
        """Remove every rule (and empty the ``once`` set) in ``ns``, or in both endpoints."""
        for target in [ns] if ns else [self.sender_ns, self.receiver_ns]:
            self.run(target, ["nft", "flush", "chain", "inet", NFT_TABLE, "input"])
            self.run(target, ["nft", "flush", "set", "inet", NFT_TABLE, NFT_ONCE_SET])
        self._rules = [r for r in self._rules if ns is not None and r.ns != ns]

    @property
    def rules(self) -> list[RuleHandle]:
        return list(self._rules)


def parse_counters(text: str) -> dict[str, int]:
    """Parse /proc/net/{snmp,netstat} (header line + value line per section) and snmp6
    (``name value`` lines) into nstat-style names: ``TcpExtTCPLossProbes``."""
    counters: dict[str, int] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if ":" in line.split(" ", 1)[0] and i + 1 < len(lines):
            head, _, names = line.partition(":")
            head2, _, values = lines[i + 1].partition(":")
            if head == head2:
                for name, value in zip(names.split(), values.split()):
                    try:
                        counters[head + name] = int(value)
                    except ValueError:
                        pass
                i += 2
                continue
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            counters[parts[0]] = int(parts[1])
        i += 1
    return counters


def read_first_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """First stdout line of ``proc``, or "" if it exits or stays silent for ``timeout_s``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while True:
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            return ""
        ready, _, _ = select.select([proc.stdout], [], [], left_s)
        if ready:
            return proc.stdout.readline()


def stderr_if_exited(proc: subprocess.Popen[str]) -> str:
    """The stderr of a process that has exited (for error messages), else ""."""
    if proc.poll() is None or proc.stderr is None:
        return ""
    try:
        return proc.stderr.read().strip()[-2000:]
    except (OSError, ValueError):
        return ""


def _stop_delay_line(proc: subprocess.Popen[str]) -> dict[str, int]:
    """SIGTERM a delay line and read the counters it prints on stderr as it stops."""
    if proc.poll() is None:
        proc.terminate()
    try:
        _, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    except ValueError:  # streams already closed by a previous call
        return {}
    for line in reversed((err or "").splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    return {}


def _kill_group(proc: subprocess.Popen[Any], grace_s: float = 2.0) -> None:
    """SIGTERM the process group led by ``proc`` (its own session), then SIGKILL it."""
    if proc.poll() is None:
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
    try:
        proc.wait(timeout=1)
    except subprocess.TimeoutExpired:
        pass


def main(argv: list[str] | None = None) -> int:
    """``python -m retranscope.lab.netns cleanup-stale``: remove dead runs' namespaces."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m retranscope.lab.netns")
    sub = parser.add_subparsers(dest="cmd", required=True)
    stale = sub.add_parser("cleanup-stale", help="delete namespaces of crashed lab runs")
    stale.add_argument(
        "--pattern",
        default=DEFAULT_STALE_PATTERN,
        help="regex for the prefix; group 1 = owner PID (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    for name in cleanup_stale(args.pattern):
        print(f"deleted {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
