"""Write seed inputs for fuzz/fuzz_virtq.c into a directory (default build/fuzz/corpus).

Each seed is a well-formed (or deliberately broken) split ring in a small guest memory image,
laid out as the harness parses it: ``struct hdr`` (packed, little endian), 2-byte ops, then
the guest memory image. Seeds give the fuzzer real chains to mutate (plain, indirect,
event idx, wraparound, loops, bad heads, avail idx racing ahead) instead of noise.

usage: python fuzz/make_corpus.py [OUT_DIR]
"""
from __future__ import annotations

import os
import struct
import sys

# struct hdr in fuzz_virtq.c
HDR = struct.Struct("<BBHHHHBBIIII")
REG = struct.Struct("<QIIB7x")
DESC = struct.Struct("<QIHH")
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4

MEM_IOVA = 0x100000
MEM_SIZE = 0x1000
DESC_OFF, AVAIL_OFF, USED_OFF, BUF_OFF = 0x000, 0x100, 0x200, 0x400

# ops (fuzz_virtq.c run_ops): opcode % 7, arg
POP, PUSH, PUSH_BAD, NOTIFY, CHAIN_AT, SCRIBBLE, AVAIL_JUMP = range(7)


class Seed:
    """One hostile driver's ring in a MEM_SIZE guest memory image."""

    def __init__(self, size: int = 16, event_idx: bool = False, indirect: bool = False):
        self.size = size
        self.event_idx = event_idx
        self.indirect = indirect
        self.mem = bytearray(MEM_SIZE)
        self.buf = BUF_OFF
        self.regions = [(MEM_IOVA, 0, MEM_SIZE, 3)]
        self.ops: list[tuple[int, int]] = []
        self.last_avail = 0
        self.used_idx = 0
        self.avail_idx = 0
        self.flags_extra = 0

    def alloc(self, n: int) -> int:
        off = self.buf
        self.buf += (n + 15) & ~15
        assert self.buf <= MEM_SIZE
        return off

    def desc(self, table_off: int, i: int, off: int, length: int, flags: int, nxt: int) -> None:
        DESC.pack_into(self.mem, table_off + 16 * i, MEM_IOVA + off, length, flags, nxt)

    def chain(self, head: int, out: list[int], ins: list[int]) -> None:
        """Descriptors head, head+1, ... for buffers of the given lengths."""
        lens = [(n, 0) for n in out] + [(n, F_WRITE) for n in ins]
        for k, (n, fl) in enumerate(lens):
            i = (head + k) % self.size
            last = k == len(lens) - 1
            self.desc(DESC_OFF, i, self.alloc(n), n, fl | (0 if last else F_NEXT),
                      0 if last else (head + k + 1) % self.size)

    def indirect_chain(self, head: int, out: list[int], ins: list[int]) -> None:
        lens = [(n, 0) for n in out] + [(n, F_WRITE) for n in ins]
        table = self.alloc(16 * len(lens))
        for k, (n, fl) in enumerate(lens):
            last = k == len(lens) - 1
            self.desc(table, k, self.alloc(n), n, fl | (0 if last else F_NEXT),
                      0 if last else k + 1)
        self.desc(DESC_OFF, head, table, 16 * len(lens), F_INDIRECT, 0)

    def offer(self, head: int) -> None:
        slot = AVAIL_OFF + 4 + 2 * (self.avail_idx % self.size)
        struct.pack_into("<H", self.mem, slot, head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.mem, AVAIL_OFF + 2, self.avail_idx)

    def bytes(self) -> bytes:
        flags = (1 if self.event_idx else 0) | (2 if self.indirect else 0) | self.flags_extra
        regs = list(self.regions) + [(0, 0, 0, 0)] * (4 - len(self.regions))
        ops = self.ops[:48]
        log2 = self.size.bit_length() - 1
        hdr = HDR.pack(log2, flags, self.size, self.last_avail, self.used_idx, 0,
                       len(self.regions) - 1, len(ops), MEM_SIZE - 64,
                       DESC_OFF, AVAIL_OFF, USED_OFF)
        hdr += b"".join(REG.pack(*r) for r in regs)
        return hdr + b"".join(bytes(o) for o in ops) + bytes(self.mem)


def requests(n: int = 4, **kw) -> Seed:
    s = Seed(**kw)
    for i in range(n):
        s.chain(2 * i, [8], [2])
        s.offer(2 * i)
    s.ops = [(POP, 0x3F), (PUSH, 7), (NOTIFY, 0), (CHAIN_AT, 2), (POP, 0x3F)]
    return s


def seeds() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    out["requests"] = requests().bytes()
    out["requests_event_idx"] = requests(event_idx=True).bytes()
    s = Seed(indirect=True)
    s.indirect_chain(0, [8], [2])
    s.offer(0)
    s.indirect_chain(1, [4, 4], [1, 1])
    s.offer(1)
    s.ops = [(POP, 0x3F), (PUSH, 7), (NOTIFY, 0), (CHAIN_AT, 1)]
    out["indirect"] = s.bytes()
    s = Seed(indirect=True)                       # nested indirect: INDIRECT inside a table
    t = s.alloc(32)
    s.desc(t, 0, s.alloc(16), 16, F_INDIRECT, 0)
    s.desc(DESC_OFF, 0, t, 32, F_INDIRECT, 0)
    s.offer(0)
    out["nested_indirect"] = s.bytes()
    s = Seed()                                    # loop: 0 -> 1 -> 0
    s.desc(DESC_OFF, 0, s.alloc(8), 8, F_NEXT, 1)
    s.desc(DESC_OFF, 1, s.alloc(8), 8, F_NEXT, 0)
    s.offer(0)
    out["loop"] = s.bytes()
    s = requests(2)                               # avail idx far ahead of size
    struct.pack_into("<H", s.mem, AVAIL_OFF + 2, 0x4000)
    out["avail_ahead"] = s.bytes()
    s = Seed()                                    # head index >= size
    s.chain(0, [8], [2])
    s.offer(200)
    out["bad_head"] = s.bytes()
    s = requests(3)                               # index wraparound at 2^16
    s.last_avail = s.used_idx = 0xFFFE
    s.avail_idx = 0xFFFE
    for i in range(3):
        s.offer(2 * i)
    out["wrap"] = s.bytes()
    s = requests(2)                               # buffers in a read-only second region
    s.regions.append((0x900000, 0x800, 0x400, 1))
    s.desc(DESC_OFF, 1, 0x900000 - MEM_IOVA, 2, F_WRITE, 0)
    out["ro_region"] = s.bytes()
    s = requests(8)
    s.ops = [(POP, 1), (PUSH, 1), (POP, 2), (AVAIL_JUMP, 9), (POP, 0x3F), (PUSH, 3),
             (SCRIBBLE, 5), (NOTIFY, 0), (PUSH_BAD, 0x80), (CHAIN_AT, 7)]
    out["ops_mix"] = s.bytes()
    s = requests(1)                               # misaligned used ring: config broken
    out["misaligned"] = s.bytes()[:HDR.size - 4] + struct.pack("<I", USED_OFF + 2) \
        + s.bytes()[HDR.size:]
    return out


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    dest = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(here),
                                                               "build", "fuzz", "corpus")
    os.makedirs(dest, exist_ok=True)
    for name, data in seeds().items():
        with open(os.path.join(dest, name), "wb") as f:
            f.write(data)
    print(f"make_corpus: {len(seeds())} seeds in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
