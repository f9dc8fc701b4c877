# The compiled record walk (_walk.c).
def pcap_caplens(data: memoryview | bytes, big_endian: bool, out: object) -> tuple[int, int]: ...
def pcapng_epbs(
    data: memoryview | bytes,
    start: int,
    big_endian: bool,
    epb_type: int,
    min_bytes: int,
    max_bytes: int,
    out: object,
) -> tuple[int, int]: ...
