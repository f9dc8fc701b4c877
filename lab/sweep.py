"""The sweep: lab scenarios beyond the corpus, recorded with the kernel's reasons, to find
where the capture-only analysis is wrong on what the corpus covers thinly (docs/sweep.md).

    sudo .venv/bin/python -m retranscope.lab.sweep --out /tmp/sweep/rec            # every round
    sudo .venv/bin/python -m retranscope.lab.sweep --out /tmp/sweep/rec --round 2  # one round
    .venv/bin/python -m retranscope.lab.sweep --derive /tmp/sweep/rec /tmp/sweep/derived
    .venv/bin/python -m retranscope.lab.judge /tmp/sweep/rec --csv frames.csv      # the scores

Round 1: sysctls and traffic at the sender (RACK, TLP, F-RTO, D-SACK, SACK off; RTT 0.2 to
300 ms; loss 0.2% to 10%, bursty, on the ACK path; Nagle, idle writes, 16 flows, a small
receive buffer, Reno, ECN, thin-stream linear timeouts, tcp_retries2; IPv6 twins).
Round 2: round 1's loss patterns captured at the receiver, mid-path, ``-Q out`` and ``-Q in``.
Round 3: the catalogue's scenarios at the receiver and mid-path, and loss in the delay line
(before the capture point). Round 4: reordering without timestamps or SACK (nothing but
time tells a reordered original from a re-send), the tap near either end, BBR, heavy ACK
loss; IPv4 and IPv6. Round 5: the catalogue captured one way (``-Q in``, ``-Q out``).
``--derive`` cuts each round-1 recording to start 30% in, 15% in with 1% of its frames
dropped, and drops 1% (make_corpus.derive_capture's edits).

A scenario here may expect nothing in particular (``possible`` is every reason): the sweep
looks for the analyzer's errors, and the kernel's events are the truth whatever it did.
Recordings already present are kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from retranscope.lab.capture import CapturePoint
from retranscope.lab.scenarios import (
    SCENARIOS,
    Rule,
    Scenario,
    Traffic,
    _bulk,
    _random_drop,
    _requests,
    _trickle,
)

ANY = frozenset({"fast", "tlp", "rto", "rto_recovery", "syn"})
NO_AUTOCORK = ("sender", "net.ipv4.tcp_autocorking", "0")
TS_OFF = ("sender", "net.ipv4.tcp_timestamps", "0")
SACK_OFF = ("sender", "net.ipv4.tcp_sack", "0")
POINTS = {
    "rcv": CapturePoint(where="receiver"),
    "mid": CapturePoint(where="mid"),
    "out": CapturePoint(where="sender", direction="out"),
    "in": CapturePoint(where="receiver", direction="in"),
}


def _s(name: str, traffic: Traffic, **kw) -> Scenario:
    return Scenario(
        name=name,
        description="sweep",
        traffic=traffic,
        expected=frozenset(),
        possible=ANY,
        twins=(),
        **kw,
    )


def _sysctl(key: str, value: str, where: str = "sender") -> tuple[str, str, str]:
    return (where, f"net.ipv4.{key}", value)


def _reqresp(count: int = 40) -> Traffic:
    return _requests(
        count=count, burst=3, size=300, think_ms="0-4", server_extra=("--reply-bytes", "3000")
    )


def _both_ways(pct: int) -> tuple[Rule, ...]:
    return (_random_drop(pct), _random_drop(pct, where="sender"))


def _no_syn_drop(spec: str) -> Rule:
    return Rule(f"tcp dport {{port}} tcp flags & syn == 0 numgen {spec} drop")


def round1() -> list[Scenario]:
    """Sysctls and traffic shapes, captured at the sender."""
    b2 = _bulk(2_000_000, conns=2)
    out = [
        _s("rack_off_loss", b2, rules=(_random_drop(3),), rtt_ms=20.0,
           sysctls=(_sysctl("tcp_recovery", "0"),)),
        _s("rack_off_heavy_notso", _bulk(1_000_000, conns=2), rules=(_random_drop(8),),
           rtt_ms=10.0, tso=False, sysctls=(_sysctl("tcp_recovery", "0"),)),
        _s("tlp_off_loss", b2, rules=(_random_drop(3),), rtt_ms=20.0,
           sysctls=(_sysctl("tcp_early_retrans", "0"),)),
        _s("tlp_off_reqresp", _reqresp(), rules=_both_ways(4), rtt_ms=10.0,
           sysctls=(NO_AUTOCORK, _sysctl("tcp_early_retrans", "0"))),
        _s("frto_off_blackhole", _bulk(3_000_000), rtt_ms=10.0,
           rules=(Rule("tcp sport {port} ct reply packets > 20 drop", where="sender",
                       remove_after_s=1.0),),
           sysctls=(_sysctl("tcp_frto", "0"),)),
        _s("frto_off_loss", _bulk(1_000_000, conns=2), rules=(_random_drop(6),), rtt_ms=20.0,
           tso=False, sysctls=(_sysctl("tcp_frto", "0"),)),
        _s("dsack_off_reorder", b2, rtt_ms=20.0, reorder_pct=3.0, reorder_ms=8.0,
           sysctls=(_sysctl("tcp_dsack", "0", "receiver"), _sysctl("tcp_dsack", "0"))),
        _s("rtt02_loss", _bulk(4_000_000, conns=2), rules=(_random_drop(3),), rtt_ms=0.2),
        _s("rtt300_loss", _bulk(400_000, conns=2, timeout_s=20.0),
           rules=(_no_syn_drop("random mod 100 < 2"),), rtt_ms=300.0),
        _s("loss01_bulk", _bulk(8_000_000, conns=2), rtt_ms=10.0,
           rules=(Rule("tcp dport {port} numgen random mod 1000 < 2 drop"),)),
        _s("loss10_rtt20", _bulk(600_000, conns=2), rtt_ms=20.0,
           rules=(_no_syn_drop("random mod 100 < 10"),)),
        _s("bursty_loss", b2, rules=(Rule("tcp dport {port} numgen inc mod 200 < 6 drop"),),
           rtt_ms=20.0, tso=False),
        _s("ack_path_loss", b2, rtt_ms=20.0, rules=(
            _random_drop(2), Rule("tcp sport {port} numgen random mod 100 < 10 drop",
                                  where="sender"))),
        _s("nagle_trickle", Traffic("trickle", ("--count", "120", "--size", "50-900",
                                                "--interval-ms", "2-15", "--nagle",
                                                "--seed", "3"), "sink"),
           rules=(_random_drop(4),), rtt_ms=20.0),
        _s("idle_trickle", _trickle(25, "100-3000", "100-400", seed=5),
           rules=(_random_drop(8),), rtt_ms=30.0),
        _s("many_flows", _bulk(250_000, conns=16), rules=(_random_drop(2),), rtt_ms=20.0),
        _s("small_rcvbuf", _bulk(1_000_000, conns=2), rules=(_random_drop(2),), rtt_ms=10.0,
           sysctls=(_sysctl("tcp_rmem", "4096 8192 16384", "receiver"),)),
        _s("reno_cc_loss", b2, rules=(_random_drop(3),), rtt_ms=20.0,
           sysctls=(_sysctl("tcp_congestion_control", "reno"),)),
        _s("ecn_loss", b2, rules=(_random_drop(3),), rtt_ms=10.0,
           sysctls=(_sysctl("tcp_ecn", "1"), _sysctl("tcp_ecn", "1", "receiver"))),
        _s("thin_linear_blackhole", _trickle(60, "100-400", "20-40", seed=2), rtt_ms=10.0,
           rules=(Rule("tcp dport {port} ct original packets > 20 drop", remove_after_s=2.0),),
           sysctls=(_sysctl("tcp_thin_linear_timeouts", "1"),)),
        _s("retries_giveup", _bulk(2_000_000, timeout_s=12.0), rtt_ms=5.0,
           rules=(Rule("tcp dport {port} ct original packets > 40 drop"),),
           sysctls=(_sysctl("tcp_retries2", "3"),)),
        _s("ts_off_reorder", b2, rules=(_random_drop(1),), rtt_ms=20.0, reorder_pct=3.0,
           reorder_ms=8.0, sysctls=(TS_OFF,)),
        _s("rack_off_reorder", b2, rules=(_random_drop(1),), rtt_ms=20.0, reorder_pct=3.0,
           reorder_ms=8.0, sysctls=(_sysctl("tcp_recovery", "0"),)),
        _s("nosack_reqresp", _reqresp(), rules=_both_ways(4), rtt_ms=10.0,
           sysctls=(NO_AUTOCORK, SACK_OFF)),
        _s("rack_nodupthresh", b2, rules=(_random_drop(3),), rtt_ms=20.0, tso=False,
           sysctls=(_sysctl("tcp_recovery", "5"),)),
        _s("server_bulk_loss", _requests(count=15, burst=1, size=100,
                                          server_extra=("--reply-bytes", "60000")),
           rules=(Rule("tcp sport {port} tcp flags & syn == 0 numgen random mod 100 < 3 drop",
                       where="sender"),),
           rtt_ms=20.0, retransmitter="server"),
    ]  # fmt: skip
    v6 = ("rack_off_loss", "tlp_off_reqresp", "bursty_loss", "ack_path_loss", "rtt02_loss")
    return out + [replace(s, name=f"{s.name}_v6", family=6) for s in out if s.name in v6]


ROUND2_BASES = (
    "rack_off_loss", "tlp_off_loss", "frto_off_loss", "loss10_rtt20", "bursty_loss",
    "ack_path_loss", "idle_trickle", "many_flows", "small_rcvbuf", "ts_off_reorder",
    "nosack_reqresp", "server_bulk_loss", "rtt300_loss", "thin_linear_blackhole",
    "frto_off_blackhole", "rack_nodupthresh", "dsack_off_reorder", "tlp_off_reqresp",
)  # fmt: skip


def round2() -> list[Scenario]:
    """Round 1's loss patterns captured at the receiver, mid-path and one way."""
    base = {s.name: s for s in round1()}
    return [
        replace(base[n], name=f"{n}__{p}", capture=cp)
        for p, cp in POINTS.items()
        for n in ROUND2_BASES
    ]


