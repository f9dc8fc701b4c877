"""Named scenarios that make the kernel retransmit in a known way, and their runner.

A scenario is data (:class:`Scenario`): the lab it needs (family, TSO, RTT), the nftables
rules that make the loss (and when each is removed), the traffic, and the kernel reasons it
must produce. Reasons are the recorder's vocabulary:

=================  ===============================================  ==========================
reason             kernel path                                      counter (retransmitting ns)
=================  ===============================================  ==========================
``fast``           ``tcp_xmit_retransmit_queue``, CA state Recovery  ``TcpExtTCPFastRetrans``
``tlp``            ``tcp_send_loss_probe`` (RFC 8985)               ``TcpExtTCPLossProbes``
``rto``            ``tcp_retransmit_timer``                         ``TcpExtTCPTimeouts``
``rto_recovery``   ``tcp_xmit_retransmit_queue``, CA state Loss     ``TcpExtTCPSlowStartRetrans``
``syn``            ``tcp_retransmit_timer`` in SYN_SENT             ``TcpExtTCPSynRetrans``
``synack``         ``tcp_rtx_synack``                               ``TcpExtTCPSynRetrans``
=================  ===============================================  ==========================

Besides loss rules a scenario can shape the lab: RTT (the delay line), reordering and jitter
in the delay line (``reorder_pct``/``reorder_ms``, ``jitter_ms``), the MTU, per-namespace
sysctls (SACK or timestamps off, autocorking), extra nftables sets for rules that remember
packets (``nft_sets``: drop a segment *and* its first retransmission), and which IPv6 /
TSO-off twins it has (``twins``). And where the capture is taken (``capture``:
lab/capture.py; the recorder stays on the retransmitting host), loss in the delay line
(``line_drops``: in the network, before a tap), and an IP router whose far link has a
smaller MTU (``router_mtu``: path MTU discovery). docs/lab.md lists the scenarios.

The client always runs in ``lab.sender_ns`` and the server in ``lab.receiver_ns``;
``scenario.retransmitter`` says which side retransmits (``"server"`` for ``synack_drop``
and ``server_reply_loss``), and :meth:`Scenario.retransmitting_ns` maps it to the namespace whose
counters are the ground truth.

Run one from a shell::

    python -m retranscope.lab.scenarios fast_nth      # builds a lab, prints counters
    python -m retranscope.lab.scenarios --list
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from retranscope.lab.capture import CapturePoint
from retranscope.lab.netns import (
    NFT_TABLE,
    Lab,
    LabError,
    RuleHandle,
    read_first_line,
    stderr_if_exited,
)
from retranscope.lab.traffic import REQ_HDR

REASONS = ("fast", "tlp", "rto", "rto_recovery", "syn", "synack")
#: Twins a base scenario may have (see :func:`variants`).
TWINS = ("v6", "notso", "v6_notso")
#: The per-namespace counter that each reason moves (see the table above).
REASON_COUNTERS: Mapping[str, str] = {
    "fast": "TcpExtTCPFastRetrans",
    "tlp": "TcpExtTCPLossProbes",
    "rto": "TcpExtTCPTimeouts",
    "rto_recovery": "TcpExtTCPSlowStartRetrans",
    "syn": "TcpExtTCPSynRetrans",
    "synack": "TcpExtTCPSynRetrans",
}
#: Other counters a reason moves as well: a SYN retransmission is timer-driven
#: (tcp_retransmit_timer counts TCPTimeouts); a SYN-ACK one from the request timer is
#: counted by tcp_syn_ack_timeout.
ALSO_MOVES: Mapping[str, tuple[str, ...]] = {
    "syn": ("TcpExtTCPTimeouts",),
    "synack": ("TcpExtTCPTimeouts",),
}
#: Counters worth reporting for every scenario.
WATCHED_COUNTERS = (
    "TcpRetransSegs",
    "TcpExtTCPLossProbes",
    "TcpExtTCPLossProbeRecovery",
    "TcpExtTCPFastRetrans",
    "TcpExtTCPTimeouts",
    "TcpExtTCPSlowStartRetrans",
    "TcpExtTCPSynRetrans",
    "TcpExtTCPDSACKRecv",
    "TcpExtTCPSpuriousRtxHostQueues",
    # How recovery went (reported, not checked by Scenario.check):
    "TcpExtTCPSackRecovery",
    "TcpExtTCPRenoRecovery",
    "TcpExtTCPLostRetransmit",
    "TcpExtTCPSpuriousRTOs",
    "TcpExtTCPDSACKUndo",
    "TcpExtTCPLossUndo",
)
TRAFFIC_MODULE = "retranscope.lab.traffic"
SERVER_READY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Rule:
    """An nftables rule for the lab's input chain. ``{port}`` in ``expr`` becomes the port.

    ``where`` is ``"receiver"`` (the server's namespace: drops client→server packets) or
    ``"sender"`` (the client's: drops server→client packets, e.g. SYN-ACKs).
    ``remove_after_s`` counts from the client's start; None keeps it to the end.
    """

    expr: str
    where: str = "receiver"
    remove_after_s: float | None = None

    def render(self, port: int) -> str:
        # Not str.format: nft set syntax uses braces ("add @once { tcp sport }").
        return self.expr.replace("{port}", str(port))


@dataclass(frozen=True)
class Traffic:
    """What runs: one server, one client program (``bulk``/``requests``/``connect``/
    ``trickle``)."""

    client: str
    client_args: tuple[str, ...] = ()
    server_mode: str = "sink"
    server_args: tuple[str, ...] = ()
    timeout_s: float = 15.0

    @property
    def conns(self) -> int:
        """Connections the client makes (``bulk --conns K``; otherwise one)."""
        args = list(self.client_args)
        return int(args[args.index("--conns") + 1]) if "--conns" in args else 1


@dataclass(frozen=True)
class Scenario:
    """One reproducible way to make the kernel retransmit.

    ``expected``: reasons that must appear (their counters move in the retransmitting
    namespace). ``possible``: reasons that may also appear (random loss). Any other reason's
    counter must stay still. ``exact``: counters whose delta is deterministic, as measured.
    """

    name: str
    description: str
    traffic: Traffic
    expected: frozenset[str]
    possible: frozenset[str] = frozenset()
    rules: tuple[Rule, ...] = ()
    family: int = 4
    tso: bool = True
    rtt_ms: float = 0.0
    retransmitter: str = "client"
    port: int = 5001
    exact: Mapping[str, int] = field(default_factory=dict)
    exact_notso: Mapping[str, int] = field(default_factory=dict)
    #: Per-namespace sysctls, (where, key, value), set before the traffic starts. The lab
    #: made by :meth:`lab` has them from the start (so a recorder started in it sees them);
    #: run_scenario sets them again on any lab, and restores the old values after.
    sysctls: tuple[tuple[str, str, str], ...] = ()
    #: MTU of every lab interface (None: the veth default, 1500).
    mtu: int | None = None
    #: Disorder in the delay line (``rtt_ms > 0``), sender->receiver frames only: this share
    #: (%) of frames held ``reorder_ms`` longer than the rest; extra uniform [0, jitter_ms].
    reorder_pct: float = 0.0
    reorder_ms: float = 0.0
    jitter_ms: float = 0.0
    #: Extra nftables sets the rules use, (where, name, spec), e.g.
    #: ``("receiver", "lost", "typeof tcp sequence; flags dynamic;")``; made before the
    #: rules go in and deleted after they go.
    nft_sets: tuple[tuple[str, str, str], ...] = ()
    #: Which twins :func:`variants` derives from this base scenario.
    twins: tuple[str, ...] = ("v6", "notso", "v6_notso")
    #: Where the capture is taken (lab/capture.py); the recorder stays on the
    #: retransmitting host whatever this says. ``where="mid"`` builds the lab with a tap.
    capture: CapturePoint = CapturePoint()
    #: Share of the one-way delay before the mid-path tap.
    tap_split: float = 0.5
    #: Loss in the delay line, (direction, what, pct): see Lab(line_drops=...).
    line_drops: tuple[tuple[str, str, float], ...] = ()
    #: An IP router in the middle whose link to the server has this MTU (PMTU discovery).
    router_mtu: int | None = None
    #: Seed of the delay line's disorder and loss (None: a new pattern every run).
    disorder_seed: int | None = None

    def __post_init__(self) -> None:
        unknown = (self.expected | self.possible) - set(REASONS)
        if unknown:
            raise ValueError(f"{self.name}: unknown reasons {sorted(unknown)}")
        if self.retransmitter not in ("client", "server"):
            raise ValueError(f"{self.name}: retransmitter must be 'client' or 'server'")
        unknown_twins = set(self.twins) - set(TWINS)
        if unknown_twins:
            raise ValueError(f"{self.name}: unknown twins {sorted(unknown_twins)}")
        if self.capture.where == "mid" and self.rtt_ms <= 0:
            raise ValueError(f"{self.name}: a mid-path capture needs the delay line (rtt_ms)")

    def retransmitting_ns(self, lab: Lab) -> str:
        return lab.sender_ns if self.retransmitter == "client" else lab.receiver_ns

    def lab(self, **kw: Any) -> Lab:
        """A Lab built the way this scenario needs (not started)."""
        kw.setdefault("disorder_seed", self.disorder_seed)
        return Lab(
            rtt_ms=self.rtt_ms,
            tso=self.tso,
            ipv6=self.family == 6,
            mtu=self.mtu,
            reorder_pct=self.reorder_pct,
            reorder_ms=self.reorder_ms,
            jitter_ms=self.jitter_ms,
            sysctls=self.sysctls,
            tap=self.capture.where == "mid",
            tap_split=self.tap_split,
            line_drops=self.line_drops,
            router_mtu=self.router_mtu,
            **kw,
        )

    def exact_counters(self) -> dict[str, int]:
        return {**self.exact, **({} if self.tso else self.exact_notso)}

    def check(self, deltas: Mapping[str, int]) -> list[str]:
        """What in these counter deltas (of the retransmitting namespace) contradicts the
        scenario; empty if nothing does.

        Retransmissions the receiver reported as needless (D-SACK, RFC 2883) are tolerated
        on top of the scenario's own: with microsecond RTTs a busy CPU that delays an ACK by
        2 ms is enough for a spurious TLP (PTO = 2*SRTT + 2 ms). That is real kernel
        behaviour, recorded correctly, but not what the scenario is about.
        """
        problems = []
        spurious = deltas.get("TcpExtTCPDSACKRecv", 0)
        if deltas.get("TcpRetransSegs", 0) <= 0:
            problems.append("no retransmission at all (TcpRetransSegs did not move)")
        for reason in sorted(self.expected):
            counter = REASON_COUNTERS[reason]
            if deltas.get(counter, 0) <= 0:
                problems.append(f"expected {reason}, but {counter} did not move")
        for counter in sorted(self.forbidden_counters()):
            moved = deltas.get(counter, 0)
            if moved > spurious:
                problems.append(f"{counter} moved by {moved}, only {spurious} D-SACKed")
        for counter, value in sorted(self.exact_counters().items()):
            moved = deltas.get(counter, 0)
            if not value <= moved <= value + spurious:
                problems.append(
                    f"{counter} moved by {moved}, expected {value}"
                    + (f" (+ up to {spurious} D-SACKed)" if spurious else "")
                )
        return problems

    def forbidden_counters(self) -> set[str]:
        """Counters that must not move: those of reasons neither expected nor possible."""
        allowed = set()
        for reason in self.expected | self.possible:
            allowed.add(REASON_COUNTERS[reason])
            allowed.update(ALSO_MOVES.get(reason, ()))
        return {REASON_COUNTERS[r] for r in REASONS} - allowed


@dataclass
class ScenarioResult:
    name: str
    client_returncode: int
    client_output: dict[str, Any]
    client_stderr: str
    server_returncode: int | None
    duration_s: float
    counters_before: dict[str, int]
    counters_after: dict[str, int]
    delay_stats: dict[str, int] | None = None
    rules_applied: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.client_returncode == 0

    def delta(self, name: str) -> int:
        return self.counters_after.get(name, 0) - self.counters_before.get(name, 0)

    def deltas(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """Counter changes during the run (default: WATCHED_COUNTERS; or every counter)."""
        if names is None:
            names = WATCHED_COUNTERS
        return {n: self.delta(n) for n in names}

    def all_deltas(self) -> dict[str, int]:
        """Every counter that changed."""
        names = set(self.counters_before) | set(self.counters_after)
        return {n: d for n in sorted(names) if (d := self.delta(n))}


def client_args(lab: Lab, scenario: Scenario) -> list[str]:
    """Arguments of ``python -m retranscope.lab.traffic`` for the scenario's client."""
    t = scenario.traffic
    return [
        t.client,
        "--host",
        lab.receiver_addr(scenario.family),
        "--port",
        str(scenario.port),
        "--timeout-s",
        f"{t.timeout_s:g}",
        *t.client_args,
    ]


def server_args(scenario: Scenario) -> list[str]:
    """Arguments of ``python -m retranscope.lab.traffic`` for the scenario's server."""
    t = scenario.traffic
    return [
        "server",
        "--port",
        str(scenario.port),
        "--family",
        str(scenario.family),
        "--mode",
        t.server_mode,
        "--timeout-s",
        f"{t.timeout_s + 5:g}",
        "--max-conns",
        str(t.conns),
        *t.server_args,
    ]


def check_lab(lab: Lab, scenario: Scenario) -> None:
    """Refuse a lab built differently from what the scenario's ground truth assumes."""
    if lab.tso != scenario.tso or abs(lab.rtt_ms - scenario.rtt_ms) > 1e-9:
        raise LabError(
            f"scenario {scenario.name} needs tso={scenario.tso} "
            f"rtt_ms={scenario.rtt_ms}; lab has tso={lab.tso} rtt_ms={lab.rtt_ms}"
        )
    if scenario.family == 6 and not lab.ipv6:
        raise LabError(f"scenario {scenario.name} is IPv6; the lab was built with ipv6=False")
    lab_shape = (
        lab.mtu,
        lab.reorder_pct,
        lab.reorder_ms,
        lab.jitter_ms,
        lab.line_drops,
        lab.router_mtu,
    )
    want = (
        scenario.mtu,
        scenario.reorder_pct,
        scenario.reorder_ms,
        scenario.jitter_ms,
        scenario.line_drops,
        scenario.router_mtu,
    )
    if lab_shape != want:
        raise LabError(
            f"scenario {scenario.name} needs (mtu, reorder_pct, reorder_ms, "
            f"jitter_ms, line_drops, router_mtu)={want}; lab has {lab_shape}"
        )
    if scenario.capture.where == "mid" and not lab.tap:
        raise LabError(f"scenario {scenario.name} captures mid-path; the lab has no tap")


def run_scenario(lab: Lab, scenario: Scenario) -> ScenarioResult:
    """Apply the rules, run server and client to completion, remove the rules.

    Counters of the retransmitting namespace are read just before the rules go in and after
    the client has finished, so ``result.delta(name)`` is what this scenario did.
    """
    check_lab(lab, scenario)
    retrans_ns = scenario.retransmitting_ns(lab)
    where_ns = {"receiver": lab.receiver_ns, "sender": lab.sender_ns}

    restore = []
    for where, key, value in scenario.sysctls:
        ns = where_ns[where]
        old = lab.run(ns, ["sysctl", "-n", key]).stdout.strip()
        lab.sysctl(ns, key, value)
        restore.append((ns, key, old))
    server = lab.pymodule(lab.receiver_ns, TRAFFIC_MODULE, server_args(scenario))
    installed: list[tuple[Rule, RuleHandle]] = []
    sets_made: list[tuple[str, str]] = []
    client: subprocess.Popen[str] | None = None
    try:
        for where, set_name, spec in scenario.nft_sets:
            ns = where_ns[where]
            lab.run(ns, ["nft", "add", "set", "inet", NFT_TABLE, set_name, f"{{ {spec} }}"])
            sets_made.append((ns, set_name))
        line = read_first_line(server, timeout_s=SERVER_READY_TIMEOUT_S)
        if not line.startswith("LISTENING"):
            time.sleep(0.1)
            raise LabError(
                f"{scenario.name}: server did not start: {line!r} {stderr_if_exited(server)}"
            )
        before = lab.tcp_counters(retrans_ns)
        for rule in scenario.rules:
            expr = rule.render(scenario.port)
            installed.append((rule, lab.add_rule(expr, ns=where_ns[rule.where])))
        start = time.monotonic()
        client = lab.pymodule(lab.sender_ns, TRAFFIC_MODULE, client_args(lab, scenario))
        pending = sorted(
            (r for r in installed if r[0].remove_after_s is not None),
            key=lambda r: r[0].remove_after_s or 0.0,
        )
        deadline = start + scenario.traffic.timeout_s + 5.0
        while client.poll() is None and time.monotonic() < deadline:
            now_s = time.monotonic() - start
            while pending and (pending[0][0].remove_after_s or 0.0) <= now_s:
                lab.remove_rule(pending.pop(0)[1])
            next_s = pending[0][0].remove_after_s if pending else None
            wait_s = 0.05 if next_s is None else max(0.001, min(0.05, next_s - now_s))
            try:
                client.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                pass
        if client.poll() is None:
            client.kill()
        out, err = client.communicate(timeout=5)
        duration_s = time.monotonic() - start
        # Retransmissions can still be in flight after the client exits (a FIN's TLP):
        # give the kernel a moment before reading the counters.
        time.sleep(0.05)
        after = lab.tcp_counters(retrans_ns)
    finally:
        for _, handle in installed:
            if handle in lab.rules:
                lab.remove_rule(handle)
        for ns, set_name in sets_made:
            lab.run(ns, ["nft", "delete", "set", "inet", NFT_TABLE, set_name], check=False)
        # The server exits by itself after --max-conns connections; a failed client may leave
        # it waiting.
        try:
            server.wait(timeout=2 if client is not None and client.returncode == 0 else 0.1)
        except subprocess.TimeoutExpired:
            server.terminate()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        # Scenario sysctls (tcp_autocorking...) must not leak into the lab's next scenario.
        for ns, key, old in restore:
            lab.sysctl(ns, key, old)
    last = [ln for ln in (out or "").splitlines() if ln.startswith("{")]
    return ScenarioResult(
        name=scenario.name,
        client_returncode=client.returncode,
        client_output=json.loads(last[-1]) if last else {},
        client_stderr=(err or "")[-4000:],
        server_returncode=server.returncode,
        duration_s=duration_s,
        counters_before=before,
        counters_after=after,
        rules_applied=[r.render(scenario.port) for r, _ in installed],
    )


# --- the catalogue ----------------------------------------------------------------------


def _bulk(n_bytes: int, conns: int = 1, timeout_s: float = 15.0) -> Traffic:
    return Traffic(
        "bulk", ("--bytes", str(n_bytes), "--conns", str(conns)), "sink", timeout_s=timeout_s
    )


def _requests(
    count: int,
    burst: int,
    size: int,
    think_ms: str = "0",
    timeout_s: float = 15.0,
    server_extra: tuple[str, ...] = (),
    client_extra: tuple[str, ...] = (),
) -> Traffic:
    return Traffic(
        "requests",
        ("--count", str(count), "--burst", str(burst), "--size", str(size), *client_extra),
        "echo-slow",
        ("--think-ms", think_ms, *server_extra),
        timeout_s=timeout_s,
    )


def _trickle(
    count: int, size: str, interval_ms: str, seed: int = 1, timeout_s: float = 15.0
) -> Traffic:
    return Traffic(
        "trickle",
        ("--count", str(count), "--size", size, "--interval-ms", interval_ms, "--seed", str(seed)),
        "sink",
        timeout_s=timeout_s,
    )


def _request_header(size: int, index: int, burst: int) -> int:
    """A request's 8-byte header (traffic.py REQ_HDR) as one integer, for an nftables
    match on the first bytes of the TCP payload (``@ih,0,64``)."""
    return int.from_bytes(REQ_HDR.pack(size, index, burst), "big")


def _random_drop(pct: int, where: str = "receiver") -> Rule:
    """Drop ``pct`` % of the packets towards the server (receiver) or the client (sender)."""
    direction = "dport" if where == "receiver" else "sport"
    return Rule(f"tcp {direction} {{port}} numgen random mod 100 < {pct} drop", where=where)


_RANDOM_LOSS_POSSIBLE = frozenset({"tlp", "rto", "rto_recovery", "syn"})

_REPLY_ACK_LOSS_RCV = Scenario(
    name="reply_ack_loss_rcv",
    description="The issue's case: a server's reply whose ACKs are lost after the "
    "capture point. Captured at the client (the data receiver): 5 "
    "connections one after another at RTT 20 ms, each one request answered "
    "with 8 KB (within the initial window) and the server's FIN; the client "
    "waits 400 ms before its own FIN. The server's input drops every pure "
    "ACK from the client (handshake spared): the capture shows them, the "
    "server never gets them. Its PTO (2*SRTT) fires: a TLP resends the last "
    "segment; ~220 ms later the RTO resends the first; the client's FIN "
    "(not a pure ACK) acknowledges everything. Kernel: a TLP then an RTO per "
    "connection. (One connection each: on one long connection the echoed "
    "timestamps of the probes would inflate SRTT, and later replies would "
    "see no RTO.)",
    traffic=_requests(
        count=1,
        burst=1,
        size=100,
        server_extra=("--reply-bytes", "8000", "--close-after", "1"),
        client_extra=("--gap-ms", "400", "--conns", "5"),
    ),
    rules=(
        Rule(
            "tcp dport {port} tcp flags & (syn|fin|rst) == 0 meta length < 120 "
            "ct original packets > 2 drop"
        ),
    ),
    rtt_ms=20.0,
    retransmitter="server",
    capture=CapturePoint(where="receiver"),
    expected=frozenset({"tlp", "rto"}),
    exact={"TcpExtTCPLossProbes": 5, "TcpExtTCPTimeouts": 5},
    twins=("v6", "notso"),
)


# --- the sweep (docs/sweep.md): sysctls, loss shapes and capture points the rest thins -----

_NO_AUTOCORK = ("sender", "net.ipv4.tcp_autocorking", "0")
_ANY_BUT_SYNACK = frozenset({"fast", "tlp", "rto", "rto_recovery", "syn"})


def _reqresp_both_ways(count: int = 40) -> Traffic:
    """Bursts of 3 requests of 300 B at RTT 10 ms answered with 3000 B after 0-4 ms."""
    return _requests(
        count=count, burst=3, size=300, think_ms="0-4", server_extra=("--reply-bytes", "3000")
    )


SWEEP_SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="rack_off_loss",
        description="RACK off at the client (net.ipv4.tcp_recovery=0): bulk 2 MB on each of 2 "
        "connections at RTT 20 ms, 3% random loss. Loss is then found by the "
        "duplicate-ACK threshold on SACKed segments (tcp_time_to_recover, "
        "tcp_mark_head_lost), RFC 6675 style, not by RACK's time window.",
        traffic=_bulk(2_000_000, conns=2),
        rules=(_random_drop(3),),
        rtt_ms=20.0,
        sysctls=(("sender", "net.ipv4.tcp_recovery", "0"),),
        expected=frozenset({"fast"}),
        possible=_RANDOM_LOSS_POSSIBLE,
        twins=(),
    ),
    Scenario(
        name="frto_off_ack_blackhole",
        description="F-RTO off at the client (net.ipv4.tcp_frto=0): ack_blackhole_rto's ACK "
        "blackhole (bulk 3 MB at RTT 10 ms, the server's packets dropped at the "
        "client for 1 s after the 20th): a TLP, then RTOs; without F-RTO the Loss "
        "state does not wait for new data before it retransmits (tcp_enter_loss, "
        "tcp_process_loss).",
        traffic=_bulk(3_000_000),
        rules=(
            Rule("tcp sport {port} ct reply packets > 20 drop", where="sender", remove_after_s=1.0),
        ),
        rtt_ms=10.0,
        sysctls=(("sender", "net.ipv4.tcp_frto", "0"),),
        expected=frozenset({"tlp", "rto"}),
        possible=frozenset({"rto_recovery", "fast"}),
        twins=(),
    ),
    Scenario(
        name="bursty_loss",
        description="Bursty loss: 6 consecutive client->server packets of every 200 dropped "
        "(nft numgen inc, shared by the 2 connections and their SYNs), bulk 1 MB on "
        "each at RTT 20 ms, TSO off: runs of holes in one window, retransmissions "
        "lost again, SYN timeouts.",
        traffic=_bulk(1_000_000, conns=2),
        rules=(Rule("tcp dport {port} numgen inc mod 200 < 6 drop"),),
        rtt_ms=20.0,
        tso=False,
        expected=frozenset({"fast"}),
        possible=_ANY_BUT_SYNACK,
        twins=(),
    ),
    Scenario(
        name="small_rcvbuf_loss",
        description="A receive-window-limited flow: the server's tcp_rmem is 4096 8192 16384 "
        "(a window of a few segments), bulk 1 MB on each of 2 connections at RTT "
        "10 ms, 2% random loss: few packets out, so losses are found by RACK on "
        "one or two SACKs or by the RTO.",
        traffic=_bulk(1_000_000, conns=2),
        rules=(_random_drop(2),),
        rtt_ms=10.0,
        sysctls=(("receiver", "net.ipv4.tcp_rmem", "4096 8192 16384"),),
        expected=frozenset({"fast"}),
        possible=_ANY_BUT_SYNACK,
        twins=(),
    ),
    Scenario(
        name="nosack_reqresp",
        description="Request/response with SACK off at the client (net.ipv4.tcp_sack=0) at "
        "RTT 10 ms, 4% loss each way: every lost tail and every lost reply ACK "
        "ends in an RTO (no TLP without SACK); an RTO that follows a lost ACK "
        "resends the whole flight, collapsed into one segment "
        "(tcp_retrans_try_collapse).",
        traffic=_reqresp_both_ways(),
        rules=(_random_drop(4), _random_drop(4, where="sender")),
        rtt_ms=10.0,
        sysctls=(_NO_AUTOCORK, ("sender", "net.ipv4.tcp_sack", "0")),
        expected=frozenset({"rto"}),
        possible=frozenset({"fast", "rto_recovery", "syn"}),
        twins=(),
    ),
    Scenario(
        name="nosack_reqresp_rcv",
        description="nosack_reqresp captured at the server, with the loss in the delay line "
        "(3% of the data towards the server, 3% of the pure ACKs towards the client, "
        "a fixed pattern): lost requests never reach the capture, lost ACKs are in "
        "it. An RTO after a lost ACK resends the acknowledged requests collapsed "
        "with the lost one, so it runs past all the data the capture saw.",
        traffic=_reqresp_both_ways(),
        line_drops=(("to_receiver", "data", 3.0), ("to_sender", "ack", 3.0)),
        disorder_seed=5,
        rtt_ms=10.0,
        sysctls=(_NO_AUTOCORK, ("sender", "net.ipv4.tcp_sack", "0")),
        capture=CapturePoint(where="receiver"),
        expected=frozenset({"rto"}),
        possible=frozenset({"fast", "rto_recovery", "syn"}),
        twins=(),
    ),
    Scenario(
        name="tlp_off_loss_in",
        description="TLP off at the client, bulk 2 MB on each of 2 connections at RTT 20 ms, "
        "3% loss, captured one way at the server (-Q in): fast recovery read from "
        "timing alone, including tails that RACK marks lost once a later "
        "retransmission is delivered.",
        traffic=_bulk(2_000_000, conns=2),
        rules=(_random_drop(3),),
        rtt_ms=20.0,
        sysctls=(("sender", "net.ipv4.tcp_early_retrans", "0"),),
        capture=CapturePoint(where="receiver", direction="in"),
        expected=frozenset({"fast"}),
        possible=frozenset({"rto", "rto_recovery", "syn"}),
        twins=(),
    ),
    Scenario(
        name="tlp_off_loss_out",
        description="tlp_off_loss_in captured one way at the client (-Q out).",
        traffic=_bulk(2_000_000, conns=2),
        rules=(_random_drop(3),),
        rtt_ms=20.0,
        sysctls=(("sender", "net.ipv4.tcp_early_retrans", "0"),),
        capture=CapturePoint(where="sender", direction="out"),
        expected=frozenset({"fast"}),
        possible=frozenset({"rto", "rto_recovery", "syn"}),
        twins=(),
    ),
    Scenario(
        name="server_bulk_loss_in",
        description="The server retransmits: 15 requests at RTT 20 ms each answered with "
        "60 KB, 3% of the server's packets dropped at the client, captured one way "
        "at the client (-Q in): replies' fast recovery and the odd RTO by timing.",
        traffic=_requests(count=15, burst=1, size=100, server_extra=("--reply-bytes", "60000")),
        rules=(
            Rule(
                "tcp sport {port} tcp flags & syn == 0 numgen random mod 100 < 3 drop",
                where="sender",
            ),
        ),
        rtt_ms=20.0,
        retransmitter="server",
        capture=CapturePoint(where="receiver", direction="in"),
        expected=frozenset({"fast"}),
        possible=frozenset({"tlp", "rto", "rto_recovery"}),
        twins=(),
    ),
    Scenario(
        name="rtt300_loss_mid",
        description="A long path: bulk 250 KB on each of 2 connections at RTT 300 ms, 2% of "
        "the data lost before a mid-path tap and 5% of the ACKs after it (delay "
        "line), and 2% of the data after it (the server's input): the PTO "
        "(2*SRTT) is clamped to the RTO, RACK's window is 75 ms.",
        traffic=_bulk(250_000, conns=2, timeout_s=20.0),
        rules=(Rule("tcp dport {port} tcp flags & syn == 0 numgen random mod 100 < 2 drop"),),
        line_drops=(("to_receiver", "data", 2.0), ("to_sender", "ack", 5.0)),
        disorder_seed=6,
        rtt_ms=300.0,
        capture=CapturePoint(where="mid"),
        expected=frozenset({"fast"}),
        possible=_ANY_BUT_SYNACK,
        twins=(),
    ),
    Scenario(
        name="many_flows_rcv",
        description="16 parallel connections of 250 KB at RTT 20 ms, captured at the server, "
        "3% of the data and 3% of the ACKs lost in the delay line: many flows "
        "interleaved, originals lost before the capture point.",
        traffic=_bulk(250_000, conns=16),
        line_drops=(("to_receiver", "data", 3.0), ("to_sender", "ack", 3.0)),
        disorder_seed=5,
        rtt_ms=20.0,
        capture=CapturePoint(where="receiver"),
        expected=frozenset({"fast"}),
        possible=_ANY_BUT_SYNACK,
        twins=(),
    ),
    Scenario(
        name="thin_linear_blackhole_rcv",
        description="A thin stream (60 writes of 100-400 B, 20-40 ms apart, at RTT 10 ms) with "
        "net.ipv4.tcp_thin_linear_timeouts=1, every client->server packet after the "
        "20th dropped at the server until 2 s: a TLP, then RTOs that do not back off "
        "while the stream is thin (tcp_retransmit_timer: tcp_stream_is_thin), while "
        "the application keeps writing; captured at the server.",
        traffic=_trickle(60, "100-400", "20-40", seed=2),
        rules=(Rule("tcp dport {port} ct original packets > 20 drop", remove_after_s=2.0),),
        rtt_ms=10.0,
        sysctls=(("sender", "net.ipv4.tcp_thin_linear_timeouts", "1"),),
        capture=CapturePoint(where="receiver"),
        expected=frozenset({"rto"}),
        possible=frozenset({"tlp", "rto_recovery", "fast"}),
        twins=(),
    ),
    Scenario(
        name="nosack_reorder_rcv",
        description="Reordering with SACK off at the client: bulk 1.5 MB on each of 2 "
        "connections at RTT 20 ms, 3% of the data held 6 ms longer in the delay "
        "line and 1% dropped at the server, captured at the server. NewReno: "
        "duplicate ACKs, one head resent per partial ACK, the odd RTO.",
        traffic=_bulk(1_500_000, conns=2),
        rules=(_random_drop(1),),
        rtt_ms=20.0,
        reorder_pct=3.0,
        reorder_ms=6.0,
        sysctls=(("sender", "net.ipv4.tcp_sack", "0"),),
        capture=CapturePoint(where="receiver"),
        expected=frozenset({"fast"}),
        possible=frozenset({"rto", "rto_recovery", "syn"}),
        twins=(),
    ),
    Scenario(
        name="idle_trickle_mid",
        description="An idle, app-limited sender: 15 writes of 100-3000 B, 80-250 ms apart, "
        "at RTT 30 ms, captured mid-path, with loss before the tap (2% data, 5% "
        "ACKs) and after it (12% at the server's input): every write starts from "
        "idle, a lost tail ends in a TLP, a lost middle in RACK, a lost probe in "
        "the RTO.",
        traffic=_trickle(15, "100-3000", "80-250", seed=5),
        rules=(_random_drop(12),),
        line_drops=(("to_receiver", "data", 2.0), ("to_sender", "ack", 5.0)),
        disorder_seed=6,
        rtt_ms=30.0,
        capture=CapturePoint(where="mid"),
        expected=frozenset({"tlp"}),
        possible=_ANY_BUT_SYNACK,
        twins=(),
    ),
)


