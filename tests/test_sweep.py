"""The sweep's catalogue (lab/sweep.py): well-formed scenarios, each capture point covered.
Recording them needs root and minutes; docs/sweep.md has the figures they gave."""

from __future__ import annotations

from retranscope.lab import sweep
from retranscope.lab.capture import CAPTURE_POINTS


def test_sweep_scenarios_are_unique_and_cover_every_capture_point(capsys) -> None:
    every = [s for make in sweep.ROUNDS.values() for s in make()]
    names = [s.name for s in every]
    assert len(names) == len(set(names))
    assert {s.capture.label for s in every} == set(CAPTURE_POINTS)
    assert {s.family for s in every} == {4, 6}
    # every sysctl a scenario sets is a real net.ipv4 key, for one of the two ends
    for s in every:
        for where, key, _value in s.sysctls:
            assert where in ("sender", "receiver") and key.startswith("net.ipv4.tcp_"), s.name
        # a mid-path tap or loss in the line needs the delay line
        assert s.rtt_ms > 0 or not (s.line_drops or s.capture.where == "mid"), s.name
    assert sweep.main(["--list", "--round", "4"]) == 0
    assert capsys.readouterr().out.split() == [s.name for s in sweep.round4()]
