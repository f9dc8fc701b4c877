"""The kernel's own reason for each retransmission, from the stack taken at the tracepoint.

tcp_retransmit_skb / __tcp_retransmit_skb have a handful of callers, and the caller *is*
the reason (net/ipv4/tcp_output.c, tcp_timer.c):
  tcp_send_loss_probe        -> tlp          (RFC 8985 §7.3, the probe timer)
  tcp_retransmit_timer       -> rto          (RFC 6298 §5.4; in SYN_SENT the SYN: syn)
  tcp_xmit_retransmit_queue  -> fast         (SACK/RACK recovery, ca_state Recovery, RFC 6675)
                             -> rto_recovery (ca_state Loss: slow-start retransmits after an
                                              RTO; counted as TCPSlowStartRetrans there)
  tcp:tcp_retransmit_synack  -> synack
anything else                -> other
Names may carry compiler suffixes (".part.0", ".cold", ".isra.0"): the base name counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retranscope.schemas.vocabulary import REASONS

KALLSYMS = Path("/proc/kallsyms")

CALLER_NONE, CALLER_TLP, CALLER_TIMER, CALLER_XMIT_QUEUE = 0, 1, 2, 3
CALLERS = {
    "tcp_send_loss_probe": CALLER_TLP,
    "tcp_retransmit_timer": CALLER_TIMER,
    "tcp_xmit_retransmit_queue": CALLER_XMIT_QUEUE,
}
CALLER_NAMES = {v: k for k, v in CALLERS.items()}

TCP_SYN_SENT = 2  # include/net/tcp_states.h
TCP_SYN_RECV = 3
CA_LOSS = 4  # enum tcp_ca_state


class KernelSymbols:
    """Sorted text-symbol start addresses and, for each, which caller (if any) it is."""

    def __init__(self, starts: np.ndarray, codes: np.ndarray):
        self.starts = starts
        self.codes = codes

    @classmethod
    def load(cls, path: Path = KALLSYMS) -> KernelSymbols:
        addrs: list[int] = []
        codes: list[int] = []
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3 or parts[1] not in "tTwW":
                    continue
                addr = int(parts[0], 16)
                base = parts[2].split(".", 1)[0]
                addrs.append(addr)
                codes.append(CALLERS.get(base, CALLER_NONE))
        starts = np.array(addrs, dtype=np.uint64)
        if not len(starts) or not starts.any():
            # kptr_restrict hides addresses from non-root readers: all zeros.
            raise PermissionError("/proc/kallsyms shows no addresses (run as root)")
        order = np.argsort(starts, kind="stable")
        return cls(starts[order], np.array(codes, dtype=np.uint8)[order])

    def has_all_callers(self) -> list[str]:
        present = set(np.unique(self.codes).tolist())
        return [name for name, code in CALLERS.items() if code not in present]

    def caller_codes(self, stacks: np.ndarray, stack_len: np.ndarray) -> np.ndarray:
        """First known caller in each stack (rows of return addresses), vectorised."""
        n, depth = stacks.shape
        if n == 0:
            return np.zeros(0, dtype=np.uint8)
        idx = np.searchsorted(self.starts, stacks.ravel(), side="right") - 1
        codes = np.where(idx >= 0, self.codes[np.clip(idx, 0, None)], CALLER_NONE)
        codes = codes.reshape(n, depth).astype(np.uint8)
        valid = np.arange(depth)[None, :] < np.clip(stack_len, 0, depth)[:, None]
        codes[~valid] = CALLER_NONE
        hit = codes != CALLER_NONE
        first = np.argmax(hit, axis=1)
        out = codes[np.arange(n), first]
        out[~hit.any(axis=1)] = CALLER_NONE
        return out


def reason_codes(
    caller: np.ndarray,
    event_type: np.ndarray,
    state: np.ndarray,
    ca_state: np.ndarray,
    ca_known: np.ndarray,
) -> np.ndarray:
    """The reason per event as an index into REASONS (uint8), from caller code, socket
    and CA state."""
    code = {name: i for i, name in enumerate(REASONS)}
    out = np.full(len(caller), code["other"], dtype=np.uint8)
    timer = caller == CALLER_TIMER
    out[timer] = code["rto"]
    out[timer & ((state == TCP_SYN_SENT) | (state == TCP_SYN_RECV))] = code["syn"]
    # A SYN-ACK resent by the fast-open timer on a SYN_RECV child socket is a synack.
    out[timer & (state == TCP_SYN_RECV)] = code["synack"]
    out[caller == CALLER_TLP] = code["tlp"]
    queue = caller == CALLER_XMIT_QUEUE
    out[queue] = code["fast"]
    out[queue & ca_known & (ca_state == CA_LOSS)] = code["rto_recovery"]
    out[event_type == 2] = code["synack"]  # RTS_EV_SYNACK
    out[event_type == 3] = code["tlp"]  # RTS_EV_TLP_ATTEMPT: by definition a probe
    return out


def reasons(caller, event_type, state, ca_state, ca_known) -> np.ndarray:
    """The reason string per event (object array)."""
    names = np.array(REASONS, dtype=object)
    return names[reason_codes(caller, event_type, state, ca_state, ca_known)]
