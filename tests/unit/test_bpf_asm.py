"""The eBPF assembler and the BTF reader, as pure logic."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from flatnet.errors import KernelError
from flatnet.fastpath.program import Program, Tunnel, program
from flatnet.kernel.bpf import Asm, Reg, btf_lookup


def insns(code: bytes) -> list[tuple[int, int, int, int, int]]:
    out = []
    for i in range(0, len(code), 8):
        op, regs, off, imm = struct.unpack_from("<BBhi", code, i)
        out.append((op, regs & 0xF, regs >> 4, off, imm))
    return out


def test_jumps_resolve_to_labels() -> None:
    a = Asm()
    a.label("top")
    a.alu(0, "=", 0)
    a.jmp("==", 1, Reg(2), "end")
    a.jmp("!=", 1, 5, "top", w=True)
    a.label("end")
    a.exit()
    code = insns(a.code())
    assert code[0] == (0xB7, 0, 0, 0, 0)  # r0 = 0
    assert code[1] == (0x1D, 1, 2, 1, 0)  # if r1 == r2 goto +1
    assert code[2] == (0x56, 1, 0, -3, 5)  # if w1 != 5 goto -3
    assert code[3] == (0x95, 0, 0, 0, 0)
    b = Asm()
    b.goto("nowhere")
    with pytest.raises(ValueError, match="nowhere"):
        b.code()


def test_map_fd_load_takes_two_slots_and_kcall_is_pseudo() -> None:
    a = Asm()
    a.ld_map_fd(1, 7)
    a.kcall(1234)
    code = insns(a.code())
    assert code[0] == (0x18, 1, 1, 0, 7) and code[1] == (0, 0, 0, 0, 0)
    assert code[2] == (0x85, 0, 2, 0, 1234)


def test_program_is_complete() -> None:
    code = insns(
        program(
            "10.244.0.0/16",
            "0a:58:0a:f4:00:01",
            9,
            {"bpf_skb_ct_lookup": 11, "bpf_ct_release": 12},
            128,
        )
    )
    assert len(code) < 400
    assert [c for c in code if c[0] == 0x85 and c[2] == 2] == [
        (0x85, 0, 2, 0, 11),
        (0x85, 0, 2, 0, 12),
    ]
    helpers = {c[4] for c in code if c[0] == 0x85 and c[2] == 0}
    assert helpers == {1, 69, 152, 155}  # map lookup, fib lookup, redirect_neigh, _peer
    assert code[-1][0] == 0x95
    # the pod CIDR is compared little-endian: 10.244.0.0/16 -> 0x0000f40a under 0x0000ffff
    assert (0x54, 5, 0, 0, 0xFFFF) in code and (
        0x56,
        5,
        0,
        code[code.index((0x54, 5, 0, 0, 0xFFFF)) + 1][3],
        0xF40A,
    ) in code


def _btf(tmp: Path) -> Path:
    """A minimal BTF blob: int, struct s {int a; int b;}, func f."""
    strings = b"\0int\0s\0a\0b\0f\0"
    off = {n: strings.index(n.encode() + b"\0") for n in ("int", "s", "a", "b", "f")}
    types = struct.pack("<IIII", off["int"], 1 << 24, 4, 32)  # id 1: INT
    types += struct.pack("<III", off["s"], (4 << 24) | 2, 8)  # id 2: STRUCT, 2 members
    types += struct.pack("<III", off["a"], 1, 0) + struct.pack("<III", off["b"], 1, 32)
    types += struct.pack("<III", off["f"], 12 << 24, 0)  # id 3: FUNC
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    p = tmp / "btf"
    p.write_bytes(hdr + types + strings)
    return p


def test_btf_lookup(tmp_path: Path) -> None:
    ids, offs = btf_lookup(["f"], [("s", "b")], str(_btf(tmp_path)))
    assert ids == {"f": 3} and offs == {("s", "b"): 4}
    with pytest.raises(KernelError, match="lacks g, s.c"):
        btf_lookup(["f", "g"], [("s", "c")], str(_btf(tmp_path)))


def test_vxlan_program_decapsulates_from_peers_only_and_encapsulates() -> None:
    kf = {"bpf_skb_ct_lookup": 11, "bpf_ct_release": 12}
    vx = Tunnel(1, 8472, 5, 2, "192.168.50.11", peers_fd=10, vteps_fd=11)
    code = insns(program("10.244.0.0/16", "0a:58:0a:f4:00:01", 9, kf, 128, vx))
    helpers = {c[4] for c in code if c[0] == 0x85 and c[2] == 0}
    # + skb_store_bytes, csum_diff, get_hash_recalc, skb_adjust_room
    assert helpers == {1, 9, 28, 34, 50, 69, 152, 155}
    maps = [c[4] for c in code if c[0] == 0x18 and c[2] == 1]
    # pods (a pod's own source), peers (decap), pods (both branches), VTEPs (encap)
    assert maps == [9, 10, 9, 9, 11]
    # the local underlay IP is the outer source: 192.168.50.11 as loaded little-endian
    assert any(c[0] == 0x62 and c[4] == 0x0B32A8C0 for c in code)
    # UDP port 8472, compared in network order as loaded little-endian
    assert any(c[0] == 0x55 and c[4] == 0x1821 for c in code)


def test_program_bytes_are_pinned() -> None:
    """The exact instructions, hashed: a refactor of how the program is
    assembled must not change one of them (a deliberate change of the program
    updates these digests in the same commit, after the lab tests pass)."""
    import hashlib

    k = {"bpf_skb_ct_lookup": 101, "bpf_ct_release": 102}
    gw = "0a:58:0a:f4:01:01"
    plain = program("10.244.0.0/16", gw, 7, k, 128)
    vx = program("10.244.0.0/16", gw, 7, k, 128, Tunnel(1, 8472, 5, 2, "192.168.50.11", 8, 9))
    assert (len(plain) // 8, hashlib.sha256(plain).hexdigest()) == (
        166,
        "6476b82be8adb705418bbb35a1ddb906ac4b7bd17ff39bb8bbec273f6fc9cd49",
    )
    assert (len(vx) // 8, hashlib.sha256(vx).hexdigest()) == (
        388,
        "6e2b60a6bc8951743b3eed659ef0df66fc053721e276e7d3da39e1b8b0ca3f53",
    )


def stage(name: str, *args: object) -> list[tuple[int, int, int, int, int]]:
    """The instructions one stage emits, on a fresh program (labels it jumps to
    are defined so the code assembles)."""
    p = Program("10.244.0.0/16", "0a:58:0a:f4:00:01", 9, {"bpf_skb_ct_lookup": 11,
                "bpf_ct_release": 12}, 128)  # fmt: skip
    getattr(p, name)(*args)
    for label in ("pass", "plain", "host", "fib", "neigh", "drop", "out"):
        if label not in p.a.labels:
            p.a.label(label)
    p.a.exit()
    return insns(p.a.code())


def test_stage_own_source_wants_the_pods_entry_to_name_this_veth() -> None:
    code = stage("own_source")
    assert code[:2] == [(0x61, 5, 2, 26, 0), (0x63, 10, 5, -4, 0)]  # the source IP is the key
    assert [c[4] for c in code if c[0] == 0x18 and c[2] == 1] == [9]  # the pods map
    assert (0x61, 4, 6, 40, 0) in code  # skb->ifindex
    compare = next(c for c in code if c[0] == 0x5D)  # jne r5, r4: another veth -> pass
    assert compare[1:3] == (5, 4)


def test_stage_ttl_decrements_and_patches_the_checksum() -> None:
    code = stage("ttl")
    assert code[:3] == [(0x71, 5, 2, 22, 0), (0x17, 5, 0, 0, 1), (0x73, 2, 5, 22, 0)]  # TTL - 1
    assert (0x07, 5, 0, 0, 1) in code[3:] and code[-2][:4] == (0x6B, 2, 5, 24)  # sum + 0x0100


def test_stage_header_ok_refuses_fragments_handshakes_and_foreign_addresses() -> None:
    code = stage("header_ok", 14)
    assert (0x45, 5, 0, code[code.index((0x69, 5, 2, 20, 0)) + 1][3], 0xFF3F) in code  # MF|off
    assert any(c[0] == 0x45 and c[4] == 0x07 for c in code)  # TCP FIN|SYN|RST
    assert sum(1 for c in code if c[0] == 0x54 and c[4] == 0xFFFF) == 2  # saddr and daddr


def test_stage_established_wants_assured_and_never_nat() -> None:
    code = stage("established", 14)
    kcalls = [c[4] for c in code if c[0] == 0x85 and c[2] == 2]
    assert kcalls == [11, 12]  # lookup, then release: no reference leaks
    assert (0x57, 8, 0, 0, 0x34) in code  # ASSURED | SRC_NAT | DST_NAT
    assert any(c[0] == 0x55 and c[1] == 8 and c[4] == 0x04 for c in code)  # == ASSURED only


def test_stage_outer_headers_take_a_source_port_from_the_hash() -> None:
    t = Tunnel(7, 4789, 5, 2, "192.168.50.11", 10, 11)
    code = stage("outer_headers", t)
    assert (0x54, 9, 0, 0, 0x3FFF) in code and (0x44, 9, 0, 0, 0xC000) in code  # 49152-65535
    assert any(c[0] == 0x62 and c[4] == 0x0007_0000 for c in code)  # VNI 7, network order
