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

The client always runs in ``lab.sender_ns`` and the server in ``lab.receiver_ns``;
``scenario.retransmitter`` says which side retransmits (``"server"`` only for
``synack_drop``), and :meth:`Scenario.retransmitting_ns` maps it to the namespace whose
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

from retranscope.lab.netns import Lab, LabError, RuleHandle, read_first_line, stderr_if_exited

REASONS = ("fast", "tlp", "rto", "rto_recovery", "syn", "synack")
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
    """What runs: one server, one client program (``bulk``/``requests``/``connect``)."""

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
    #: Per-namespace sysctls, (where, key, value), set before the traffic starts.
    sysctls: tuple[tuple[str, str, str], ...] = ()

    def __post_init__(self) -> None:
        unknown = (self.expected | self.possible) - set(REASONS)
        if unknown:
            raise ValueError(f"{self.name}: unknown reasons {sorted(unknown)}")
        if self.retransmitter not in ("client", "server"):
            raise ValueError(f"{self.name}: retransmitter must be 'client' or 'server'")

    def retransmitting_ns(self, lab: Lab) -> str:
        return lab.sender_ns if self.retransmitter == "client" else lab.receiver_ns

    def lab(self, **kw: Any) -> Lab:
        """A Lab built the way this scenario needs (not started)."""
        return Lab(rtt_ms=self.rtt_ms, tso=self.tso, ipv6=self.family == 6, **kw)

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
                problems.append(f"{counter} moved by {moved}, expected {value}"
                                + (f" (+ up to {spurious} D-SACKed)" if spurious else ""))
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
    return [t.client, "--host", lab.receiver_addr(scenario.family), "--port",
            str(scenario.port), "--timeout-s", f"{t.timeout_s:g}", *t.client_args]


def server_args(scenario: Scenario) -> list[str]:
    """Arguments of ``python -m retranscope.lab.traffic`` for the scenario's server."""
    t = scenario.traffic
    return ["server", "--port", str(scenario.port),
            "--family", str(scenario.family), "--mode", t.server_mode,
            "--timeout-s", f"{t.timeout_s + 5:g}", "--max-conns", str(t.conns),
            *t.server_args]


def check_lab(lab: Lab, scenario: Scenario) -> None:
    """Refuse a lab built differently from what the scenario's ground truth assumes."""
    if lab.tso != scenario.tso or abs(lab.rtt_ms - scenario.rtt_ms) > 1e-9:
        raise LabError(f"scenario {scenario.name} needs tso={scenario.tso} "
                       f"rtt_ms={scenario.rtt_ms}; lab has tso={lab.tso} rtt_ms={lab.rtt_ms}")
    if scenario.family == 6 and not lab.ipv6:
        raise LabError(f"scenario {scenario.name} is IPv6; the lab was built with ipv6=False")


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
    client: subprocess.Popen[str] | None = None
    try:
        line = read_first_line(server, timeout_s=SERVER_READY_TIMEOUT_S)
        if not line.startswith("LISTENING"):
            time.sleep(0.1)
            raise LabError(f"{scenario.name}: server did not start: {line!r} "
                           f"{stderr_if_exited(server)}")
        before = lab.tcp_counters(retrans_ns)
        for rule in scenario.rules:
            expr = rule.render(scenario.port)
            installed.append((rule, lab.add_rule(expr, ns=where_ns[rule.where])))
        start = time.monotonic()
        client = lab.pymodule(lab.sender_ns, TRAFFIC_MODULE, client_args(lab, scenario))
        pending = sorted((r for r in installed if r[0].remove_after_s is not None),
                         key=lambda r: r[0].remove_after_s or 0.0)
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
    return Traffic("bulk", ("--bytes", str(n_bytes), "--conns", str(conns)), "sink",
                   timeout_s=timeout_s)


def _requests(count: int, burst: int, size: int, think_ms: str = "0",
              timeout_s: float = 15.0) -> Traffic:
    return Traffic("requests", ("--count", str(count), "--burst", str(burst),
                                "--size", str(size)),
                   "echo-slow", ("--think-ms", think_ms), timeout_s=timeout_s)


_RANDOM_LOSS_POSSIBLE = frozenset({"tlp", "rto", "rto_recovery", "syn"})

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
        exact={"TcpRetransSegs": 1, "TcpExtTCPLossProbes": 1,
               "TcpExtTCPLossProbeRecovery": 1},
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
        rules=(Rule("tcp dport {port} tcp flags syn tcp sport != @once "
                    "add @once { tcp sport } drop"),),
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
            Rule("tcp sport {port} tcp flags & (syn|ack) == syn|ack tcp dport != @once "
                 "add @once { tcp dport } drop", where="sender"),
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
)


def variants(scenario: Scenario) -> list[Scenario]:
    """The IPv6, TSO-off and IPv6+TSO-off twins of a base (IPv4, TSO on) scenario."""
    if scenario.family != 4 or not scenario.tso:
        raise ValueError(f"{scenario.name}: variants derive from an IPv4, TSO-on scenario")
    return [
        replace(scenario, name=f"{scenario.name}_v6", family=6),
        replace(scenario, name=f"{scenario.name}_notso", tso=False),
        replace(scenario, name=f"{scenario.name}_v6_notso", family=6, tso=False),
    ]


#: Every scenario by name: the base ones and their variants.
SCENARIOS: dict[str, Scenario] = {}
for _base in BASE_SCENARIOS:
    for _sc in (_base, *variants(_base)):
        SCENARIOS[_sc.name] = _sc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retranscope.lab.scenarios",
                                     description="Run lab scenarios; print kernel counters.")
    parser.add_argument("names", nargs="*", help="scenario names (default: all)")
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        for sc in SCENARIOS.values():
            reasons = ",".join(sorted(sc.expected)) + (
                f" (+maybe {','.join(sorted(sc.possible))})" if sc.possible else "")
            print(f"{sc.name:26} v{sc.family} tso={'on' if sc.tso else 'off':3} "
                  f"rtt_ms={sc.rtt_ms:<4g} {sc.retransmitter:6} {reasons}")
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
        print(json.dumps({"scenario": name, "ok": res.ok, "duration_s": round(res.duration_s, 3),
                          "ns": sc.retransmitter, "deltas": deltas}), flush=True)
        status |= 0 if res.ok else 1
    return status


if __name__ == "__main__":
    sys.exit(main())
