"""The lab: namespaces come and go cleanly, the delay line gives the RTT it is asked for,
and every scenario moves the kernel's own per-namespace counters the way it says.

The counters (/proc/net/snmp, /proc/net/netstat read inside the namespace) are per network
namespace, so they are exact ground truth for the lab's flows: nothing else runs there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from retranscope.lab import netns as lab_netns
from retranscope.lab.capture import (
    CAPTURE_POINTS,
    CapturePoint,
    LabCapture,
    capture_meta,
    tap_delays,
)
from retranscope.lab.delay import parse_drop, tcp_kind
from retranscope.lab.netns import Lab, LabError, cleanup_stale, parse_counters
from retranscope.lab.scenarios import (
    BASE_SCENARIOS,
    REASON_COUNTERS,
    REASONS,
    SCENARIOS,
    TWINS,
    Rule,
    Scenario,
    run_scenario,
    variants,
)
from retranscope.lab.traffic import build_parser

PYTHON = sys.executable
#: The first catalogue: every one of these has all three twins.
ORIGINAL_BASES = (
    "fast_nth",
    "tail_drop_tlp",
    "blackhole_rto",
    "syn_drop",
    "synack_drop",
    "slow_server_tlp",
    "random_loss",
    "random_loss_rtt",
)


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is gone for our purpose once it is not running.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


_netns_problem: str | None = None


@pytest.fixture(scope="module")
def netns_ok() -> None:
    """Skip unless root with working `ip netns`, nft and ethtool."""
    global _netns_problem
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, nftables and ethtool")
    if _netns_problem is None:
        try:
            with Lab(ipv6=False):
                pass
            _netns_problem = ""
        except (LabError, OSError) as err:
            _netns_problem = f"cannot build a lab here ({err})"
    if _netns_problem:
        pytest.skip(_netns_problem)
    cleanup_stale()  # leftovers of earlier crashed runs would not hurt, but keep hosts tidy


# --- pure parts: no root needed -----------------------------------------------------------


def test_parse_counters_reads_snmp_netstat_and_snmp6() -> None:
    text = textwrap.dedent("""\
        Tcp: RtoAlgorithm RetransSegs InErrs
        Tcp: 1 17 0
        TcpExt: SyncookiesSent TCPLossProbes TCPFastRetrans
        TcpExt: 0 3 5
        Ip6InReceives                   	42
        """)
    counters = parse_counters(text)
    assert counters["TcpRetransSegs"] == 17
    assert counters["TcpExtTCPLossProbes"] == 3
    assert counters["TcpExtTCPFastRetrans"] == 5
    assert counters["Ip6InReceives"] == 42


def test_catalogue_is_consistent() -> None:
    assert set(ORIGINAL_BASES) <= {s.name for s in BASE_SCENARIOS}
    covered = set()
    for sc in SCENARIOS.values():
        assert sc.expected, sc.name
        assert sc.expected <= set(REASONS)
        covered |= sc.expected
        # expected counters must not also be forbidden
        assert not {REASON_COUNTERS[r] for r in sc.expected} & sc.forbidden_counters()
    assert covered == set(REASONS), "every reason has a scenario that must produce it"
    for base in BASE_SCENARIOS:
        twins = variants(base)
        assert {v.name for v in twins} == {f"{base.name}_{t}" for t in base.twins}
        assert {v.name for v in twins} <= set(SCENARIOS)
        for twin in twins:
            assert twin.family == (6 if "v6" in twin.name[len(base.name) :] else base.family)
            assert twin.tso == (base.tso and "notso" not in twin.name[len(base.name) :])
            assert (twin.rules, twin.sysctls, twin.rtt_ms, twin.mtu) == (
                base.rules,
                base.sysctls,
                base.rtt_ms,
                base.mtu,
            )
    for name in ORIGINAL_BASES:  # the first catalogue keeps all three twins
        assert {v.name for v in variants(SCENARIOS[name])} == {f"{name}_{t}" for t in TWINS}
    assert len(SCENARIOS) == len(BASE_SCENARIOS) + sum(len(b.twins) for b in BASE_SCENARIOS)
    assert SCENARIOS["synack_drop"].retransmitter == "server"
    assert SCENARIOS["server_reply_loss"].retransmitter == "server"
    assert SCENARIOS["random_loss_rtt"].rtt_ms == 20.0


def test_catalogue_is_diverse() -> None:
    """The corpus is only as good as the ways it makes the kernel retransmit: RTTs from
    veth to 100 ms, SACK and timestamps off, a small MTU, reordering and jitter, loss in
    both directions, app-limited senders, the server retransmitting."""
    base = {s.name: s for s in BASE_SCENARIOS}
    assert len(base) >= len(ORIGINAL_BASES) + 12
    assert {s.rtt_ms for s in base.values()} >= {0.0, 5.0, 10.0, 20.0, 50.0, 100.0}
    sysctls = {(k, v) for s in base.values() for _, k, v in s.sysctls}
    assert {
        ("net.ipv4.tcp_sack", "0"),
        ("net.ipv4.tcp_timestamps", "0"),
        ("net.ipv4.tcp_congestion_control", "bbr"),
    } <= sysctls
    assert any(s.mtu for s in base.values())
    assert any(s.reorder_pct for s in base.values()) and any(s.jitter_ms for s in base.values())
    assert any(s.nft_sets for s in base.values())
    assert {r.where for s in base.values() for r in s.rules} == {"receiver", "sender"}
    assert {s.traffic.client for s in base.values()} >= {"bulk", "requests", "connect", "trickle"}
    assert max(s.traffic.conns for s in base.values()) >= 4
    # No TLP without SACK (RFC 8985; tcp_schedule_loss_probe checks tcp_is_sack).
    for sc in SCENARIOS.values():
        if ("sender", "net.ipv4.tcp_sack", "0") in sc.sysctls:
            assert "tlp" not in sc.expected | sc.possible, sc.name


def test_variants_follow_twins() -> None:
    base = SCENARIOS["burst_loss"]
    assert not base.tso and base.twins == ("v6",)
    (twin,) = variants(base)
    assert (twin.name, twin.family, twin.tso, twin.twins) == ("burst_loss_v6", 6, False, ())
    with pytest.raises(ValueError, match="needs an IPv4, TSO-on base"):
        variants(replace(base, twins=("notso",)))
    with pytest.raises(ValueError, match="unknown twins"):
        replace(base, twins=("v5",))


def test_capture_points_of_the_catalogue() -> None:
    """Every capture point has scenarios, and each says how far its tap is from the hosts
    (the judge lines the sender's clock up with the tap's by it)."""
    labels = {sc.capture.label for sc in SCENARIOS.values()}
    assert labels == set(CAPTURE_POINTS)
    sc = SCENARIOS["reply_ack_loss_rcv"]  # the server retransmits; the capture is at the client
    assert (sc.retransmitter, sc.capture.where) == ("server", "receiver")
    assert tap_delays(sc) == {
        "client": {"delay_ms": 0.0, "extra_ms": 0.0},
        "server": {"delay_ms": 10.0, "extra_ms": 0.0},
    }
    meta = capture_meta(sc)
    assert meta["recorded_addrs"] == ["10.77.0.2"] and meta["capture"]["namespace"] == "client"
    assert meta["tap_delay_ms"] == {"10.77.0.1": 0.0, "10.77.0.2": 10.0}
    mid = SCENARIOS["reorder_mid_rtt50_v6"]
    assert tap_delays(mid) == {
        "client": {"delay_ms": 12.5, "extra_ms": 12.0},
        "server": {"delay_ms": 12.5, "extra_ms": 0.0},
    }
    assert capture_meta(mid)["capture_point"] == "mid"
    src = SCENARIOS["reply_loss_srchost"]
    assert src.capture.label == "one-way-in"
    assert capture_meta(src)["capture"]["filter"] == "tcp and (src host 10.77.0.2)"
    assert capture_meta(SCENARIOS["pmtu_drop_v6"])["capture"]["filter"] == (
        "(tcp or icmp or icmp6)"
    )
    for sc in SCENARIOS.values():  # rules can only act on the endpoints
        assert {r.where for r in sc.rules} <= {"sender", "receiver"}


def test_capture_point_validation() -> None:
    assert CapturePoint().is_default and CapturePoint().label == "sender"
    assert CapturePoint(direction="out").label == "one-way-out"
    assert CapturePoint(where="receiver", direction="in").label == "one-way-in"
    with pytest.raises(ValueError, match="where"):
        CapturePoint(where="router")
    with pytest.raises(ValueError, match="direction"):
        CapturePoint(direction="both")
    with pytest.raises(ValueError, match="no capture point label"):
        CapturePoint(where="mid", direction="in")
    with pytest.raises(ValueError, match="mid-path capture needs the delay line"):
        replace(SCENARIOS["reply_ack_loss_mid"], rtt_ms=0.0)


def _frame(payload: bytes = b"", flags: str = "A", v6: bool = False, udp: bool = False) -> bytes:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    ip = IPv6(src="fd00:77::1", dst="fd00:77::2") if v6 else IP(src="10.77.0.1", dst="10.77.0.2")
    l4 = (
        UDP(sport=1, dport=2)
        if udp
        else TCP(sport=1, dport=2, flags=flags, options=[("Timestamp", (1, 2))])
    )
    return bytes(Ether() / ip / l4 / payload)


def test_delay_line_tells_data_from_acks() -> None:
    assert tcp_kind(_frame(b"x" * 100, "PA")) == "data"
    assert tcp_kind(_frame(b"x" * 100, "PA", v6=True)) == "data"
    assert tcp_kind(_frame()) == "ack" and tcp_kind(_frame(v6=True)) == "ack"
    assert tcp_kind(_frame(b"x", "S")) == "other"  # SYN data (Fast Open) is spared
    assert tcp_kind(_frame(flags="FA")) == "other"
    assert tcp_kind(_frame(b"x", udp=True)) is None
    assert tcp_kind(b"\0" * 10 + _frame(b"y", "A"), offset=10) == "data"  # virtio_net_hdr
    assert parse_drop("a:data:2.5") == ("a", "data", 2.5)
    for bad in ("c:data:1", "a:syn:1", "a:data:x", "a:data:101", "a:data"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_drop(bad)


def test_lab_validates_taps_routers_and_line_drops() -> None:
    with pytest.raises(ValueError, match="delay line"):
        Lab(tap=True)
    with pytest.raises(ValueError, match="delay line"):
        Lab(line_drops=(("to_receiver", "data", 1.0),))
    with pytest.raises(ValueError, match="direction"):
        Lab(rtt_ms=10, line_drops=(("sideways", "data", 1.0),))
    with pytest.raises(ValueError, match="pct"):
        Lab(rtt_ms=10, line_drops=(("to_sender", "ack", 0),))
    with pytest.raises(ValueError, match="tap_split"):
        Lab(rtt_ms=10, tap=True, tap_split=1.0)
    with pytest.raises(ValueError, match="no delay line"):
        Lab(rtt_ms=10, router_mtu=1400)
    with pytest.raises(ValueError, match="IPv6"):
        Lab(router_mtu=1000)
    lab = Lab(rtt_ms=10, tap=True, ipv6=False)
    assert lab.middle_ns and len(set(lab.tap_ifs) | set(lab.middle_ifs)) == 4
    assert Lab(router_mtu=1000, ipv6=False).middle_ns is not None


def test_lab_refuses_a_scenario_it_was_not_built_for() -> None:
    from retranscope.lab.scenarios import check_lab

    sc = SCENARIOS["reorder_rtt20"]
    check_lab(sc.lab(), sc)
    with pytest.raises(LabError, match="reorder_pct"):
        check_lab(Lab(rtt_ms=sc.rtt_ms, tso=sc.tso), sc)
    sc = SCENARIOS["mtu1000_loss"]
    with pytest.raises(LabError, match="mtu"):
        check_lab(Lab(rtt_ms=sc.rtt_ms, tso=sc.tso, ipv6=False), sc)


def test_scenario_rejects_unknown_reason() -> None:
    with pytest.raises(ValueError, match="unknown reasons"):
        Scenario(
            name="x",
            description="",
            traffic=BASE_SCENARIOS[0].traffic,
            expected=frozenset({"rto_by_magic"}),
        )


def test_traffic_think_ms_accepts_a_range() -> None:
    args = build_parser().parse_args(["server", "--port", "1", "--think-ms", "15-30"])
    assert args.think_ms == (15.0, 30.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["server", "--port", "1", "--think-ms", "30-15"])


def test_traffic_trickle_arguments() -> None:
    args = build_parser().parse_args(
        [
            "trickle",
            "--host",
            "h",
            "--port",
            "1",
            "--count",
            "5",
            "--size",
            "100-1400",
            "--interval-ms",
            "10-40",
        ]
    )
    assert (args.count, args.size, args.interval_ms, args.nagle) == (
        5,
        (100.0, 1400.0),
        (10.0, 40.0),
        False,
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["trickle", "--host", "h", "--port", "1", "--size", "9-1"])


def test_lab_validates_arguments() -> None:
    with pytest.raises(ValueError):
        Lab(prefix="bad name")
    with pytest.raises(ValueError):
        Lab(rtt_ms=-1)
    with pytest.raises(ValueError, match="delay line"):
        Lab(reorder_pct=5, reorder_ms=5)  # reordering needs rtt_ms > 0
    with pytest.raises(ValueError):
        Lab(rtt_ms=10, reorder_pct=101)
    with pytest.raises(ValueError, match="IPv6"):
        Lab(mtu=1000)  # ipv6=True needs >= 1280
    with pytest.raises(ValueError):
        Lab(sysctls=(("middle", "net.ipv4.tcp_sack", "0"),))
    lab = Lab(prefix="averyveryverylongprefix")
    assert len(lab.sender_if) <= 15 and len(lab.middle_ifs[0]) <= 15
    assert lab.middle_ifs[0] != lab.middle_ifs[1]


# --- the lab itself -------------------------------------------------------------------------


@pytest.mark.root
def test_lab_up_and_down_leaves_nothing(netns_ok: None) -> None:
    with Lab() as lab:
        assert set(lab.namespaces) <= _netns_names()
        assert lab.middle_ns is None
        server = lab.pymodule(
            lab.receiver_ns,
            "retranscope.lab.traffic",
            ["server", "--port", "5001", "--max-conns", "1"],
        )
        assert server.stdout.readline().startswith("LISTENING")
        res = lab.run(
            lab.sender_ns,
            [
                PYTHON,
                "-m",
                "retranscope.lab.traffic",
                "connect",
                "--host",
                lab.receiver_addr(4),
                "--port",
                "5001",
            ],
        )
        assert json.loads(res.stdout)["ok"] is True
        sleeper = lab.popen(lab.sender_ns, ["sleep", "600"])
        pids = [server.pid, sleeper.pid]
        names = lab.namespaces
    assert not set(names) & _netns_names()
    assert all(_pid_gone(pid) for pid in pids)


@pytest.mark.root
def test_lab_cleans_up_when_the_body_raises(netns_ok: None) -> None:
    names: list[str] = []
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(rtt_ms=10) as lab:
            names = lab.namespaces
            assert lab.delay_proc is not None
            pids = [lab.popen(lab.receiver_ns, ["sleep", "600"]).pid, lab.delay_proc.pid]
            raise RuntimeError("boom")
    assert len(names) == 3
    assert not set(names) & _netns_names()
    assert all(_pid_gone(pid) for pid in pids)


@pytest.mark.root
def test_lab_refuses_foreign_namespaces_and_shell_strings(netns_ok: None) -> None:
    with Lab(ipv6=False) as lab:
        with pytest.raises(LabError):
            lab.popen("some-other-ns", ["true"])
        with pytest.raises(LabError):
            lab.add_rule("tcp dport 1 drop", ns="some-other-ns")
        with pytest.raises(TypeError):
            lab.popen(lab.sender_ns, "sleep 1")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            lab.sysctl(lab.sender_ns, "kernel.panic", 1)
        with pytest.raises(LabError):
            lab.receiver_addr(6)


@pytest.mark.root
def test_rules_add_remove_clear(netns_ok: None) -> None:
    with Lab(ipv6=False) as lab:

        def listed(ns: str) -> str:
            return lab.run(ns, ["nft", "list", "chain", "inet", "retranscope", "input"]).stdout

        rule = lab.add_rule("tcp dport 5001 ct original packets 6 drop")
        assert rule.ns == lab.receiver_ns and rule.handle > 0
        assert "ct original packets 6 drop" in listed(lab.receiver_ns)
        lab.remove_rule(rule)
        assert "drop" not in listed(lab.receiver_ns)
        lab.add_rule("tcp dport 5001 drop")
        lab.add_rule("tcp sport 5001 drop", ns=lab.sender_ns)
        assert len(lab.rules) == 2
        lab.clear_rules()
        assert lab.rules == []
        assert "drop" not in listed(lab.receiver_ns) + listed(lab.sender_ns)


@pytest.mark.root
def test_mtu_and_sysctls_reach_the_lab(netns_ok: None) -> None:
    sysctls = (("sender", "net.ipv4.tcp_sack", "0"), ("receiver", "net.ipv4.tcp_timestamps", "0"))
    with Lab(rtt_ms=4, ipv6=False, mtu=1000, sysctls=sysctls) as lab:
        assert lab.middle_ns is not None
        for ns, ifname in (
            (lab.sender_ns, lab.sender_if),
            (lab.receiver_ns, lab.receiver_if),
            (lab.middle_ns, lab.middle_ifs[0]),
            (lab.middle_ns, lab.middle_ifs[1]),
        ):
            info = json.loads(lab.run(ns, ["ip", "-j", "link", "show", "dev", ifname]).stdout)
            assert info[0]["mtu"] == 1000, (ns, ifname)

        def value(ns: str, key: str) -> str:
            return lab.run(ns, ["sysctl", "-n", key]).stdout.strip()

        assert value(lab.sender_ns, "net.ipv4.tcp_sack") == "0"
        assert value(lab.receiver_ns, "net.ipv4.tcp_sack") == "1"
        assert value(lab.receiver_ns, "net.ipv4.tcp_timestamps") == "0"
        assert value(lab.sender_ns, "net.ipv4.tcp_timestamps") == "1"
        # Frames of 1000 bytes cross the delay line; the MSS follows the MTU.
        server = lab.pymodule(
            lab.receiver_ns,
            "retranscope.lab.traffic",
            ["server", "--port", "5001", "--max-conns", "1"],
        )
        assert server.stdout.readline().startswith("LISTENING")
        res = lab.run(
            lab.sender_ns,
            [
                PYTHON,
                "-m",
                "retranscope.lab.traffic",
                "bulk",
                "--bytes",
                "300000",
                "--host",
                lab.receiver_addr(4),
                "--port",
                "5001",
            ],
        )
        assert json.loads(res.stdout)["ok"] is True


@pytest.mark.root
def test_delay_line_reorders_and_jitters_when_asked(netns_ok: None) -> None:
    """Held-back frames are overtaken: the receiver sees out-of-order data (its
    TcpExtTCPOFOQueue moves); a plain delay line keeps order (checked by the lab's RPS
    steering and every other scenario)."""
    for kw in ({"reorder_pct": 10.0, "reorder_ms": 5.0}, {"jitter_ms": 3.0}):
        with Lab(rtt_ms=10, ipv6=False, tso=False, disorder_seed=7, **kw) as lab:
            server = lab.pymodule(
                lab.receiver_ns,
                "retranscope.lab.traffic",
                ["server", "--port", "5001", "--max-conns", "1"],
            )
            assert server.stdout.readline().startswith("LISTENING")
            before = lab.tcp_counters(lab.receiver_ns)
            res = lab.run(
                lab.sender_ns,
                [
                    PYTHON,
                    "-m",
                    "retranscope.lab.traffic",
                    "bulk",
                    "--bytes",
                    "1000000",
                    "--host",
                    lab.receiver_addr(4),
                    "--port",
                    "5001",
                ],
            )
            assert json.loads(res.stdout)["ok"] is True
            ofo = (
                lab.tcp_counters(lab.receiver_ns)["TcpExtTCPOFOQueue"] - before["TcpExtTCPOFOQueue"]
            )
            stats = lab.delay_stats()
        assert stats is not None and stats["send_errors"] == 0, stats
        if "reorder_pct" in kw:
            assert 0.03 * stats["arrivals"] < stats["held_back"] < 0.2 * stats["arrivals"]
        assert ofo > 0, (kw, stats)


@pytest.mark.root
def test_tso_setting_reaches_the_sender_interface(netns_ok: None) -> None:
    for tso in (True, False):
        with Lab(tso=tso, ipv6=False) as lab:
            out = lab.run(lab.sender_ns, ["ethtool", "-k", lab.sender_if]).stdout
            line = next(ln for ln in out.splitlines() if ln.startswith("tcp-segmentation-offload:"))
            assert line.split(":")[1].split()[0] == ("on" if tso else "off")


@pytest.mark.root
@pytest.mark.parametrize("family", [4, 6])
def test_delay_line_gives_the_configured_rtt(netns_ok: None, family: int) -> None:
    """20 ms configured: the kernel times the TCP handshake (one RTT) at 20-21 ms.

    tcpi_rtt is timed in softirq, so a busy machine does not inflate it the way it inflates
    the client's own connect() time (checked more loosely)."""
    with Lab(rtt_ms=20) as lab:
        server = lab.pymodule(
            lab.receiver_ns,
            "retranscope.lab.traffic",
            ["server", "--port", "5001", "--family", str(family)],
        )
        assert server.stdout.readline().startswith("LISTENING")
        rtts_ms, connects_ms = [], []
        for _ in range(5):
            res = lab.run(
                lab.sender_ns,
                [
                    PYTHON,
                    "-m",
                    "retranscope.lab.traffic",
                    "connect",
                    "--host",
                    lab.receiver_addr(family),
                    "--port",
                    "5001",
                ],
            )
            out = json.loads(res.stdout)
            rtts_ms.append(out["tcpi_rtt_us"] / 1000.0)
            connects_ms.append(out["connect_s"] * 1000.0)
        # A bulk transfer also crosses it intact, TSO super-frames included (vnet headers).
        res = lab.run(
            lab.sender_ns,
            [
                PYTHON,
                "-m",
                "retranscope.lab.traffic",
                "bulk",
                "--bytes",
                "1000000",
                "--host",
                lab.receiver_addr(family),
                "--port",
                "5001",
            ],
        )
        assert json.loads(res.stdout)["ok"] is True
        stats = lab.delay_stats()
    assert 19.8 <= statistics.median(rtts_ms) <= 22.0, rtts_ms
    assert 19.8 <= min(connects_ms) <= 23.0, connects_ms
    assert stats is not None and stats["forwarded"] > 0
    assert stats["dropped_queue_full"] == 0 and stats["send_errors"] == 0


