"""The two bpf(2) queries bcc does not expose: object info by fd (include/uapi/linux/bpf.h).

BPF_OBJ_GET_INFO_BY_FD fills a struct bpf_prog_info or bpf_map_info given the object's fd;
the kernel copies at most ``info_len`` bytes and says how many it knows of.
"""

from __future__ import annotations

import ctypes as ct
import functools
import os
import struct

_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
_BPF_OBJ_GET_INFO_BY_FD = 15
#: struct bpf_prog_info: ``recursion_misses`` since 5.12.
_PROG_INFO_SIZE = 232
_PROG_INFO_RECURSION_MISSES = 208
#: struct bpf_map_info: type, id, key_size, value_size, max_entries (u32 each).
_MAP_INFO_SIZE = 88


@functools.lru_cache(maxsize=1)
def _libc() -> ct.CDLL:
    return ct.CDLL(None, use_errno=True)


def _obj_info(fd: int, size: int) -> tuple[bytes, int] | None:
    """(info bytes, how many the kernel filled) or None if the call fails."""
    if _SYS_BPF is None:
        return None
    info = ct.create_string_buffer(size)
    attr = struct.pack("=IIQ", fd, size, ct.addressof(info))
    attr_buf = ct.create_string_buffer(attr, 128)
    rc = _libc().syscall(
        ct.c_long(_SYS_BPF), ct.c_int(_BPF_OBJ_GET_INFO_BY_FD), attr_buf, ct.c_uint(128)
    )
    if rc != 0:
        return None
    return info.raw, struct.unpack_from("=I", attr_buf.raw, 4)[0]


def prog_recursion_misses(fd: int) -> int | None:
    """How many times the kernel skipped this BPF program because a BPF program was
    already running on that CPU (trace_call_bpf's bpf_prog_active; the event happened but
    the program did not run). None where the kernel cannot say."""
    got = _obj_info(fd, _PROG_INFO_SIZE)
    if got is None or got[1] < _PROG_INFO_RECURSION_MISSES + 8:
        return None
    return struct.unpack_from("=Q", got[0], _PROG_INFO_RECURSION_MISSES)[0]


def map_info(fd: int) -> dict[str, int] | None:
    """type, key_size, value_size, max_entries of a BPF map; None if the call fails."""
    got = _obj_info(fd, _MAP_INFO_SIZE)
    if got is None or got[1] < 20:
        return None
    typ, _id, key_size, value_size, max_entries = struct.unpack_from("=5I", got[0], 0)
    return {"type": typ, "key_size": key_size, "value_size": value_size, "max_entries": max_entries}