def round3() -> list[Scenario]:
    """The catalogue at the receiver and mid-path; loss before the capture point."""
    rcv = (
        "blackhole_rto", "tail_drop_tlp", "syn_drop", "slow_server_tlp", "burst_loss",
        "multi_flow_rtt100", "heavy_loss_rtt10", "reno_ts_off_loss", "server_reply_loss",
        "ack_loss_requests", "synack_drop", "fin_drop_rtt50", "tail_drop_nosack",
        "blackhole_long", "mtu1000_loss",
    )  # fmt: skip
    mid = (
        "lost_retransmit", "sack_off_loss", "fin_drop_rtt50", "trickle_loss",
        "ts_off_loss_rtt5", "burst_loss", "ack_blackhole_rto", "reqresp_loss_both",
        "nosack_heavy_rtt30", "multi_flow_rtt50", "syn_drop_twice", "server_reply_loss",
    )  # fmt: skip
    out = [replace(SCENARIOS[n], name=f"{n}__rcv", capture=POINTS["rcv"], twins=()) for n in rcv]
    out += [replace(SCENARIOS[n], name=f"{n}__mid", capture=POINTS["mid"], twins=()) for n in mid]
    base = {s.name: s for s in round1()}
    for n in ("loss10_rtt20", "many_flows", "rtt300_loss", "idle_trickle", "nosack_reqresp"):
        b = base[n]
        out.append(replace(
            b, name=f"{n}__rcv_linedrop", capture=POINTS["rcv"], rules=(), disorder_seed=5,
            line_drops=(("to_receiver", "data", 3.0), ("to_sender", "ack", 3.0)),
        ))  # fmt: skip
        out.append(replace(
            b, name=f"{n}__mid_linedrop", capture=POINTS["mid"], disorder_seed=6,
            line_drops=(("to_receiver", "data", 2.0), ("to_sender", "ack", 5.0)),
        ))  # fmt: skip
    return out