_CHILD = textwrap.dedent("""\
    import sys, time
    from retranscope.lab.netns import Lab
    lab = Lab(rtt_ms=float(sys.argv[1])).start()
    print(lab.prefix, lab.delay_proc.pid if lab.delay_proc else 0, flush=True)
    time.sleep(60)
    """)


@pytest.mark.root
def test_sigterm_cleans_up(netns_ok: None) -> None:
    with subprocess.Popen([PYTHON, "-c", _CHILD, "10"], stdout=subprocess.PIPE, text=True) as child:
        try:
            prefix, delay_pid = child.stdout.readline().split()  # type: ignore[union-attr]
            names = {f"{prefix}-snd", f"{prefix}-rcv", f"{prefix}-mid"}
            assert names <= _netns_names()
            child.send_signal(signal.SIGTERM)
            # The handler cleans up, then the default action still happens.
            assert child.wait(timeout=20) == -signal.SIGTERM
        finally:
            if child.poll() is None:
                child.kill()
    assert not names & _netns_names()
    assert _pid_gone(int(delay_pid))


@pytest.mark.root
def test_cleanup_stale_removes_only_dead_runs(netns_ok: None) -> None:
    with subprocess.Popen([PYTHON, "-c", _CHILD, "10"], stdout=subprocess.PIPE, text=True) as child:
        try:
            prefix, delay_pid = child.stdout.readline().split()  # type: ignore[union-attr]
        finally:
            child.kill()  # SIGKILL: no handler runs, the namespaces stay behind
            child.wait()
    names = {f"{prefix}-snd", f"{prefix}-rcv", f"{prefix}-mid"}
    assert names <= _netns_names()
    # PR_SET_PDEATHSIG: the delay line went with its parent.
    deadline = time.monotonic() + 5
    while not _pid_gone(int(delay_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pid_gone(int(delay_pid))
    with Lab(ipv6=False) as live:
        removed = cleanup_stale()
        # (A parallel run's own cleanup_stale may have been first: the owner is dead.)
        assert not names & _netns_names()
        assert set(live.namespaces) <= _netns_names(), "a live lab of this process was removed"
    # Someone else's namespaces are never candidates.
    assert all(
        lab_netns.re.fullmatch(lab_netns.DEFAULT_STALE_PATTERN, n.rpartition("-")[0])
        for n in removed
    )


# --- scenarios against the kernel's counters ------------------------------------------------


def _run_and_check(sc: Scenario) -> tuple[list[str], dict[str, int], dict[str, int]]:
    with sc.lab() as lab:
        result = run_scenario(lab, sc)
        client_side = lab.tcp_counters(lab.sender_ns)
        pids = [p.pid for p in lab._procs]
        # The scenario took its rules and extra sets away with it.
        for ns in (lab.sender_ns, lab.receiver_ns):
            table = lab.run(ns, ["nft", "list", "table", "inet", "retranscope"]).stdout
            assert "drop" not in table and "set once" in table
            assert not any(f"set {name} " in table for _, name, _ in sc.nft_sets)
    assert all(_pid_gone(pid) for pid in pids)
    deltas = result.deltas()
    if not result.ok:
        # Random loss can stack RTO backoffs past the client's timeout (bulk_ack_loss_rcv:
        # 2% data and 40% ACK loss, once in CI): that run is retried like any run of
        # unlucky traffic; a client that never finishes fails every run.
        return [f"client: {result.client_returncode} {result.client_output}"], deltas, client_side
    if result.duration_s > 5.0:
        # Not a failure (no timing assertions in tests): random loss can stack RTO
        # backoffs past it (reqresp_loss_both_v6 took 5.5 s once), but a scenario that is
        # always slow makes the suite slow, so say so.
        warnings.warn(f"{sc.name} took {result.duration_s:.1f} s (aim: under 5 s)", stacklevel=1)
    problems = sc.check(deltas)
    # The mechanism a scenario is about takes the same retries as its reasons: on a loaded
    # machine the user-space delay line can fall behind and drop frames of its own, and a
    # reordering run then has real loss and no D-SACK (seen once under CI plus two other
    # test runs). A bug fails every run.
    try:
        _check_mechanism(sc, deltas)
    except AssertionError as exc:
        problems.append(f"mechanism: {str(exc).splitlines()[0]}")
    return problems, deltas, client_side


@pytest.mark.root
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_moves_kernel_counters(netns_ok: None, name: str) -> None:
    sc = SCENARIOS[name]
    problems, deltas, client_side = _run_and_check(sc)
    # On an idle machine every scenario passed every run (see the report). On a loaded one
    # an ACK clock stalled past the ~2 ms PTO of a veth RTT adds a genuine TLP: a run of
    # different traffic, not a lab bug. And a scenario of random loss that must show a
    # reason (a probe among 60 bursts at 4% loss, say) misses it in some runs: measured
    # under load, 20 runs each, reqresp_loss_both 3 (no TLP), reqresp_loss_mid 1,
    # nosack_reqresp 1 (no data segment of ~80 lost: 0.96^80 = 4%). Three tries left
    # reqresp_loss_both and its v6 twin failing about one CI run in 150 (2 x 0.15^3); six
    # make it one in 40,000 (2 x 0.15^6), and 1 in 700 were the miss rate twice that.
    # Only unlucky runs are repeated, and a bug fails every run.
    tries = 6 if (sc.line_drops or any("numgen random" in r.expr for r in sc.rules)) else 2
    for attempt in range(1, tries):
        if not problems:
            break
        warnings.warn(
            f"{name}: run {attempt} off ({problems}; {deltas}), running it again", stacklevel=1
        )
        problems, deltas, client_side = _run_and_check(sc)
    assert problems == [], deltas
    if name.startswith("slow_server_tlp"):
        # No loss: every probe was needless, and the receiver said so with a D-SACK.
        assert not sc.rules
        assert deltas["TcpExtTCPDSACKRecv"] > 0, deltas
    if name.startswith("synack_drop"):
        # The client's SYN retransmission is due at the same moment as the server's SYN-ACK
        # one: whether it happens (and is dropped) depends on which timer runs first.
        assert client_side["TcpExtTCPSynRetrans"] in (0, 1)
    _check_client_side(sc, client_side)


def _check_client_side(sc: Scenario, client_side: dict[str, int]) -> None:
    """Mechanisms seen in the client's own counters (its namespace is fresh: absolute
    values are this scenario's)."""
    if sc.name.startswith("tfo_nocookie"):
        # Every SYN carried data and no SYN-ACK covered it (tcp_rcv_fastopen_synack).
        assert client_side["TcpExtTCPFastOpenActiveFail"] == 4, client_side
    if sc.name.startswith("pmtu_drop"):
        # The router's "too big" messages reached the sender (tcp_v4_err / tcp_v6_err).
        counter = "Icmp6InPktTooBigs" if sc.family == 6 else "IcmpInDestUnreachs"
        assert client_side[counter] > 0, client_side


def _check_mechanism(sc: Scenario, deltas: dict[str, int]) -> None:
    """What each newer scenario is about, beyond the reasons its counters show."""
    name = sc.name
    sack_off = ("sender", "net.ipv4.tcp_sack", "0") in sc.sysctls
    if sack_off:
        # SACK really is off: recovery is NewReno's, and no D-SACK can come back.
        assert deltas["TcpExtTCPSackRecovery"] == 0 and deltas["TcpExtTCPDSACKRecv"] == 0
        if deltas["TcpExtTCPFastRetrans"]:
            assert deltas["TcpExtTCPRenoRecovery"] > 0, deltas
    elif deltas["TcpExtTCPFastRetrans"]:
        assert deltas["TcpExtTCPSackRecovery"] > 0, deltas
    if name.startswith(("reorder_", "ack_loss_requests")):
        # Nothing was lost on the way to the server: the receiver said so with D-SACKs
        # (ack_loss_requests: unless the D-SACK's own ACK was dropped too, when the kernel
        # counts a TCPLossProbeRecovery instead).
        assert deltas["TcpExtTCPDSACKRecv"] + deltas["TcpExtTCPLossProbeRecovery"] > 0, deltas
        if name.startswith("reorder_"):
            assert deltas["TcpExtTCPDSACKRecv"] > 0, deltas
    if name.startswith("ack_blackhole_rto"):
        # Every retransmission was needless: D-SACKed, and the RTO's cwnd cut undone.
        assert deltas["TcpExtTCPDSACKRecv"] > 0, deltas
        assert deltas["TcpExtTCPLossUndo"] + deltas["TcpExtTCPSpuriousRTOs"] > 0, deltas
    if name.startswith("lost_retransmit"):
        assert deltas["TcpExtTCPLostRetransmit"] >= 1, deltas


def test_check_tolerates_only_dsacked_extras() -> None:
    sc = SCENARIOS["fast_nth_notso"]
    clean = {"TcpRetransSegs": 1, "TcpExtTCPFastRetrans": 1}
    assert sc.check(clean) == []
    noisy = {**clean, "TcpRetransSegs": 2, "TcpExtTCPLossProbes": 1, "TcpExtTCPDSACKRecv": 1}
    assert sc.check(noisy) == []
    wrong = {**clean, "TcpRetransSegs": 2, "TcpExtTCPLossProbes": 1}
    assert len(sc.check(wrong)) == 2
    assert sc.check({}) != []


# --- capture points: what each tap can and cannot see -----------------------------------


def _read(path: Path) -> dict[str, np.ndarray]:
    from retranscope.analyze.capture import read_capture

    return read_capture(path).packets


def _from(packets: dict[str, np.ndarray], addr: str) -> np.ndarray:
    from retranscope.schemas.packets import addr_from_str

    hi, lo, _ = addr_from_str(addr)
    return (packets["saddr_hi"] == hi) & (packets["saddr_lo"] == lo)


@pytest.mark.root
def test_receiver_capture_holds_acks_lost_after_it(netns_ok: None, tmp_path: Path) -> None:
    """tcpdump taps a frame before netfilter: the client's ACKs are in the capture at the
    client though the server's input drops every one, and the server, hearing none,
    probes and times out (a TLP then an RTO per connection)."""
    sc = SCENARIOS["reply_ack_loss_rcv"]
    with sc.lab() as lab:
        tap = LabCapture(lab, sc, tmp_path / "rcv.pcap")
        tap.wait_ready()
        result = run_scenario(lab, sc)
        stats = tap.stop()
    assert sc.check(result.deltas()) == [], result.deltas()
    assert stats["dropped_by_kernel"] == 0
    p = _read(tmp_path / "rcv.pcap")
    client = _from(p, lab.sender_addr(4))
    pure_acks = client & (p["payload_len"] == 0) & ((p["flags"] & 0x07) == 0)
    # Per connection: the handshake's ACK (which passes), then the dropped ones.
    assert pure_acks.sum() >= 2 * 5, int(pure_acks.sum())


@pytest.mark.root
def test_mid_tap_sees_loss_after_it_not_before(netns_ok: None, tmp_path: Path) -> None:
    """Frames the sender-side delay line drops never reach the tap; a capture at the
    sender holds them all. So: data frames at the sender - dropped before the tap = data
    frames at the tap."""
    base = SCENARIOS["bulk_loss_mid_notso"]
    sc = replace(
        base,
        rules=(),
        line_drops=(("to_receiver", "data", 5.0),),
        traffic=replace(base.traffic, client_args=("--bytes", "300000", "--conns", "1")),
    )
    at_sender = replace(sc, capture=CapturePoint())
    with sc.lab(disorder_seed=5) as lab:
        tap = LabCapture(lab, sc, tmp_path / "mid.pcap")
        near = LabCapture(lab, at_sender, tmp_path / "snd.pcap")
        tap.wait_ready()
        near.wait_ready()
        result = run_scenario(lab, sc)
        tap.stop()
        near.stop()
        stats = lab.delay_stats()
    assert result.ok and stats is not None
    client = lab.sender_addr(4)
    data = [
        int((_from(p, client) & (p["payload_len"] > 0)).sum())
        for p in (_read(tmp_path / "snd.pcap"), _read(tmp_path / "mid.pcap"))
    ]
    assert stats["dropped_data"] > 0
    assert data[0] - stats["dropped_data"] == data[1], (data, stats)


@pytest.mark.root
def test_one_way_capture_holds_only_what_the_sender_sent(netns_ok: None, tmp_path: Path) -> None:
    sc = replace(SCENARIOS["bulk_loss_out"], rules=())
    with sc.lab() as lab:
        tap = LabCapture(lab, sc, tmp_path / "out.pcap")
        tap.wait_ready()
        assert run_scenario(
            lab, replace(sc, rules=(Rule("tcp dport {port} ct original packets 20 drop"),))
        ).ok
        tap.stop()
    p = _read(tmp_path / "out.pcap")
    assert len(p["frame"]) > 100 and _from(p, lab.sender_addr(4)).all()
