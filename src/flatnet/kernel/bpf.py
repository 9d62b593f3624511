"""eBPF without a compiler: the bpf(2) calls flatnet uses, a small assembler
for the instruction set, and BTF lookups of kernel functions.

Only what the fast path (:mod:`flatnet.fastpath`) needs: load a
``sched_cls`` program, attach it to a device's tcx ingress (kernel 6.6+; an
attachment made with ``BPF_PROG_ATTACH`` outlives the process that made it, so
the data plane keeps running while the agent restarts), find and detach it
again, and a hash map the agent fills. Calls that name a device by ifindex
resolve it in the calling thread's network namespace: callers run them through
:func:`flatnet.kernel.netns.run_in`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from flatnet.errors import KernelError, SyscallError

__all__ = [
    "Asm",
    "btf_lookup",
    "close",
    "map_create",
    "map_delete",
    "map_fd",
    "map_keys",
    "map_lookup",
    "map_name",
    "map_update",
    "prog_fd",
    "prog_info",
    "prog_load",
    "tcx_attach",
    "tcx_detach",
    "tcx_programs",
]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_SYS_BPF = 321  # x86_64

# commands (enum bpf_cmd)
MAP_CREATE, MAP_LOOKUP, MAP_UPDATE, MAP_DELETE, MAP_NEXT_KEY, PROG_LOAD = 0, 1, 2, 3, 4, 5
PROG_ATTACH, PROG_DETACH, PROG_GET_FD_BY_ID, MAP_GET_FD_BY_ID = 8, 9, 13, 14
OBJ_GET_INFO_BY_FD, PROG_QUERY = 15, 16
PROG_TYPE_SCHED_CLS = 3
MAP_TYPE_HASH = 1
TCX_INGRESS = 46  # enum bpf_attach_type

# instruction classes, sizes, modes, operations (include/uapi/linux/bpf.h)
_LDX, _ST, _STX, _ALU, _JMP, _JMP32, _ALU64 = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
SIZE = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}
_MEM, _X = 0x60, 0x08
_ALU_OP = {"+": 0x00, "-": 0x10, "|": 0x40, "&": 0x50, "<<": 0x60, ">>": 0x70, "^": 0xA0, "=": 0xB0}
_JMP_OP = {"==": 0x10, ">": 0x20, ">=": 0x30, "&": 0x40, "!=": 0x50, "<": 0xA0, "<=": 0xB0}
_PSEUDO_KFUNC_CALL = 2


@dataclass
class Asm:
    """Builds a program one instruction at a time; jumps name labels.

    ``alu(dst, op, src_or_imm, w=False)``: 64-bit ALU (32-bit with ``w``);
    ``ld(size, dst, src, off)`` / ``st(size, dst, off, src_or_imm)``: memory;
    ``jmp(op, dst, src_or_imm, label, w=False)``; ``call(helper)``,
    ``kcall(btf_id)`` (a kernel function), ``exit()``. Registers are ints 0-10;
    an ``int`` operand is an immediate, a ``Reg`` a register.
    """

    insns: list[tuple[int, int, int, int | str, int]] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)

    def _op(self, code: int, dst: int = 0, src: int = 0, off: int | str = 0, imm: int = 0) -> None:
        self.insns.append((code, dst, src, off, imm))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.insns)

    def alu(self, dst: int, op: str, val: int | Reg, w: bool = False) -> None:
        cls = _ALU if w else _ALU64
        if isinstance(val, Reg):
            self._op(cls | _ALU_OP[op] | _X, dst, val.n)
        else:
            self._op(cls | _ALU_OP[op], dst, 0, 0, val)

    def ld(self, size: int, dst: int, src: int, off: int) -> None:
        self._op(_LDX | _MEM | SIZE[size], dst, src, off)

    def st(self, size: int, dst: int, off: int, val: int | Reg) -> None:
        if isinstance(val, Reg):
            self._op(_STX | _MEM | SIZE[size], dst, val.n, off)
        else:
            self._op(_ST | _MEM | SIZE[size], dst, 0, off, val)

    def jmp(self, op: str, dst: int, val: int | Reg, label: str, w: bool = False) -> None:
        cls = _JMP32 if w else _JMP
        if isinstance(val, Reg):
            self._op(cls | _JMP_OP[op] | _X, dst, val.n, label)
        else:
            self._op(cls | _JMP_OP[op], dst, 0, label, val)

    def ld_map_fd(self, dst: int, fd: int) -> None:
        """``dst`` = the map behind ``fd`` (a two-slot load, BPF_PSEUDO_MAP_FD)."""
        self._op(0x18, dst, 1, 0, fd)
        self._op(0)

    def ld_imm64(self, dst: int, value: int) -> None:
        """``dst`` = a 64-bit constant (a two-slot load)."""
        self._op(0x18, dst, 0, 0, _s32(value & 0xFFFFFFFF))
        self._op(0, 0, 0, 0, _s32(value >> 32))

    def be16(self, dst: int) -> None:
        """``dst`` = the low 16 bits of ``dst`` in network byte order."""
        self._op(_ALU | 0xD0 | _X, dst, 0, 0, 16)

    def goto(self, label: str) -> None:
        self._op(_JMP, 0, 0, label)

    def call(self, helper: int) -> None:
        self._op(_JMP | 0x80, 0, 0, 0, helper)

    def kcall(self, btf_id: int) -> None:
        self._op(_JMP | 0x80, 0, _PSEUDO_KFUNC_CALL, 0, btf_id)

    def exit(self) -> None:
        self._op(_JMP | 0x90)

    def code(self) -> bytes:
        out = bytearray()
        for i, (code, dst, src, off, imm) in enumerate(self.insns):
            if isinstance(off, str):
                if off not in self.labels:
                    raise ValueError(f"bpf: jump to undefined label '{off}'")
                off = self.labels[off] - i - 1
            out += struct.pack("<BBhi", code, (src << 4) | dst, off, imm)
        return bytes(out)


def _s32(v: int) -> int:
    return v - (1 << 32) if v >= 1 << 31 else v


@dataclass(frozen=True)
class Reg:
    """A register as an operand (a bare int operand is an immediate)."""

    n: int


def _call(cmd: int, buf: ctypes.Array[ctypes.c_char]) -> int:
    """bpf(cmd, buf); the kernel may write results back into ``buf``."""
    r = _libc.syscall(_SYS_BPF, cmd, buf, len(buf))
    if r < 0:
        err = ctypes.get_errno()
        raise SyscallError(err, os.strerror(err))
    return int(r)


def _bpf(cmd: int, attr: bytes) -> int:
    return _call(cmd, ctypes.create_string_buffer(attr, len(attr)))


def _attr(fmt: str, *values: object, size: int = 128) -> bytes:
    raw = struct.pack(fmt, *values)
    return raw + bytes(size - len(raw))


def prog_load(code: bytes, name: str) -> int:
    """Load a GPL ``sched_cls`` program; returns its fd. A verifier rejection
    raises KernelError with the end of the verifier's log."""
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 18)
    for level in (0, 1):  # load quietly; on failure load again for the log
        attr = _attr(
            "<IIQQIIQII16s",
            PROG_TYPE_SCHED_CLS,
            len(code) // 8,
            ctypes.addressof(insns),
            ctypes.addressof(lic),
            level,
            len(log) if level else 0,
            ctypes.addressof(log) if level else 0,
            0,
            0,
            name.encode()[:15],
        )
        try:
            return _bpf(PROG_LOAD, attr)
        except OSError as e:
            if level:
                tail = log.value.decode(errors="replace").strip().splitlines()[-6:]
                raise KernelError(f"bpf program '{name}' rejected: {e}: {' | '.join(tail)}") from e
    raise AssertionError("unreachable")