BASE_SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="fast_nth",
        description="Bulk 2 MB; the 20th client->server packet of the flow is dropped once "
        "(conntrack packet count: its retransmission passes). Later segments are "
        "SACKed and the hole is repaired by fast recovery (RACK, RFC 8985).",
        traffic=_bulk(2_000_000),
        rules=(Rule("tcp dport {port} ct original packets 20 drop"),),
        expected=frozenset({"fast"}),
        exact_notso={"TcpRetransSegs": 1, "TcpExtTCPFastRetrans": 1},
    ),
    Scenario(
        name="tail_drop_tlp",
        description="Request/response, bursts of 4 small requests (TCP_NODELAY, autocorking "
        "off so each is one packet); packet 6 of the flow (SYN, ACK, then requests "
        "1-4) is the first burst's last request and is dropped. Nothing follows it, "
        "so no SACK can reveal it: the TLP (tcp_send_loss_probe) retransmits it "
        "and recovers (TCPLossProbeRecovery). Alone in flight, the PTO includes "
        "the 200 ms RTO floor.",
        traffic=_requests(count=3, burst=4, size=200),
        rules=(Rule("tcp dport {port} ct original packets 6 drop"),),
        expected=frozenset({"tlp"}),
        sysctls=(("sender", "net.ipv4.tcp_autocorking", "0"),),
        exact={"TcpRetransSegs": 1, "TcpExtTCPLossProbes": 1, "TcpExtTCPLossProbeRecovery": 1},
    ),
    Scenario(
        name="blackhole_rto",
        description="Bulk 4 MB; after its 50th packet every client->server packet is dropped "
        "until the rule goes, 1.0 s after the start. A TLP goes first (lost), then "
        "RTOs back off (about 0.2, 0.6, 1.4 s: tcp_retransmit_timer); the third "
        "gets through and the rest of the lost window is resent by slow-start "
        "retransmits in the Loss state.",
        traffic=_bulk(4_000_000),
        rules=(Rule("tcp dport {port} ct original packets > 50 drop", remove_after_s=1.0),),
        expected=frozenset({"tlp", "rto", "rto_recovery"}),
        # TCPLossProbes is 1 on an idle machine; under load a second probe may carry new
        # data (tcp_send_loss_probe sends unsent data first), which no D-SACK excuses.
        exact={"TcpExtTCPTimeouts": 3},
    ),
    Scenario(
        name="syn_drop",
        description="The first SYN of each client port is dropped (the nft set @once "
        "remembers the port); the SYN is retransmitted by the timer after 1 s "
        "(TCP_TIMEOUT_INIT) and the connection completes.",
        traffic=Traffic("connect"),
        rules=(
            Rule("tcp dport {port} tcp flags syn tcp sport != @once add @once { tcp sport } drop"),
        ),
        expected=frozenset({"syn"}),
        exact={"TcpRetransSegs": 1, "TcpExtTCPSynRetrans": 1, "TcpExtTCPTimeouts": 1},
    ),
    Scenario(
        name="synack_drop",
        description="The first SYN-ACK to each client port is dropped in the client's "
        "namespace. The server's request timer (tcp_syn_ack_timeout) retransmits "
        "it 1 s later (tcp_rtx_synack) and the handshake completes. The client's "
        "own SYN retransmission, due at the same moment, is dropped at the server "
        "(only the first SYN of a port passes): answering it would retransmit the "
        "SYN-ACK a second time, or instead of the timer, whichever came first. "
        "The retransmitting side is the server: read the receiver's counters.",
        traffic=Traffic("connect"),
        rules=(
            Rule(
                "tcp sport {port} tcp flags & (syn|ack) == syn|ack tcp dport != @once "
                "add @once { tcp dport } drop",
                where="sender",
            ),
            Rule("tcp dport {port} tcp flags & (syn|ack) == syn tcp sport @once drop"),
            Rule("tcp dport {port} tcp flags & (syn|ack) == syn add @once { tcp sport }"),
        ),
        expected=frozenset({"synack"}),
        retransmitter="server",
        exact={"TcpRetransSegs": 1, "TcpExtTCPSynRetrans": 1, "TcpExtTCPTimeouts": 1},
    ),
    Scenario(
        name="slow_server_tlp",
        description="No loss at all: 20 bursts of 3 small requests to a server that is busy "
        "15-30 ms before it reads them. Its delayed ACK outlasts the client's PTO "
        "(2*SRTT + 2 ms), so TLPs fire a few ms after the burst, and the server "
        "answers each with a D-SACK (RFC 2883): spurious retransmissions.",
        traffic=_requests(count=20, burst=3, size=100, think_ms="15-30"),
        expected=frozenset({"tlp"}),
    ),
    Scenario(
        name="random_loss",
        description="Bulk 8 MB on each of 2 parallel connections; 3% of client->server packets "
        "dropped at random (nft numgen). Mostly fast recovery; TLPs and RTOs "
        "when a tail or a retransmission is lost. (8 MB: with TSO on a flow is "
        "only ~200 super-packets, too few to be sure of a loss.)",
        traffic=_bulk(8_000_000, conns=2),
        rules=(Rule("tcp dport {port} numgen random mod 100 < 3 drop"),),
        expected=frozenset({"fast"}),
        possible=_RANDOM_LOSS_POSSIBLE,
    ),
    Scenario(
        name="random_loss_rtt",
        description="Bulk 4 MB on each of 2 connections through the 20 ms delay line, 3% "
        "random loss: the same mechanisms at a realistic RTT, where timing rules "
        "tuned on veth RTTs of microseconds break. (With TSO on the receiver sees "
        "~190 super-packets per flow: 2 flows make a run without any fast "
        "retransmit improbable, ~1e-5.)",
        traffic=_bulk(4_000_000, conns=2),
        rules=(Rule("tcp dport {port} numgen random mod 100 < 3 drop"),),
        rtt_ms=20.0,
        expected=frozenset({"fast"}),
        possible=_RANDOM_LOSS_POSSIBLE,
    ),
    # --- beyond RTT 0/20, one or two flows, SACK and timestamps on ---------------------
    Scenario(
        name="reqresp_loss_both",
        description="Request/response at RTT 10 ms: 60 bursts of 3 requests (300 B, "
        "TCP_NODELAY, autocorking off), each answered with a 3000 B reply after "
        "0-4 ms; 4% of packets are dropped at random in BOTH directions (requests "
        "at the server, replies and ACKs at the client). Few packets in flight: "
        "a lost tail request or a lost reply/ACK gives a TLP (the latter "
        "spurious, D-SACKed), a lost middle request a RACK fast retransmit with a "
        "tiny window, a lost probe an RTO. The server's own retransmissions of "
        "lost replies are in the capture too (not the client's counters).",
        traffic=_requests(
            count=60, burst=3, size=300, think_ms="0-4", server_extra=("--reply-bytes", "3000")
        ),
        rules=(_random_drop(4), _random_drop(4, where="sender")),
        rtt_ms=10.0,
        sysctls=(("sender", "net.ipv4.tcp_autocorking", "0"),),
        expected=frozenset({"tlp"}),
        possible=frozenset({"fast", "rto", "rto_recovery", "syn"}),
        twins=("v6",),
    ),
    Scenario(
        name="multi_flow_rtt50",
        description="Bulk 1.5 MB on each of 4 parallel connections through the delay line at "
        "RTT 50 ms, 2% random loss towards the server: fast recovery (RACK) at a "
        "WAN-like RTT, where the reordering window (min_rtt/4) and the PTO "
        "(2*SRTT) are tens of ms; TLPs and RTOs when a tail or a retransmission "
        "is lost.",
        traffic=_bulk(1_500_000, conns=4),
        rules=(_random_drop(2),),
        rtt_ms=50.0,
        expected=frozenset({"fast"}),
        possible=_RANDOM_LOSS_POSSIBLE,
        twins=("v6",),
    ),
    Scenario(
        name="multi_flow_rtt100",
        description="Bulk 1 MB on each of 3 parallel connections at RTT 100 ms, 2% random "
        "loss: long RTTs, where a connection spends most of its life in slow "
        "start and a loss is found a whole RTT after it happened.",
        traffic=_bulk(1_000_000, conns=3),
        # SYNs spared: a 1 s SYN timeout at this RTT would make the run too long.
        rules=(Rule("tcp dport {port} tcp flags & syn == 0 numgen random mod 100 < 2 drop"),),
        rtt_ms=100.0,
        expected=frozenset({"fast"}),
        possible=frozenset({"tlp", "rto", "rto_recovery"}),
        twins=(),
    ),
    Scenario(
        name="ts_off_loss_rtt5",
        description="Bulk 3.5 MB on each of 2 connections at RTT 5 ms with TCP timestamps "
        "off (net.ipv4.tcp_timestamps=0 at the client: not negotiated), 4% random "
        "loss. Without timestamps RTT samples come only from never-retransmitted "
        "segments (Karn) and spurious retransmissions show only by D-SACK; the "
        "TCP header is 20 bytes, the MSS 12 bytes larger.",
        traffic=_bulk(3_500_000, conns=2),
        rules=(_random_drop(4),),
        rtt_ms=5.0,
        sysctls=(("sender", "net.ipv4.tcp_timestamps", "0"),),
        expected=frozenset({"fast"}),
        possible=_RANDOM_LOSS_POSSIBLE,
        twins=("notso",),
    ),
    Scenario(
        name="sack_off_loss",
        description="Bulk 2 MB on each of 2 connections at RTT 20 ms with SACK off "
        "(net.ipv4.tcp_sack=0 at the client), 2% random loss. NewReno: fast "
        "retransmit after 3 duplicate ACKs, one hole repaired per RTT (partial "
        "ACKs), more RTOs; and no TLP at all (tcp_schedule_loss_probe requires "
        "SACK, RFC 8985), so tlp is forbidden here.",
        traffic=_bulk(2_000_000, conns=2),
        rules=(_random_drop(2),),
        rtt_ms=20.0,
        sysctls=(("sender", "net.ipv4.tcp_sack", "0"),),
        expected=frozenset({"fast"}),
        possible=frozenset({"rto", "rto_recovery", "syn"}),
        twins=("notso",),
    ),
    Scenario(
        name="reno_ts_off_loss",
        description="The oldest-style TCP: SACK and timestamps both off at the client, TSO "
        "off, bulk 1.5 MB on each of 2 connections at RTT 5 ms, 2% random loss. "
        "NewReno recovery from duplicate ACKs alone, RTT samples only from "
        "never-retransmitted segments, no D-SACK, no TLP.",
        traffic=_bulk(1_500_000, conns=2),
        rules=(_random_drop(2),),
        tso=False,
        rtt_ms=5.0,
        sysctls=(("sender", "net.ipv4.tcp_sack", "0"), ("sender", "net.ipv4.tcp_timestamps", "0")),
        expected=frozenset({"fast"}),
        possible=frozenset({"rto", "rto_recovery", "syn"}),
        twins=("v6",),
    ),
    Scenario(
        name="nosack_heavy_rtt30",
        description="NewReno under heavy loss: SACK off at the client, TSO off, bulk 1 MB on "
        "each of 2 connections at RTT 30 ms, 5% random loss. Holes pile up faster "
        "than one per RTT can repair them: RTOs in the middle of fast recovery, "
        "long Loss episodes of slow-start retransmits, F-RTO tried and refused "
        "(an ACK that also covers a resent segment proves nothing without SACK).",
        traffic=_bulk(1_000_000, conns=2),
        rules=(_random_drop(5),),
        tso=False,
        rtt_ms=30.0,
        sysctls=(("sender", "net.ipv4.tcp_sack", "0"),),
        expected=frozenset({"fast"}),
        possible=frozenset({"rto", "rto_recovery", "syn"}),
        twins=("v6",),
    ),
    Scenario(
        name="heavy_loss_rtt10",
        description="SACK recovery under heavy loss: bulk 2 MB on each of 2 connections at "
        "RTT 10 ms, TSO off, 8% random loss: many holes per window, retransmissions "
        "lost again (RACK, FLAG_LOST_RETRANS), the odd RTO.",
        traffic=_bulk(2_000_000, conns=2),
        rules=(_random_drop(8),),
        tso=False,
        rtt_ms=10.0,
        expected=frozenset({"fast"}),
        possible=_RANDOM_LOSS_POSSIBLE,
        twins=(),
    ),
    Scenario(
        name="bbr_loss_rtt20",
        description="Another congestion control: BBR at the client (net.ipv4."
        "tcp_congestion_control=bbr), bulk 3 MB on each of 2 connections at RTT "
        "20 ms, 2% random loss. BBR paces and sets cwnd itself, but loss detection "
        "(RACK, TLP, RTO) is the same state machine.",
        traffic=_bulk(3_000_000, conns=2),
        rules=(_random_drop(2),),
        rtt_ms=20.0,
        sysctls=(("sender", "net.ipv4.tcp_congestion_control", "bbr"),),
        expected=frozenset({"fast"}),
        possible=_RANDOM_LOSS_POSSIBLE,
        twins=(),
    ),
    Scenario(
        name="tail_drop_nosack",
        description="tail_drop_tlp with SACK off (net.ipv4.tcp_sack=0 at the client): the "
        "first burst's last request is dropped and, with no TLP allowed without "
        "SACK, the retransmission timer resends it after the 200 ms RTO floor: "
        "an RTO where the SACK scenario has a TLP.",
        traffic=_requests(count=3, burst=4, size=200),
        rules=(Rule("tcp dport {port} ct original packets 6 drop"),),
        sysctls=(("sender", "net.ipv4.tcp_autocorking", "0"), ("sender", "net.ipv4.tcp_sack", "0")),
        expected=frozenset({"rto"}),
        exact={"TcpRetransSegs": 1, "TcpExtTCPTimeouts": 1},
        twins=(),
    ),
    Scenario(
        name="tail_drop_rtt50",
        description="tail_drop_tlp at RTT 50 ms: the first burst's last request is "
        "dropped; the three before it are ACKed, so it is alone in flight and "
        "the PTO is 2*SRTT + 200 ms clamped to the RTO (about SRTT + 200 ms): "
        "the TLP fires at the RTO time, a quarter second after the original. "
        "The rule matches the request by its content (its header: 200 bytes, "
        "index 3 of a burst of 4, at the start of the TCP payload), once per "
        "connection, not by counting packets: a count shifts whenever the "
        "handshake or the requests are packed differently.",
        traffic=_requests(count=3, burst=4, size=200),
        rules=(
            Rule(
                f"tcp dport {{port}} @ih,0,64 {_request_header(200, 3, 4):#018x} "
                "tcp sport != @once add @once { tcp sport } drop"
            ),
        ),
        rtt_ms=50.0,
        sysctls=(("sender", "net.ipv4.tcp_autocorking", "0"),),
        expected=frozenset({"tlp"}),
        exact={"TcpRetransSegs": 1, "TcpExtTCPLossProbes": 1},
        twins=("v6",),
    ),
    Scenario(
        name="fin_drop_rtt50",
        description="Bulk 300 KB at RTT 50 ms; the first segment carrying the client's FIN "
        "(alone or on the last data) is dropped once (nft set @once). Nothing "
        "follows a FIN, so no SACK can reveal it: the TLP retransmits it. With "
        "TSO on the FIN rides on the last super-packet: the probe resends only "
        "its last MSS (with the FIN), whose SACK then lets RACK mark the rest of "
        "the super-packet lost: one TLP plus a fast retransmit. TSO off: the TLP "
        "alone.",
        traffic=_bulk(300_000),
        rules=(
            Rule(
                "tcp dport {port} tcp flags & fin == fin tcp sport != @once "
                "add @once { tcp sport } drop"
            ),
        ),
        rtt_ms=50.0,
        expected=frozenset({"tlp"}),
        possible=frozenset({"fast", "rto"}),
        exact={"TcpExtTCPLossProbes": 1},
        exact_notso={"TcpRetransSegs": 1},
        twins=("notso",),
    ),
    Scenario(
        name="burst_loss",
        description="Bulk 1.5 MB, TSO off, RTT 20 ms; packets 200-215 of the flow (16 "
        "consecutive MSS segments) are dropped: one recovery episode repairs a "
        "hole of 16 segments (RACK marks them all lost once later data is SACKed; "
        "cwnd limits how fast they go).",
        traffic=_bulk(1_500_000),
        rules=(Rule("tcp dport {port} ct original packets 200-215 drop"),),
        tso=False,
        rtt_ms=20.0,
        expected=frozenset({"fast"}),
        exact={"TcpRetransSegs": 16, "TcpExtTCPFastRetrans": 16},
        twins=("v6",),
    ),
    Scenario(
        name="lost_retransmit",
        description="Bulk 1.5 MB, TSO off, RTT 10 ms; packet 100 of the flow is dropped and so "
        "is its first retransmission (its sequence number is remembered in an nft "
        "set): RACK notices the retransmission lost once a segment sent after it "
        "is SACKed (TCPLostRetransmit) and retransmits it again, still in fast "
        "recovery.",
        traffic=_bulk(1_500_000),
        rules=(
            Rule("tcp dport {port} ct original packets 100 add @lost { tcp sequence } drop"),
            Rule(
                "tcp dport {port} tcp sequence @lost tcp sequence != @lost2 "
                "add @lost2 { tcp sequence } drop"
            ),
        ),
        nft_sets=(
            ("receiver", "lost", "typeof tcp sequence; flags dynamic;"),
            ("receiver", "lost2", "typeof tcp sequence; flags dynamic;"),
        ),
        tso=False,
        rtt_ms=10.0,
        expected=frozenset({"fast"}),
        exact={"TcpRetransSegs": 2, "TcpExtTCPFastRetrans": 2, "TcpExtTCPLostRetransmit": 1},
        twins=("v6",),
    ),
    Scenario(
        name="ack_loss_requests",
        description="Request/response at RTT 20 ms, no data loss: 30 bursts of 3 requests to "
        "a server that reads them, ACKs at once (tcp_cleanup_rbuf) and thinks "
        "45-70 ms before replying; 35% of the server's pure ACKs (short, non-SYN "
        "packets) are dropped at the client. With the ACK gone the client's PTO "
        "(2*SRTT + 2 ms, about 42 ms) expires before the reply: a spurious TLP, "
        "answered by a D-SACK (itself a pure ACK, so sometimes lost too: then "
        "the kernel counts the probe as a recovery).",
        traffic=_requests(
            count=30,
            burst=3,
            size=200,
            think_ms="45-70",
            server_extra=("--think-where", "after-read"),
        ),
        rules=(
            Rule(
                "tcp sport {port} tcp flags & syn == 0 meta length < 120 "
                "numgen random mod 100 < 35 drop",
                where="sender",
            ),
        ),
        rtt_ms=20.0,
        sysctls=(("sender", "net.ipv4.tcp_autocorking", "0"),),
        expected=frozenset({"tlp"}),
        possible=frozenset({"rto", "fast", "rto_recovery"}),
        twins=("v6",),
    ),
    Scenario(
        name="ack_blackhole_rto",
        description="Bulk 3 MB at RTT 10 ms; after the 20th packet from the server every "
        "server->client packet (ACKs) is dropped at the client for 1 s. The data "
        "all arrives, but the client hears nothing: a TLP, then RTOs backing off "
        "(about 0.2, 0.6 s); the third RTO's answer gets through, and D-SACKs "
        "show the retransmissions were spurious (F-RTO / undo).",
        traffic=_bulk(3_000_000),
        rules=(
            Rule("tcp sport {port} ct reply packets > 20 drop", where="sender", remove_after_s=1.0),
        ),
        rtt_ms=10.0,
        expected=frozenset({"tlp", "rto"}),
        possible=frozenset({"rto_recovery"}),
        exact={"TcpExtTCPTimeouts": 3, "TcpExtTCPLossProbes": 1},
        twins=("notso",),
    ),
    Scenario(
        name="blackhole_long",
        description="Bulk 4 MB at RTT 5 ms; after its 50th packet every client->server packet "
        "is dropped until 2.2 s after the start: a TLP, then a long RTO backoff "
        "chain (about 0.2, 0.6, 1.4, 3.0 s after the stall); the fourth RTO gets "
        "through and the rest of the window goes by slow-start retransmits.",
        traffic=_bulk(4_000_000),
        rules=(Rule("tcp dport {port} ct original packets > 50 drop", remove_after_s=2.2),),
        rtt_ms=5.0,
        expected=frozenset({"tlp", "rto", "rto_recovery"}),
        exact={"TcpExtTCPTimeouts": 4},
        twins=(),
    ),
    Scenario(
        name="syn_drop_twice",
        description="RTT 100 ms; every SYN is dropped until 2 s after the start: the SYN "
        "times out twice and the third one completes the handshake. The SYN "
        "timer does not back off here: net.ipv4.tcp_syn_linear_timeouts (4 by "
        "default since Linux 6.5) keeps the first four SYN retransmissions 1 s "
        "apart, so they go about 1 s and 2 s after the first SYN.",
        traffic=Traffic("connect"),
        rules=(Rule("tcp dport {port} tcp flags & (syn|ack) == syn drop", remove_after_s=2.0),),
        rtt_ms=100.0,
        expected=frozenset({"syn"}),
        exact={"TcpRetransSegs": 2, "TcpExtTCPSynRetrans": 2, "TcpExtTCPTimeouts": 2},
        twins=("v6",),
    ),
    Scenario(
        name="trickle_loss",
        description="An app-limited sender at RTT 20 ms: 100 writes of 100-1400 B, 10-40 ms "
        "apart (TCP_NODELAY), so one or two segments are in flight; packet 30 is "
        "dropped plus 3% at random. A loss followed by a later write is repaired "
        "by RACK from a single SACK (no 3 duplicate ACKs); a loss with nothing "
        "after it waits for the PTO (2*SRTT + 200 ms clamped to the RTO with one "
        "segment out).",
        traffic=_trickle(100, "100-1400", "10-40"),
        rules=(Rule("tcp dport {port} ct original packets 30 drop"), _random_drop(3)),
        rtt_ms=20.0,
        expected=frozenset({"fast"}),
        possible=frozenset({"tlp", "rto", "rto_recovery", "syn"}),
        twins=("v6",),
    ),
    Scenario(
        name="reorder_rtt20",
        description="No loss: bulk 2.5 MB on each of 2 connections at RTT 20 ms where the "
        "delay line holds 3% of the client->server frames 8 ms longer than the "
        "rest, so later frames overtake them. The receiver SACKs past the "
        "apparent hole; once three "
        "segments are SACKed RACK (reordering not yet seen: no window) "
        "retransmits the overtaken one: a spurious fast retransmit, D-SACKed, "
        "after which RACK widens its reordering window.",
        traffic=_bulk(2_500_000, conns=2),
        rtt_ms=20.0,
        reorder_pct=3.0,
        reorder_ms=8.0,
        expected=frozenset({"fast"}),
        possible=frozenset({"tlp"}),
        twins=("notso",),
    ),
    Scenario(
        name="mtu1000_loss",
        description="Bulk 1 MB on each of 2 connections over interfaces with MTU 1000 (MSS "
        "948 with timestamps), TSO off, RTT 10 ms, 3% random loss: segment sizes "
        "other than 1448.",
        traffic=_bulk(1_000_000, conns=2),
        rules=(_random_drop(3),),
        tso=False,
        mtu=1000,
        rtt_ms=10.0,
        expected=frozenset({"fast"}),
        possible=_RANDOM_LOSS_POSSIBLE,
        twins=(),
    ),
    Scenario(
        name="jitter_loss_rtt30",
        description="Bulk 2 MB at RTT 30 ms, TSO off, every client->server frame delayed by "
        "an extra 0-3 ms (jitter: segments close together arrive out of order) "
        "and 1% dropped: RACK must tell reordering from loss; some fast "
        "retransmits are spurious (D-SACK), the others repair real holes.",
        traffic=_bulk(2_000_000),
        rules=(_random_drop(1),),
        tso=False,
        rtt_ms=30.0,
        jitter_ms=3.0,
        expected=frozenset({"fast"}),
        possible=_RANDOM_LOSS_POSSIBLE,
        twins=(),
    ),
    Scenario(
        name="server_reply_loss",
        description="The server retransmits (capture and counters on the server's side, the "
        "passive opener): 40 requests at RTT 20 ms, each answered with a 30 KB "
        "reply; 3% of the server's non-SYN packets are dropped at the client. A "
        "lost segment inside a reply is repaired by fast recovery, a lost tail "
        "of a reply by a TLP; replies start from an idle, application-limited "
        "connection each time.",
        traffic=_requests(
            count=40, burst=1, size=100, think_ms="0-2", server_extra=("--reply-bytes", "30000")
        ),
        rules=(
            Rule(
                "tcp sport {port} tcp flags & syn == 0 numgen random mod 100 < 3 drop",
                where="sender",
            ),
        ),
        rtt_ms=20.0,
        retransmitter="server",
        expected=frozenset({"fast"}),
        possible=frozenset({"tlp", "rto", "rto_recovery"}),
        twins=(),
    ),
    # --- captures taken elsewhere than on the retransmitting host (lab/capture.py) -----
    _REPLY_ACK_LOSS_RCV,
    replace(
        _REPLY_ACK_LOSS_RCV,
        name="reply_ack_loss_mid",
        description="reply_ack_loss_rcv seen from a mid-path tap (10 ms of the 20 ms RTT on "
        "each side): the client's pure ACKs cross the tap and are dropped at the "
        "server's input. Kernel: a TLP then an RTO per connection.",
        capture=CapturePoint(where="mid"),
        twins=("v6",),
    ),
    Scenario(
        name="ack_blackhole_rcv",
        description="ack_blackhole_rto captured at the receiver: bulk 1 MB at RTT 10 ms; "
        "after the 20th server->client packet every one of them (the ACKs) is "
        "dropped at the client's input for 1 s. The capture at the server holds "
        "every ACK; the client heard none: a loss probe (it carries new data, so "
        "it is no retransmission: TCPLossProbes moves, no event), then RTOs "
        "backing off (about 0.2, 0.6 s after the stall), all needless "
        "(D-SACKed once the ACKs pass again).",
        traffic=_bulk(1_000_000),
        rules=(
            Rule("tcp sport {port} ct reply packets > 20 drop", where="sender", remove_after_s=1.0),
        ),
        rtt_ms=10.0,
        capture=CapturePoint(where="receiver"),
        expected=frozenset({"tlp", "rto"}),
        possible=frozenset({"rto_recovery"}),
        exact={"TcpExtTCPTimeouts": 3, "TcpExtTCPLossProbes": 1},
        twins=("notso",),
    ),
    Scenario(
        name="bulk_ack_loss_rcv",
        description="Bulk 600 KB on each of 2 connections at RTT 20 ms, captured at the "
        "receiver: 2% of the data is lost in the network before the capture "
        "point (delay line) and each flow's 30th packet after it (at the "
        "receiver's input), and 40% of the receiver's pure ACKs after it (at "
        "the sender's input). The capture shows ACKs and SACKs the sender never "
        "got: its recovery runs on less than the capture shows.",
        traffic=_bulk(600_000, conns=2),
        rules=(
            Rule("tcp dport {port} ct original packets 30 drop"),
            Rule(
                "tcp sport {port} tcp flags & (syn|fin|rst|psh) == 0 "
                "numgen random mod 100 < 40 drop",
                where="sender",
            ),
        ),
        line_drops=(("to_receiver", "data", 2.0),),
        rtt_ms=20.0,
        capture=CapturePoint(where="receiver"),
        expected=frozenset({"fast"}),
        possible=_RANDOM_LOSS_POSSIBLE,
        twins=("v6", "notso"),
    ),
    Scenario(
        name="bulk_loss_mid",
        description="Bulk 700 KB on each of 2 connections at RTT 30 ms through a mid-path "
        "tap (15 ms each side). Loss before the tap (in the delay lines: 1.5% of "
        "the data, 5% of the ACKs: the tap never sees them) and after it "
        "(nftables at the endpoints: 1.5% of the data at the receiver, 5% of "
        "the ACKs at the sender: the tap sees them, the host never gets them).",
        traffic=_bulk(700_000, conns=2),
        rules=(
            _random_drop(2),
            Rule(
                "tcp sport {port} tcp flags & (syn|fin|rst|psh) == 0 "
                "numgen random mod 100 < 5 drop",
                where="sender",
            ),
        ),
        line_drops=(("to_receiver", "data", 1.5), ("to_sender", "ack", 5.0)),
        rtt_ms=30.0,
        capture=CapturePoint(where="mid"),
        expected=frozenset({"fast"}),
        possible=_RANDOM_LOSS_POSSIBLE,
        twins=("v6", "notso"),
    ),
    Scenario(
        name="reqresp_loss_mid",
        description="reqresp_loss_both through a mid-path tap at RTT 10 ms: 60 bursts of 3 "
        "requests, 3000 B replies; 2% of the packets each way lost before the "
        "tap (delay lines) and 2% after it (nftables at both ends). Few packets "
        "in flight: TLPs, RACK with tiny windows, RTOs. The server's "
        "retransmissions are in the capture but not in the events (the recorder "
        "runs on the client).",
        traffic=_requests(
            count=60, burst=3, size=300, think_ms="0-4", server_extra=("--reply-bytes", "3000")
        ),
        rules=(_random_drop(2), _random_drop(2, where="sender")),
        line_drops=(("to_receiver", "data", 2.0), ("to_sender", "data", 2.0)),
        rtt_ms=10.0,
        sysctls=(("sender", "net.ipv4.tcp_autocorking", "0"),),
        capture=CapturePoint(where="mid"),
        expected=frozenset({"tlp"}),
        possible=frozenset({"fast", "rto", "rto_recovery", "syn"}),
        twins=(),
    ),
    Scenario(
        name="bulk_loss_out",
        description="A one-way capture: tcpdump -Q out on the sender (data, SYN and FIN "
        "only; not one ACK). Bulk 600 KB on each of 2 connections at RTT 20 ms, "
        "3% of the data dropped at the receiver. The retransmissions are in the "
        "capture (the same bytes twice); what caused them is not.",
        traffic=_bulk(600_000, conns=2),
        rules=(_random_drop(3),),
        rtt_ms=20.0,
        capture=CapturePoint(where="sender", direction="out"),
        expected=frozenset({"fast"}),
        possible=_RANDOM_LOSS_POSSIBLE,
        twins=("v6", "notso"),
    ),
    Scenario(
        name="bulk_loss_in",
        description="A one-way capture at the receiver: tcpdump -Q in (the data as it "
        "arrived, no ACKs). Bulk 600 KB on each of 2 connections at RTT 20 ms, 3% "
        "of the data lost before the capture point (delay line): a lost "
        "segment's only copy in the capture is its retransmission.",
        traffic=_bulk(600_000, conns=2),
        line_drops=(("to_receiver", "data", 3.0),),
        rtt_ms=20.0,
        capture=CapturePoint(where="receiver", direction="in"),
        expected=frozenset({"fast"}),
        possible=_RANDOM_LOSS_POSSIBLE,
        twins=("v6", "notso"),
    ),
    Scenario(
        name="reply_loss_srchost",
        description="A one-way capture by filter: at the client, `src host <server>` (only "
        "what the server sent), while the server retransmits: 40 requests at "
        "RTT 20 ms, 30 KB replies, 3% of the server's non-SYN packets lost "
        "before the capture point (delay line).",
        traffic=_requests(
            count=40, burst=1, size=100, think_ms="0-2", server_extra=("--reply-bytes", "30000")
        ),
        line_drops=(("to_sender", "data", 3.0),),
        rtt_ms=20.0,
        retransmitter="server",
        capture=CapturePoint(where="receiver", filter="src host {sender}"),
        expected=frozenset({"fast"}),
        possible=frozenset({"tlp", "rto", "rto_recovery"}),
        twins=("v6",),
    ),
    Scenario(
        name="reorder_rcv_rtt5",
        description="Reordering seen at the receiver: bulk 800 KB at RTT 5 ms, TSO off; "
        "the delay line holds 3% of the data frames 2 ms longer, so later ones "
        "overtake them. Those arrive after higher ones though the sender sent "
        "them once; RACK may still resend some (a spurious fast retransmit, "
        "D-SACKed), and only those are retransmissions. The 300th packet is "
        "dropped at the receiver (after the capture point), so one real fast "
        "retransmit is certain.",
        traffic=_bulk(800_000),
        rules=(Rule("tcp dport {port} ct original packets 300 drop"),),
        rtt_ms=5.0,
        tso=False,
        reorder_pct=3.0,
        reorder_ms=2.0,
        capture=CapturePoint(where="receiver"),
        expected=frozenset({"fast"}),
        possible=frozenset({"tlp"}),
        twins=("v6",),
    ),
    Scenario(
        name="reorder_rcv_rtt20",
        description="Reordering seen at the receiver: bulk 700 KB on each of 2 connections "
        "at RTT 20 ms, 3% of the data frames held 6 ms longer than the rest, and "
        "each flow's 100th packet dropped at the receiver (after the capture "
        "point). Overtaken originals must not be retransmissions; the fast "
        "retransmits (the needed ones, and the spurious D-SACKed ones) are.",
        traffic=_bulk(700_000, conns=2),
        rules=(Rule("tcp dport {port} ct original packets 100 drop"),),
        rtt_ms=20.0,
        reorder_pct=3.0,
        reorder_ms=6.0,
        capture=CapturePoint(where="receiver"),
        expected=frozenset({"fast"}),
        possible=frozenset({"tlp"}),
        twins=("notso",),
    ),
    Scenario(
        name="reorder_mid_rtt50",
        description="Reordering seen mid-path: bulk 700 KB on each of 2 connections at RTT "
        "50 ms, tap in the middle; 2% of the data frames held 12 ms longer "
        "before the tap, and 1% of the data lost after it (at the receiver).",
        traffic=_bulk(700_000, conns=2),
        rules=(_random_drop(1),),
        rtt_ms=50.0,
        reorder_pct=2.0,
        reorder_ms=12.0,
        capture=CapturePoint(where="mid"),
        expected=frozenset({"fast"}),
        possible=_RANDOM_LOSS_POSSIBLE,
        twins=("v6", "notso"),
    ),
    Scenario(
        name="jitter_rcv_rtt30",
        description="Jitter seen at the receiver (the issue's case: neighbours overtaken by "
        "1-2 ms at a 30 ms RTT): bulk 1 MB at RTT 30 ms, TSO off, every data "
        "frame delayed by an extra 0-3 ms, and 1% of the data lost before the "
        "capture point (delay line).",
        traffic=_bulk(1_000_000),
        rtt_ms=30.0,
        tso=False,
        jitter_ms=3.0,
        line_drops=(("to_receiver", "data", 1.0),),
        capture=CapturePoint(where="receiver"),
        expected=frozenset({"fast"}),
        possible=_RANDOM_LOSS_POSSIBLE,
        twins=("v6",),
    ),
    # --- Loss-state re-sends that no timer and no duplicate ACK caused --------------------
    Scenario(
        name="tfo_nocookie",
        description="TCP Fast Open whose SYN data the server does not take: the client may "
        "send data without a cookie (net.ipv4.tcp_fastopen=0x5: client on, "
        "TFO_CLIENT_NO_COOKIE), the server has TFO off, so its SYN-ACK covers "
        "the SYN alone. tcp_rcv_fastopen_synack marks the SYN's data lost and "
        "tcp_non_congestion_loss_retransmit resends it at once, in the Loss "
        "state (kernel reason rto_recovery, no timer). 4 connections one after "
        "another at RTT 10 ms, each 3 requests.",
        traffic=_requests(count=3, burst=1, size=300, client_extra=("--conns", "4", "--fastopen")),
        rtt_ms=10.0,
        sysctls=(
            ("sender", "net.ipv4.tcp_fastopen", "5"),
            ("receiver", "net.ipv4.tcp_fastopen", "0"),
        ),
        expected=frozenset({"rto_recovery"}),
        exact={"TcpExtTCPSlowStartRetrans": 4, "TcpExtTCPTimeouts": 0},
        twins=("v6",),
    ),
    Scenario(
        name="pmtu_drop",
        description="Path MTU discovery: a router between client and server whose link to "
        "the server has MTU 1000; the client (MTU 1500, DF set) sends 1448-byte "
        "segments, the router drops them and answers ICMP fragmentation-needed "
        "(MTU 1000). tcp_v4_mtu_reduced lowers the MSS and tcp_simple_retransmit "
        "resends every segment now too big, in the Loss state "
        "(tcp_non_congestion_loss_retransmit: kernel reason rto_recovery). "
        "Bulk 300 KB; the capture at the client holds the ICMP messages.",
        traffic=_bulk(300_000),
        router_mtu=1000,
        capture=CapturePoint(icmp=True),
        expected=frozenset({"rto_recovery"}),
        possible=frozenset({"fast", "tlp"}),
        twins=("notso",),
    ),
    Scenario(
        name="pmtu_drop_v6",
        description="pmtu_drop in IPv6: the router's link to the server has MTU 1280 (the "
        "IPv6 minimum) and answers ICMPv6 packet-too-big; tcp_v6_mtu_reduced, "
        "then tcp_simple_retransmit as in IPv4.",
        traffic=_bulk(300_000),
        family=6,
        router_mtu=1280,
        capture=CapturePoint(icmp=True),
        expected=frozenset({"rto_recovery"}),
        possible=frozenset({"fast", "tlp"}),
        twins=("notso",),
    ),
    *SWEEP_SCENARIOS,
)


