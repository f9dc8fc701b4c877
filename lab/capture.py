"""Where a lab capture is taken, and tcpdump run there.

The recorder always runs on the retransmitting host (that is where the kernel's reasons
are); only the capture moves. A user's capture is often not taken on the sender: at the
receiver, at a mid-path tap (a span port, a router), or one way only (``tcpdump -Q out``,
a ``src host`` filter, asymmetric routing). What each point can and cannot see:

==============  ===========================================================================
point           sees
==============  ===========================================================================
``sender``      every frame the retransmitting host sends and receives (the corpus so far)
``receiver``    the peer's interface: data after the path (lost frames never), and every
                ACK the peer sends, including those lost later on their way back
``mid``         a tap between two delay lines in the middle namespace: data lost before it
                is never seen, data lost after it is; ACKs likewise
``one-way-out`` the sender's interface, outgoing only (``tcpdump -Q out``): no ACKs at all
``one-way-in``  the receiver's interface, incoming only (``-Q in``, or a ``src host``
                filter): the data as it arrived, no ACKs
==============  ===========================================================================

tcpdump taps a received frame before netfilter (``__netif_receive_skb_core`` hands it to
packet sockets before the IP layer), so a frame an nftables input rule drops is still in a
capture taken on that interface: "lost after the capture point".

:func:`tap_delays` gives, for each host, the one-way delay from it to the capture point
(and the most disorder can add), so a judge can line up the sender's clock with the tap's.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retranscope.lab.netns import ADDR4, ADDR6, Lab, LabError
from retranscope.lines import LineReader, MarkerNotSeen
from retranscope.record.tcpdump import Tcpdump

if TYPE_CHECKING:
    from retranscope.lab.scenarios import Scenario

WHERE = ("sender", "receiver", "mid")
DIRECTIONS = ("inout", "in", "out")
#: The capture_point labels scenario.json carries (docs/lab.md).
CAPTURE_POINTS = ("sender", "receiver", "mid", "one-way-out", "one-way-in")


@dataclass(frozen=True)
class CapturePoint:
    """Where tcpdump runs, relative to the retransmitting side (``sender``: its host;
    ``receiver``: the peer; ``mid``: the tap in the middle namespace, which needs
    ``rtt_ms > 0``).

    ``direction``: tcpdump ``-Q``. ``filter``: a BPF expression ANDed with the base one;
    ``{sender}`` and ``{receiver}`` become the data sender's and receiver's addresses.
    ``icmp``: capture ICMP and ICMPv6 as well (the PMTU scenarios' "too big" messages).
    """

    where: str = "sender"
    direction: str = "inout"
    filter: str = ""
    icmp: bool = False

    def __post_init__(self) -> None:
        if self.where not in WHERE:
            raise ValueError(f"capture where={self.where!r}: want one of {WHERE}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"capture direction={self.direction!r}: want one of {DIRECTIONS}")
        if self.label not in CAPTURE_POINTS:
            raise ValueError(f"capture {self}: no capture point label for it")

    @property
    def one_way(self) -> bool:
        """Only the data direction is captured: -Q or a filter on the source."""
        return self.direction != "inout" or "src host" in self.filter

    @property
    def label(self) -> str:
        if not self.one_way:
            return self.where
        return {"sender": "one-way-out", "receiver": "one-way-in"}.get(self.where, "")

    @property
    def is_default(self) -> bool:
        """The recorder's own tcpdump (on the retransmitting host, both ways, TCP) does."""
        return self == CapturePoint()

    def bpf_filter(self, sender_addr: str, receiver_addr: str) -> str:
        base = "(tcp or icmp or icmp6)" if self.icmp else "tcp"
        extra = self.filter.replace("{sender}", sender_addr).replace("{receiver}", receiver_addr)
        return f"{base} and ({extra})" if extra else base


def host_roles(scenario: Scenario) -> dict[str, str]:
    """``{"sender": "client"|"server", "receiver": ...}``: which traffic end sends the
    data (retransmits) and which receives it."""
    if scenario.retransmitter == "client":
        return {"sender": "client", "receiver": "server"}
    return {"sender": "server", "receiver": "client"}


def capture_site(lab: Lab, scenario: Scenario) -> tuple[str, str]:
    """(namespace, interface) of the scenario's capture point in ``lab``."""
    where = scenario.capture.where
    if where == "mid":
        if lab.middle_ns is None or not lab.tap:
            raise LabError(f"{scenario.name}: a mid-path capture needs a lab with a tap")
        return lab.middle_ns, lab.tap_ifs[0]
    role = host_roles(scenario)[where]
    if role == "client":
        return lab.sender_ns, lab.sender_if
    return lab.receiver_ns, lab.receiver_if


def tap_delays(scenario: Scenario) -> dict[str, dict[str, float]]:
    """For the client and the server: the one-way delay (ms) from that host to the capture
    point, and the most that disorder (reordering, jitter) adds to it. Disorder happens in
    the delay line towards the server (before the tap, with a tap)."""
    one_way_ms = scenario.rtt_ms / 2.0
    disorder_ms = scenario.jitter_ms + scenario.reorder_ms
    where = scenario.capture.where
    if where == "mid":
        to_tap = one_way_ms * scenario.tap_split
        return {
            "client": {"delay_ms": to_tap, "extra_ms": disorder_ms},
            "server": {"delay_ms": one_way_ms - to_tap, "extra_ms": 0.0},
        }
    at_client = host_roles(scenario)[where] == "client"
    return {
        "client": {
            "delay_ms": 0.0 if at_client else one_way_ms,
            "extra_ms": 0.0 if at_client else disorder_ms,
        },
        "server": {"delay_ms": one_way_ms if at_client else 0.0, "extra_ms": 0.0},
    }


def capture_meta(scenario: Scenario) -> dict[str, Any]:
    """What scenario.json says about the capture: its point, where it ran (the role of
    the namespace), its filter and direction, the hosts' addresses and their delays to the
    tap (docs/lab.md). The interface name is the lab's, added by the recorder."""
    roles = host_roles(scenario)
    addr = {
        "client": ADDR4["sender"] if scenario.family == 4 else ADDR6["sender"],
        "server": ADDR4["receiver"] if scenario.family == 4 else ADDR6["receiver"],
    }
    cap = scenario.capture
    delays = tap_delays(scenario)
    return {
        "capture_point": cap.label,
        "capture": {
            "where": cap.where,
            "namespace": "middle" if cap.where == "mid" else roles[cap.where],
            "direction": cap.direction,
            "filter": cap.bpf_filter(addr[roles["sender"]], addr[roles["receiver"]]),
        },
        "retransmitter": scenario.retransmitter,
        "hosts": addr,
        "recorded_addrs": [addr[roles["sender"]]],
        "tap_delay_ms": {addr[h]: d["delay_ms"] for h, d in delays.items()},
        "tap_extra_ms": {addr[h]: d["extra_ms"] for h, d in delays.items()},
    }


class LabCapture(Tcpdump):
    """tcpdump at a scenario's capture point: the recorder's tcpdump (same argv, snaplen,
    stop and drop counts: record/tcpdump.py), started in the capture point's namespace
    instead of the caller's, with the scenario's direction and filter. Started at once;
    :meth:`wait_ready` returns when it listens."""

    def __init__(self, lab: Lab, scenario: Scenario, path: Path):
        ns, ifname = capture_site(lab, scenario)
        super().__init__(Path(path), interface=ifname)
        # The base argv ends with its own filter expression: replace it with the scenario's.
        self.argv[-1:] = [capture_meta(scenario)["capture"]["filter"]]
        if scenario.capture.direction != "inout":
            self.argv[1:1] = ["-Q", scenario.capture.direction]
        self.argv[1:1] = ["-Z", "root"]
        self.proc = lab.popen(ns, self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        self._lines = LineReader(self.proc.stderr.fileno())

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        try:
            self._until_listening(timeout_s)
        except MarkerNotSeen:
            raise LabError(f"tcpdump did not start: {' | '.join(self.stderr_lines[-3:])}") from None