def map_create(key_size: int, value_size: int, max_entries: int, name: str) -> int:
    try:
        return _bpf(
            MAP_CREATE,
            _attr(
                "<IIIIIII16s",
                MAP_TYPE_HASH,
                key_size,
                value_size,
                max_entries,
                0,
                0,
                0,
                name.encode()[:15],
            ),
        )
    except OSError as e:
        raise KernelError(f"bpf map '{name}' could not be created: {e}") from e


def _elem(cmd: int, fd: int, key: bytes, value: bytes | None, flags: int = 0) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value or b"", len(value or b""))
    _bpf(
        cmd, _attr("<IIQQQ", fd, 0, ctypes.addressof(k), ctypes.addressof(v) if value else 0, flags)
    )


def map_update(fd: int, key: bytes, value: bytes) -> None:
    _elem(MAP_UPDATE, fd, key, value)


def map_delete(fd: int, key: bytes) -> bool:
    """Delete ``key``; False when it was not there."""
    try:
        _elem(MAP_DELETE, fd, key, None)
    except SyscallError as e:
        if e.errno != errno.ENOENT:
            raise
        return False
    return True


def map_keys(fd: int, key_size: int) -> Iterator[bytes]:
    cur = ctypes.create_string_buffer(key_size)
    nxt = ctypes.create_string_buffer(key_size)
    first = True
    while True:
        attr = _attr("<IIQQ", fd, 0, 0 if first else ctypes.addressof(cur), ctypes.addressof(nxt))
        try:
            _bpf(MAP_NEXT_KEY, attr)
        except SyscallError as e:
            if e.errno != errno.ENOENT:
                raise
            return
        yield nxt.raw
        ctypes.memmove(cur, nxt, key_size)
        first = False


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    try:
        _bpf(MAP_LOOKUP, _attr("<IIQQ", fd, 0, ctypes.addressof(k), ctypes.addressof(v)))
    except SyscallError as e:
        if e.errno != errno.ENOENT:
            raise
        return None
    return v.raw


