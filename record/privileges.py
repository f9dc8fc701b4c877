"""What the recorder needs from the kernel, checked as capabilities rather than as euid 0,
and who owns what it writes.

Each capability and why (Linux 5.8+ split CAP_BPF and CAP_PERFMON out of CAP_SYS_ADMIN,
which still stands in for both, and is the only way on older kernels):

  CAP_BPF              create the maps, load the program (kernel/bpf/syscall.c, bpf_capable)
  CAP_PERFMON          a tracing program and its bpf_probe_read_kernel; perf_event_open
                       of the tracepoints it attaches to (perfmon_capable)
  CAP_SYSLOG           kernel addresses in /proc/kallsyms (kernel/kallsyms.c,
                       kallsyms_show_value): the reason is read from the stack's callers.
                       Not needed where kallsyms already shows addresses to this user
                       (kptr_restrict=0 with perf_event_paranoid<=1)
  CAP_DAC_READ_SEARCH  tracefs is root's alone (its root 0700, format and id 0440): bcc
                       reads each tracepoint's format to compile and its id to attach.
                       Not needed where tracefs is readable (mounted with gid=/mode=)
  --pcap: CAP_NET_RAW (tcpdump's packet socket) and CAP_NET_ADMIN (its interface
          settings); a non-root recorder passes them to tcpdump only as ambient
          capabilities (setpriv --ambient-caps, systemd AmbientCapabilities=)
  --pid of another user's process: CAP_SYS_PTRACE (reading /proc/PID/fd)

Outputs hold addresses, ports, pids and process names: files 0640 and directories 0750
(umask 027). Under sudo they belong to the user who ran sudo (SUDO_UID/SUDO_GID), who can
then analyze them without root; tcpdump drops to that user (-Z).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

CAP = {
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYSLOG": 34,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}
#: A capability that grants another's power for our purposes (include/linux/capability.h:
#: bpf_capable, perfmon_capable; CAP_DAC_OVERRIDE covers reads too).
IMPLIED_BY = {
    "CAP_BPF": "CAP_SYS_ADMIN",
    "CAP_PERFMON": "CAP_SYS_ADMIN",
    "CAP_DAC_READ_SEARCH": "CAP_DAC_OVERRIDE",
}
OUTPUT_UMASK = 0o027  # files 0640, directories 0750


def capability_sets(status: Path = Path("/proc/self/status")) -> dict[str, int]:
    """CapInh, CapPrm, CapEff, CapBnd, CapAmb of this process, as bit masks."""
    out = {}
    for line in status.read_text().splitlines():
        if line.startswith("Cap"):
            key, _, value = line.partition(":")
            out[key] = int(value.strip(), 16)
    return out


def effective_capabilities() -> list[str]:
    """Those of CAP this process holds (all of them for root): for run.json."""
    eff = capability_sets().get("CapEff", 0)
    return sorted(name for name, bit in CAP.items() if eff >> bit & 1)


def _has(mask: int, name: str) -> bool:
    if mask >> CAP[name] & 1:
        return True
    other = IMPLIED_BY.get(name)
    return other is not None and bool(mask >> CAP[other] & 1)


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return CAP["CAP_BPF"]


def _sysctl(name: str, default: int) -> int:
    try:
        return int(Path("/proc/sys/kernel", name).read_text())
    except (OSError, ValueError):
        return default


def kallsyms_needs_syslog() -> bool:
    """kernel/ksyms_common.c, kallsyms_show_value: addresses for anyone only with
    kptr_restrict=0 and perf_event_paranoid<=1; otherwise for CAP_SYSLOG (none at 2)."""
    return not (_sysctl("kptr_restrict", 1) == 0 and _sysctl("perf_event_paranoid", 2) <= 1)


def required_capabilities(tracefs_file: Path, pcap: bool) -> list[str]:
    """The capabilities this machine asks of the recorder, in the order they are needed.
    (access(2) judges a non-root caller by its uid and groups alone, without
    capabilities: what tracefs grants without CAP_DAC_READ_SEARCH.)"""
    need = ["CAP_BPF", "CAP_PERFMON"] if _last_cap() >= CAP["CAP_BPF"] else ["CAP_SYS_ADMIN"]
    if kallsyms_needs_syslog():
        need.append("CAP_SYSLOG")
    if not os.access(tracefs_file, os.R_OK):
        need.append("CAP_DAC_READ_SEARCH")
    if pcap:
        need += ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    return need


def missing_capabilities(
    need: list[str], sets: dict[str, int] | None = None, euid: int | None = None
) -> list[str]:
    """Those of ``need`` this process lacks. tcpdump's (network) capabilities must be
    ambient unless we are root: only ambient capabilities survive its execve."""
    sets = capability_sets() if sets is None else sets
    euid = os.geteuid() if euid is None else euid
    missing = []
    for name in need:
        mask = sets.get("CapEff", 0)
        if name in ("CAP_NET_ADMIN", "CAP_NET_RAW") and euid != 0:
            mask = sets.get("CapAmb", 0)
        if not _has(mask, name):
            missing.append(name)
    return missing


def capability_problem(tracefs_file: Path, pcap: bool) -> str | None:
    """One line naming what is missing, or None."""
    need = required_capabilities(tracefs_file, pcap)
    missing = missing_capabilities(need)
    if not missing:
        return None
    note = ""
    if os.geteuid() != 0 and {"CAP_NET_ADMIN", "CAP_NET_RAW"} & set(missing):
        note = " (tcpdump inherits them only as ambient capabilities)"
    return (
        f"retranscope record needs {', '.join(need)}; missing here: {', '.join(missing)}"
        f"{note}: run it with sudo, or grant them (setpriv --ambient-caps, systemd "
        "AmbientCapabilities=; docs/recorder.md)"
    )


@dataclass
class Owner:
    """Who the outputs belong to: the user behind sudo, or whoever runs the recorder."""

    uid: int | None = None
    gid: int | None = None
    user: str | None = None

    @classmethod
    def from_environment(cls) -> Owner:
        if os.geteuid() != 0:
            return cls()
        try:
            uid, gid = int(os.environ["SUDO_UID"]), int(os.environ["SUDO_GID"])
        except (KeyError, ValueError):
            return cls(user="root")
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            return cls(user="root")  # a uid with no name: tcpdump could not drop to it
        return cls(uid, gid, name)

    def apply(self, path: Path) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)

    def make_dir(self, path: Path) -> None:
        """mkdir -p, each directory made here 0750 (umask) and given to the owner."""
        path = Path(path)
        made = []
        for p in [path, *path.parents]:
            if p.exists():
                break
            made.append(p)
        path.mkdir(parents=True, exist_ok=True)
        for p in made:
            self.apply(p)

    @property
    def tcpdump_user(self) -> str | None:
        """tcpdump's -Z: as root, drop to the owner (root without sudo); otherwise tcpdump
        has no root privileges to drop."""
        return self.user if os.geteuid() == 0 else None
