#!/usr/bin/env bash
# Set up retranscope on a Debian/Ubuntu machine, as root: system packages (bcc, tcpdump,
# tshark, tcptrace, nftables, ...), kernel headers for bcc (the workaround in
# docs/kernel-notes.md only where no matching headers exist), tracefs, and .venv/ with the
# project installed and Debian's bcc module linked in. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

say() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get, kernel headers, tracefs): sudo ./setup.sh"
command -v apt-get >/dev/null || die "no apt-get: install bcc (python3), tcpdump, nftables, iproute2 by hand"

export DEBIAN_FRONTEND=noninteractive
PKGS=(python3-bpfcc bpfcc-tools tcpdump tshark tcptrace nftables iproute2 ethtool python3-venv
      python3-pip kmod chromium
      # the capture reader's compiled record walk (analyze/capture/_walk.c)
      gcc libc6-dev python3-dev
      # tests: a real Prometheus scrapes `record --metrics`; systemd-analyze verifies deploy/
      prometheus systemd util-linux)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bcc compiles its programs against /lib/modules/$(uname -r)/build.
REL="$(uname -r)"
BUILD="/lib/modules/$REL/build"
if [ ! -e "$BUILD/include" ]; then
  if apt-get install -y -qq "linux-headers-$REL" >/dev/null 2>&1; then
    say "installed linux-headers-$REL"
  else
    # No headers for this kernel (a custom build): any recent Debian header set lets
    # tracepoint programs compile; struct offsets come from BTF, never from these headers.
    ARCH="$(dpkg --print-architecture)"
    [ -n "$(apt-cache policy "linux-headers-$ARCH" 2>/dev/null | grep Candidate)" ] || apt-get update -qq
    apt-get install -y -qq "linux-headers-$ARCH" >/dev/null \
      || die "no kernel headers for $REL and linux-headers-$ARCH would not install"
    HDR="$(ls -d /usr/src/linux-headers-*-"$ARCH" | sort -V | tail -1)"
    COMMON="${HDR%-$ARCH}-common"
    [ -d "$HDR" ] && [ -d "$COMMON" ] || die "header directories not found under /usr/src"
    mkdir -p "/lib/modules/$REL"
    ln -sfn "$HDR" "$BUILD"
    ln -sfn "$COMMON" "/lib/modules/$REL/source"
    say "no headers for $REL: using $(basename "$HDR") (workaround: docs/kernel-notes.md)"
  fi
fi

# Tracepoints live in tracefs; it is not mounted by default here.
if [ ! -d /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing || die "could not mount tracefs"
fi

# The venv uses the system Python that Debian's bcc module was built for.
PY=/usr/bin/python3
[ -x "$PY" ] || PY="$(command -v python3)"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -q -e '.[dev,fleet]'
# An editable install writes no bytecode, and where PYTHONDONTWRITEBYTECODE is set (as on
# the machines this was built on) none is ever written: every run compiled the sources
# again, ~40 ms of each `analyze`. Compiled once here, as pip does for a regular install.
.venv/bin/python -m compileall -q retranscope record analyze schemas bpf report lab fleet >/dev/null
BCC_DIR="$(/usr/bin/python3 -c 'import bcc, os; print(os.path.dirname(bcc.__file__))' 2>/dev/null)" \
  || die "python3-bpfcc is installed but 'import bcc' fails for /usr/bin/python3"
SITE="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ln -sfn "$BCC_DIR" "$SITE/bcc"
.venv/bin/python -c 'import bcc, retranscope.record.probe' || die "bcc does not import in .venv"
say "ready: .venv/bin/retranscope"