def tcx_attach(ifindex: int, prog_fd: int) -> None:
    """Append ``prog_fd`` to the tcx ingress of ``ifindex`` (this thread's netns)."""
    _bpf(PROG_ATTACH, _attr("<IIII", ifindex, prog_fd, TCX_INGRESS, 0))


def tcx_detach(ifindex: int, prog_fd: int) -> None:
    _bpf(PROG_DETACH, _attr("<IIII", ifindex, prog_fd, TCX_INGRESS, 0))


def tcx_programs(ifindex: int) -> list[int]:
    """IDs of the programs on the tcx ingress of ``ifindex``, in run order."""
    ids = (ctypes.c_uint32 * 64)()
    # struct query: target_ifindex, attach_type, query_flags, attach_flags, prog_ids, count
    attr = _attr("<IIIIQI", ifindex, TCX_INGRESS, 0, 0, ctypes.addressof(ids), 64)
    buf = ctypes.create_string_buffer(attr, len(attr))
    _call(PROG_QUERY, buf)
    count = struct.unpack_from("<I", buf.raw, 24)[0]
    return list(ids[: min(count, 64)])


def prog_fd(prog_id: int) -> int:
    return _bpf(PROG_GET_FD_BY_ID, _attr("<I", prog_id))


def map_fd(map_id: int) -> int:
    return _bpf(MAP_GET_FD_BY_ID, _attr("<I", map_id))


def close(fd: int) -> None:
    os.close(fd)


def prog_info(fd: int) -> tuple[int, str, list[int]]:
    """(ID, name, map IDs) of a loaded program."""
    maps = (ctypes.c_uint32 * 8)()
    info = ctypes.create_string_buffer(96)
    # struct bpf_prog_info: nr_map_ids at 52, map_ids at 56, name at 64
    struct.pack_into("<I", info, 52, 8)
    struct.pack_into("<Q", info, 56, ctypes.addressof(maps))
    _bpf(OBJ_GET_INFO_BY_FD, _attr("<IIQ", fd, len(info), ctypes.addressof(info)))
    name = info.raw[64:80].split(b"\0", 1)[0].decode()
    n = struct.unpack_from("<I", info.raw, 52)[0]
    return struct.unpack_from("<I", info.raw, 4)[0], name, list(maps[: min(n, 8)])


def map_name(fd: int) -> str:
    info = ctypes.create_string_buffer(80)  # struct bpf_map_info: name at 24
    _bpf(OBJ_GET_INFO_BY_FD, _attr("<IIQ", fd, len(info), ctypes.addressof(info)))
    return info.raw[24:40].split(b"\0", 1)[0].decode()


# BTF: kind -> bytes after the 12-byte header (fixed part, per-member part)
_BTF_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}
_BTF_PER_ITEM = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
_FUNC, _STRUCT = 12, 4


def btf_lookup(
    funcs: Iterable[str], members: Iterable[tuple[str, str]], path: str = "/sys/kernel/btf/vmlinux"
) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """BTF IDs of kernel functions (for :meth:`Asm.kcall`) and byte offsets of
    struct members, from the running kernel's BTF (~0.1 s)."""
    funcs, members = set(funcs), set(members)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KernelError(f"kernel BTF {path} unreadable: {e}") from e
    hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<IIIII", data, 4)
    strings = hdr_len + str_off

    def name(off: int) -> str:
        return data[strings + off : data.index(b"\0", strings + off)].decode()

    # the string offsets of the names asked for: types are matched by offset,
    # without decoding the other ~100,000 names
    wanted: dict[int, str] = {}
    for n in funcs | {s for s, _ in members}:
        needle = b"\0" + n.encode() + b"\0"
        i = data.find(needle, strings, strings + str_len)
        while i >= 0:
            wanted[i + 1 - strings] = n
            i = data.find(needle, i + 1, strings + str_len)
    ids: dict[str, int] = {}
    offsets: dict[tuple[str, str], int] = {}
    p, end, tid = hdr_len + type_off, hdr_len + type_off + type_len, 1
    while p < end:
        name_off, info, _ = struct.unpack_from("<III", data, p)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind in (_FUNC, _STRUCT) and (n := wanted.get(name_off, "")):
            if kind == _FUNC and n in funcs:
                ids[n] = tid
            elif kind == _STRUCT:
                for k in range(vlen):
                    m_name, _, m_off = struct.unpack_from("<III", data, p + 12 + 12 * k)
                    if (n, name(m_name)) in members:
                        bits = m_off & 0xFFFFFF if info >> 31 else m_off
                        offsets[(n, name(m_name))] = bits // 8
        p += 12 + _BTF_FIXED.get(kind, 0) + _BTF_PER_ITEM.get(kind, 0) * vlen
        tid += 1
    missing = sorted(funcs - ids.keys()) + [f"{s}.{m}" for s, m in sorted(members - offsets.keys())]
    if missing:
        raise KernelError(f"kernel BTF lacks {', '.join(missing)}")
    return ids, offsets
