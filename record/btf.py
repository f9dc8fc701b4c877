"""Struct member offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).

The headers bcc compiles against may come from another kernel (docs/kernel-notes.md: the
header workaround), so no struct layout is taken from them. BTF is the kernel's own
description of its types; the format is Documentation/bpf/btf.rst.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

BTF_MAGIC = 0xEB9F
# BTF_KIND_* (include/uapi/linux/btf.h)
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD = 1, 2, 3, 4, 5, 6, 7
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT = 12, 13, 14, 15, 16
KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 17, 18, 19

# Bytes that follow the 12-byte btf_type header, per kind (vlen = number of entries).
_FIXED_EXTRA = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
_PER_VLEN = {
    KIND_STRUCT: 12,
    KIND_UNION: 12,
    KIND_ENUM: 8,
    KIND_FUNC_PROTO: 8,
    KIND_DATASEC: 12,
    KIND_ENUM64: 12,
}
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


class BTFError(Exception):
    pass


@dataclass(frozen=True)
class Member:
    offset_bits: int
    bitfield_size: int  # 0 for a plain member
    type_id: int


class BTF:
    def __init__(self, data: bytes):
        if len(data) < 24:
            raise BTFError(f"BTF too short: got {len(data)} bytes, 24 needed")
        magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BTFError(f"bad BTF magic 0x{magic:04x}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._data = data
        self._strs = hdr_len + str_off
        self._str_end = self._strs + str_len
        # type id -> (kind, name_off, size_or_type, vlen, kind_flag, position of the extra data)
        self._types: list[tuple[int, int, int, int, int, int]] = [(0, 0, 0, 0, 0, 0)]
        self._by_name: dict[str, list[int]] = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        unpack = struct.Struct("<III").unpack_from
        while pos < end:
            name_off, info, size_type = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kflag = info >> 31
            extra = pos + 12
            self._types.append((kind, name_off, size_type, vlen, kflag, extra))
            if kind in (KIND_STRUCT, KIND_UNION) and name_off:
                self._by_name.setdefault(self._name(name_off), []).append(len(self._types) - 1)
            pos = extra + _FIXED_EXTRA.get(kind, 0) + _PER_VLEN.get(kind, 0) * vlen

    @classmethod
    def load(cls, path: Path = VMLINUX_BTF) -> BTF:
        return cls(path.read_bytes())

    def _name(self, off: int) -> str:
        start = self._strs + off
        end = self._data.index(b"\0", start, self._str_end)
        return self._data[start:end].decode()

    def _resolve(self, type_id: int) -> int:
        while self._types[type_id][0] in _MODIFIERS:
            type_id = self._types[type_id][2]
        return type_id

    def _members(self, type_id: int):
        kind, _n, _s, vlen, kflag, extra = self._types[type_id]
        for i in range(vlen):
            name_off, mtype, moff = struct.unpack_from("<III", self._data, extra + 12 * i)
            if kflag:
                yield self._name(name_off), Member(moff & 0xFFFFFF, moff >> 24, mtype)
            else:
                yield self._name(name_off), Member(moff, 0, mtype)

    def _find(self, type_id: int, name: str) -> Member | None:
        """Member `name` of a struct/union, looking through anonymous members."""
        for mname, m in self._members(type_id):
            if mname == name:
                return m
            if not mname:
                inner = self._resolve(m.type_id)
                if self._types[inner][0] in (KIND_STRUCT, KIND_UNION):
                    found = self._find(inner, name)
                    if found is not None:
                        return Member(
                            m.offset_bits + found.offset_bits, found.bitfield_size, found.type_id
                        )
        return None

    def member(self, struct_name: str, path: str) -> Member:
        """Offset of `path` ("a.b.c") inside `struct struct_name`, in bits."""
        ids = [
            i for i in self._by_name.get(struct_name, ()) if self._types[i][0] == KIND_STRUCT
        ] or self._by_name.get(struct_name, [])
        if not ids:
            raise BTFError(f"no struct {struct_name} in BTF")
        type_id, total = ids[0], 0
        m: Member | None = None
        for part in path.split("."):
            m = self._find(type_id, part)
            if m is None:
                raise BTFError(f"struct {struct_name} has no member {path}")
            total += m.offset_bits
            type_id = self._resolve(m.type_id)
        assert m is not None
        return Member(total, m.bitfield_size, m.type_id)

    def offset(self, struct_name: str, path: str) -> int:
        m = self.member(struct_name, path)
        if m.offset_bits % 8:
            raise BTFError(f"{struct_name}.{path} is a bitfield")
        return m.offset_bits // 8


# Macro name -> (struct, member path). Missing ones become -1 and the BPF side skips them.
OFFSETS = {
    "RTS_OFF_SKB_CB": ("sk_buff", "cb"),
    "RTS_OFF_TCB_SEQ": ("tcp_skb_cb", "seq"),
    "RTS_OFF_TCB_END_SEQ": ("tcp_skb_cb", "end_seq"),
    "RTS_OFF_SK_NET": ("sock", "__sk_common.skc_net.net"),
    "RTS_OFF_NET_INUM": ("net", "ns.inum"),
    "RTS_OFF_SK_SOCKET": ("sock", "sk_socket"),
    "RTS_OFF_SOCKET_ALLOC_SOCKET": ("socket_alloc", "socket"),
    "RTS_OFF_SOCKET_ALLOC_INODE": ("socket_alloc", "vfs_inode"),
    "RTS_OFF_INODE_INO": ("inode", "i_ino"),
    "RTS_OFF_ICSK_BACKOFF": ("inet_connection_sock", "icsk_backoff"),
    "RTS_OFF_TP_SRTT": ("tcp_sock", "srtt_us"),
    "RTS_OFF_TP_SND_UNA": ("tcp_sock", "snd_una"),
    "RTS_OFF_TP_SND_NXT": ("tcp_sock", "snd_nxt"),
    "RTS_OFF_TP_PACKETS_OUT": ("tcp_sock", "packets_out"),
    "RTS_OFF_TP_TOTAL_RETRANS": ("tcp_sock", "total_retrans"),
    # skb_shinfo(skb) = skb->head + skb->end (an offset on 64-bit kernels:
    # NET_SKBUFF_DATA_USES_OFFSET); its gso_segs is tcp_skb_pcount().
    "RTS_OFF_SKB_HEAD": ("sk_buff", "head"),
    "RTS_OFF_SKB_END": ("sk_buff", "end"),
    "RTS_OFF_SHINFO_GSO_SEGS": ("skb_shared_info", "gso_segs"),
    "RTS_OFF_TREQ_SNT_ISN": ("tcp_request_sock", "snt_isn"),
    "RTS_OFF_SKC_FAMILY": ("sock_common", "skc_family"),
    "RTS_OFF_SKC_STATE": ("sock_common", "skc_state"),
    "RTS_OFF_SKC_NUM": ("sock_common", "skc_num"),
    "RTS_OFF_SKC_DPORT": ("sock_common", "skc_dport"),
    "RTS_OFF_SKC_RCV_SADDR": ("sock_common", "skc_rcv_saddr"),
    "RTS_OFF_SKC_DADDR": ("sock_common", "skc_daddr"),
    "RTS_OFF_SKC_V6_RCV_SADDR": ("sock_common", "skc_v6_rcv_saddr"),
    "RTS_OFF_SKC_V6_DADDR": ("sock_common", "skc_v6_daddr"),
}


def kernel_offsets(btf: BTF | None) -> tuple[dict[str, int], list[str]]:
    """-D values for the BPF program, and the names that could not be found."""
    values: dict[str, int] = {}
    missing: list[str] = []
    for macro, (sname, path) in OFFSETS.items():
        try:
            if btf is None:
                raise BTFError("no BTF")
            values[macro] = btf.offset(sname, path)
        except BTFError:
            values[macro] = -1
            missing.append(macro)
    # icsk_ca_state is a 5-bit bitfield (include/net/inet_connection_sock.h).
    try:
        if btf is None:
            raise BTFError("no BTF")
        m = btf.member("inet_connection_sock", "icsk_ca_state")
        size = m.bitfield_size or 8
        values["RTS_OFF_CA_STATE_BYTE"] = m.offset_bits // 8
        values["RTS_CA_STATE_SHIFT"] = m.offset_bits % 8  # little-endian bit numbering
        values["RTS_CA_STATE_MASK"] = (1 << size) - 1
        if m.offset_bits % 8 + size > 8:
            raise BTFError("icsk_ca_state straddles a byte")
    except BTFError:
        values.update(RTS_OFF_CA_STATE_BYTE=-1, RTS_CA_STATE_SHIFT=0, RTS_CA_STATE_MASK=0)
        missing.append("RTS_OFF_CA_STATE_BYTE")
    return values, missing