def round4() -> list[Scenario]:
    """Reordering without timestamps or SACK, the tap's position, BBR, heavy ACK loss."""
    out = []
    b = _bulk(1_500_000, conns=2)
    rr = {"rtt_ms": 20.0, "reorder_pct": 3.0, "reorder_ms": 6.0, "rules": (_random_drop(1),)}
    for fam, sfx in ((4, ""), (6, "_v6")):
        out += [
            _s(f"r4_reorder_ts0_rcv{sfx}", b, family=fam, sysctls=(TS_OFF,),
               capture=POINTS["rcv"], **rr),
            _s(f"r4_reorder_ts0_mid{sfx}", b, family=fam, sysctls=(TS_OFF,),
               capture=POINTS["mid"], tso=False, **rr),
            _s(f"r4_reorder_nosack_rcv{sfx}", b, family=fam, sysctls=(SACK_OFF,),
               capture=POINTS["rcv"], **rr),
            _s(f"r4_jitter_ts0_mid{sfx}", _bulk(1_000_000), family=fam, tso=False, rtt_ms=30.0,
               jitter_ms=3.0, line_drops=(("to_receiver", "data", 1.0),), disorder_seed=3,
               sysctls=(TS_OFF,), capture=POINTS["mid"]),
            _s(f"r4_bbr_rcv_linedrop{sfx}", b, family=fam, rtt_ms=20.0, disorder_seed=4,
               line_drops=(("to_receiver", "data", 2.0), ("to_sender", "ack", 2.0)),
               sysctls=(_sysctl("tcp_congestion_control", "bbr"),), capture=POINTS["rcv"]),
            _s(f"r4_tap_near_sender{sfx}", b, family=fam, rtt_ms=40.0, tap_split=0.1,
               rules=(_random_drop(2), _random_drop(3, where="sender")),
               capture=POINTS["mid"]),
            _s(f"r4_tap_near_rcv{sfx}", b, family=fam, rtt_ms=40.0, tap_split=0.9,
               line_drops=(("to_receiver", "data", 2.0), ("to_sender", "ack", 3.0)),
               disorder_seed=8, capture=POINTS["mid"]),
            _s(f"r4_reqresp_ts0_nosack_mid{sfx}", _reqresp(), family=fam, rtt_ms=20.0,
               rules=_both_ways(4), sysctls=(NO_AUTOCORK, TS_OFF, SACK_OFF),
               capture=POINTS["mid"]),
            _s(f"r4_ack_loss_heavy_rcv{sfx}", _bulk(1_000_000, conns=2), family=fam,
               rtt_ms=10.0, capture=POINTS["rcv"], rules=(
                   Rule("tcp sport {port} numgen random mod 100 < 30 drop", where="sender"),
                   _random_drop(1))),
        ]  # fmt: skip
    return out


