"""Write seed inputs for fuzz/fuzz_fastpath.c (default build/fuzz/corpus_fast).

Each seed is a requestq with real virtio-gpio requests (every message type, good and bad
values, malformed lengths) in a small guest memory image, laid out as the harness parses it:
``struct hdr`` (packed, little endian), 8-byte ops (notify writes, register reads, host input
changes, Python taking what C left), then the guest memory image.

usage: python fuzz/make_fast_corpus.py [OUT_DIR]
"""
from __future__ import annotations

import os
import random
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vfio_virtio.gpio import spec as G  # noqa: E402

HDR = struct.Struct("<BBBBHHIIIII")      # struct hdr in fuzz_fastpath.c
OP = struct.Struct("<BBHI")
DESC = struct.Struct("<QIHH")
REQ = struct.Struct(G.VIRTIO_GPIO_REQUEST_FMT)
IOVA = 0x1000
MEM = 0x2000
DESC_OFF, AVAIL_OFF, USED_OFF, REQ_OFF, RESP_OFF = 0x000, 0x400, 0x600, 0x1000, 0x1800
F_NEXT, F_WRITE = 1, 2
# flags: decodes | running | msix | serve_requestq
FLAGS = 4 | 8 | 32 | 128


def seed(rng: random.Random, nreq: int, flags: int = FLAGS) -> bytes:
    mem = bytearray(MEM)
    size_log2 = 6
    for i in range(nreq):
        mtype = rng.choice([1, 2, 3, 4, 5, 6, 0, 9])
        req = REQ.pack(mtype, rng.randrange(10), rng.choice([0, 1, 2, 3, 255]))
        rlen = 8 if rng.random() < 0.85 else rng.choice([0, 4, 12])
        wlen = 2 if rng.random() < 0.85 else rng.choice([1, 3])
        mem[REQ_OFF + 16 * i:REQ_OFF + 16 * i + 8] = req
        DESC.pack_into(mem, DESC_OFF + 32 * i, IOVA + REQ_OFF + 16 * i, max(rlen, 1), F_NEXT,
                       2 * i + 1)
        DESC.pack_into(mem, DESC_OFF + 32 * i + 16, IOVA + RESP_OFF + 16 * i, wlen, F_WRITE, 0)
        struct.pack_into("<H", mem, AVAIL_OFF + 4 + 2 * i, 2 * i)
    struct.pack_into("<HH", mem, AVAIL_OFF, 0, nreq)
    ops = [OP.pack(2 | 0x40, 2, 0, 0),                 # notify queue 0
           OP.pack(0, 4, 0, 0), OP.pack(0, 1, 0x1000, 0),   # common read, ISR read
           OP.pack(4, 0, 3, 1), OP.pack(5, 0, 0, 0), OP.pack(2 | 0x40, 2, 0, 0x10000)]
    hdr = HDR.pack(size_log2, flags, 8, len(ops), 1, 3, MEM, DESC_OFF, AVAIL_OFF, USED_OFF, 0)
    return hdr + b"".join(ops) + bytes(mem)


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    dest = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(here), "build",
                                                              "fuzz", "corpus_fast")
    os.makedirs(dest, exist_ok=True)
    rng = random.Random(15)
    for i in range(16):
        flags = FLAGS if i < 12 else rng.choice([FLAGS & ~4, FLAGS & ~8, FLAGS | 16, 4 | 8 | 128])
        with open(os.path.join(dest, f"seed-{i:02d}"), "wb") as f:
            f.write(seed(rng, rng.randrange(1, 20), flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