#: Catalogue scenarios captured elsewhere (the sweep, docs/sweep.md): blackhole_rto at the
#: server (a hole in it hides the ACK that moved snd_una to the timeouts' head), and
#: sack_off_loss one way at the client (-Q out: NewReno's one-MSS resends against the Loss
#: state's walk, read without ACKs).
_ELSEWHERE = (
    replace(
        next(s for s in BASE_SCENARIOS if s.name == "blackhole_rto"),
        name="blackhole_rto_rcv",
        capture=CapturePoint(where="receiver"),
        twins=(),
    ),
    replace(
        next(s for s in BASE_SCENARIOS if s.name == "sack_off_loss"),
        name="sack_off_loss_out",
        capture=CapturePoint(where="sender", direction="out"),
        twins=(),
    ),
)
BASE_SCENARIOS = (*BASE_SCENARIOS, *_ELSEWHERE)


def variants(scenario: Scenario) -> list[Scenario]:
    """The twins of a base scenario that its ``twins`` asks for: IPv6 (``_v6``), TSO off
    (``_notso``), both (``_v6_notso``). By default all three, from an IPv4, TSO-on base."""
    out = []
    for twin in scenario.twins:
        family = 6 if "v6" in twin else scenario.family
        tso = False if "notso" in twin else scenario.tso
        if ("v6" in twin and scenario.family != 4) or ("notso" in twin and not scenario.tso):
            raise ValueError(f"{scenario.name}: twin {twin} needs an IPv4, TSO-on base")
        out.append(
            replace(scenario, name=f"{scenario.name}_{twin}", family=family, tso=tso, twins=())
        )
    return out


