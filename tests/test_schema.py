"""The event layout is declared twice (C for the kernel, Python for user space): prove
they agree field by field, offsets and size included, by parsing the real header."""

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from retranscope.bpf import BPF_DIR
from retranscope.schemas import events

C_SIZES = {"__u64": 8, "__u32": 4, "__s32": 4, "__u16": 2, "__u8": 1, "char": 1}


def parse_struct(text: str, name: str) -> list[tuple[str, str, int]]:
    body = re.search(rf"struct {name} \{{(.*?)\n\}};", text, re.S).group(1)
    defines = dict(re.findall(r"#define (\w+) (\d+)", text))
    fields = []
    for line in body.splitlines():
        line = re.sub(r"/\*.*?\*/", "", line).strip()
        if not line:
            continue
        m = re.fullmatch(r"(__u64|__u32|__s32|__u16|__u8|char) (\w+)(?:\[(\w+)\])?;", line)
        assert m, f"unparsed line in struct {name}: {line!r}"
        ctype, fname, count = m.groups()
        n = int(defines.get(count, count)) if count else 1
        fields.append((fname, ctype, n))
    return fields


def test_c_struct_matches_schema_declaration():
    header = (BPF_DIR / "retranscope.h").read_text()
    assert parse_struct(header, "rts_event") == list(events.RAW_FIELDS)


def test_c_layout_has_no_implicit_padding_and_matches_numpy_offsets():
    header = (BPF_DIR / "retranscope.h").read_text()
    offset = 0
    dt = events.RAW_DTYPE
    for fname, ctype, n in parse_struct(header, "rts_event"):
        size = C_SIZES[ctype]
        assert offset % size == 0, f"{fname} misaligned: C would pad before it"
        assert dt.fields[fname][1] == offset, fname
        offset += size * n
    assert offset % 8 == 0, "struct tail would be padded"
    assert dt.itemsize == offset


def test_defines_match():
    header = (BPF_DIR / "retranscope.h").read_text()
    assert f"#define RTS_STACK_DEPTH {events.STACK_DEPTH}" in header
    assert f"#define RTS_COMM_LEN {events.COMM_LEN}" in header
    for code, name in events.EVENT_TYPES.items():
        assert re.search(rf"#define RTS_EV_\w+ {code}\b", header), name


def test_arrow_schema_is_versioned():
    md = events.EVENT_SCHEMA.metadata
    assert md[b"schema_version"] == str(events.SCHEMA_VERSION).encode()
    assert events.EVENT_SCHEMA.field("seq").type == pa.uint32()
    assert np.dtype(events.RAW_DTYPE["seq"]) == np.dtype("<u4")


def test_bpf_sources_are_real_files():
    assert (BPF_DIR / "retranscope.bpf.c").read_text().count('#include "retranscope.h"') == 1
    assert Path(BPF_DIR / "retranscope.h").exists()


def test_flags_and_record_kinds_match_the_header():
    header = (BPF_DIR / "retranscope.h").read_text()
    defines = {
        k: int(v, 0) for k, v in re.findall(r"#define (RTS_\w+) (0x[0-9a-fA-F]+|\d+)", header)
    }
    flags = {k[len("RTS_F_") :]: v for k, v in defines.items() if k.startswith("RTS_F_")}
    ours = {k[len("F_") :]: v for k, v in vars(events).items() if re.fullmatch(r"F_[A-Z_]+", k)}
    assert flags == ours
    assert defines["RTS_EV_SOCK_GONE"] == events.EV_SOCK_GONE
    assert events.EV_SOCK_GONE not in events.EVENT_TYPES  # never written to a file