def round5() -> list[Scenario]:
    """The catalogue captured one way, at the server (-Q in) and at the client (-Q out)."""
    names = (
        "blackhole_rto", "tail_drop_tlp", "slow_server_tlp", "fin_drop_rtt50",
        "lost_retransmit", "burst_loss", "ack_blackhole_rto", "trickle_loss",
        "multi_flow_rtt50", "sack_off_loss", "reqresp_loss_both", "server_reply_loss",
    )  # fmt: skip
    return [
        replace(SCENARIOS[n], name=f"{n}__{p}", capture=POINTS[p], twins=())
        for p in ("in", "out")
        for n in names
    ]


ROUNDS = {1: round1, 2: round2, 3: round3, 4: round4, 5: round5}


def record(out: Path, scenarios: list[Scenario]) -> None:
    """Record each scenario not yet in ``out`` (its directory named after it)."""
    from retranscope.lab.recorded import record_scenario

    for sc in scenarios:
        dest = out / sc.name
        if (dest / "scenario.json").is_file():
            continue
        shutil.rmtree(dest, ignore_errors=True)
        try:
            run = record_scenario(sc, dest)
        except Exception as err:  # one scenario's failure must not stop the sweep
            print(f"{sc.name}: ERROR {type(err).__name__}: {err}", flush=True)
            continue
        moved = {k: v for k, v in run.result.deltas().items() if v}
        status = "ok" if run.result.ok else f"client exit {run.result.client_returncode}"
        print(f"{sc.name}: {status} {json.dumps(moved)}", flush=True)


def derive(src_root: Path, dst_root: Path) -> None:
    """Late-start and frame-drop captures of every recording of round 1 in ``src_root``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
    from make_corpus import derive_capture, read_records

    names = {s.name for s in round1()}
    for d in sorted(p for p in src_root.iterdir() if p.name in names):
        _, recs = read_records((d / "capture.pcap").read_bytes())
        if len(recs) < 10:
            continue
        span = recs[-1][0] - recs[0][0]
        edits = {
            "late30": ({"op": "cut_start", "seconds": round(span * 0.3, 3)},),
            "late15drop": (
                {"op": "cut_start", "seconds": round(span * 0.15, 3)},
                {"op": "drop_frames", "pct": 1.0, "seed": 11},
            ),
            "drop1": ({"op": "drop_frames", "pct": 1.0, "seed": 7},),
        }
        for tag, ops in edits.items():
            dest = dst_root / f"{d.name}__{tag}"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(d, dest)
            done = derive_capture(d, dest / "capture.pcap", ops)
            sc = json.loads((d / "scenario.json").read_text())
            sc["derived"] = {"from": d.name, "ops": done}
            (dest / "scenario.json").write_text(json.dumps(sc, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m retranscope.lab.sweep", description=__doc__)
    ap.add_argument("--out", type=Path, help="where the recordings go (needs root)")
    ap.add_argument("--round", type=int, choices=sorted(ROUNDS), action="append")
    ap.add_argument("--derive", type=Path, nargs=2, metavar=("RECORDINGS", "OUT"))
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("names", nargs="*", help="only these scenarios")
    args = ap.parse_args(argv)
    chosen = [s for r in (args.round or sorted(ROUNDS)) for s in ROUNDS[r]()]
    if args.names:
        chosen = [s for s in chosen if s.name in set(args.names)]
    if args.list:
        for s in chosen:
            print(s.name)
        return 0
    if args.derive:
        args.derive[1].mkdir(parents=True, exist_ok=True)
        derive(*args.derive)
        return 0
    if args.out is None:
        ap.error("--out is required to record")
    args.out.mkdir(parents=True, exist_ok=True)
    record(args.out, chosen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