#: Every scenario by name: the base ones and their variants.
SCENARIOS: dict[str, Scenario] = {}
for _base in BASE_SCENARIOS:
    for _sc in (_base, *variants(_base)):
        SCENARIOS[_sc.name] = _sc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retranscope.lab.scenarios",
        description="Run lab scenarios; print kernel counters.",
    )
    parser.add_argument("names", nargs="*", help="scenario names (default: all)")
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        for sc in SCENARIOS.values():
            reasons = ",".join(sorted(sc.expected)) + (
                f" (+maybe {','.join(sorted(sc.possible))})" if sc.possible else ""
            )
            print(
                f"{sc.name:26} v{sc.family} tso={'on' if sc.tso else 'off':3} "
                f"rtt_ms={sc.rtt_ms:<4g} {sc.retransmitter:6} {reasons}"
            )
        return 0
    unknown = [n for n in args.names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenarios {unknown}; --list shows them", file=sys.stderr)
        return 2
    status = 0
    for name in args.names or list(SCENARIOS):
        sc = SCENARIOS[name]
        with sc.lab() as lab:
            res = run_scenario(lab, sc)
        deltas = {k: v for k, v in res.deltas().items() if v}
        print(
            json.dumps(
                {
                    "scenario": name,
                    "ok": res.ok,
                    "duration_s": round(res.duration_s, 3),
                    "ns": sc.retransmitter,
                    "deltas": deltas,
                }
            ),
            flush=True,
        )
        status |= 0 if res.ok else 1
    return status


if __name__ == "__main__":
    sys.exit(main())
