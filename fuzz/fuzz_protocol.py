"""Fuzz the server's vfio-user message layer through the REAL socket (issue 13).

A seeded loop starts the real server process (sim backend, control socket) and, per round,
connects as a client and feeds it a byte stream: valid requests of every command, requests
with mutated fields, messages with bad headers (reply types, sizes below the header or above
the maximum, header-only commands), raw random bytes, fds on messages (memfd, eventfd) for
DMA_MAP / SET_IRQS with hostile ranges. The stream is cut into writes at random points,
some writes come after a pause, and control-socket requests are interleaved between them.

Oracles, checked every round:
* the server process is alive (never a crash);
* the control socket answers within ``PROMPT`` s even while the client sits on a partial
  message (the loop never blocks on a client);
* no reply ever carries the id of a *smuggled* message: a complete, valid REGION_READ with
  id 0x7777 hidden inside the body of every bad message. Answering it would mean announced
  bytes were read as commands (framing desync);
* every fd the client sent is closed once the client is gone (server fd count back to base,
  checked every ``FD_CHECK`` rounds).

Prints rounds, messages, bytes and outcomes; exits 1 on the first failure with the seed and
round to reproduce (``--seed S --start-round R``).

usage: python fuzz/fuzz_protocol.py [--seconds N] [--seed S]
"""
from __future__ import annotations

import argparse
import array
import os
import random
import shutil
import socket
import struct
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOP)

import psutil  # noqa: E402

from vfio_virtio.backends.control import ControlClient  # noqa: E402
from vfio_virtio_kit import vfio_user_spec as U  # noqa: E402
from vfio_virtio_kit.server_proc import ServerProcess  # noqa: E402
from vfio_virtio_kit.vfio_user import VfioUserClient, build_header  # noqa: E402

SMUGGLED = 0x7777
PROMPT = 1.5                # control answer bound while a client stalls (deadline is 5 s)
FD_CHECK = 20
MAX_MSG = (1 << 20) + 32    # libvfio-user SERVER_MAX_MSG_SIZE


class FuzzFailure(AssertionError):
    pass


def smuggled() -> bytes:
    body = U.REGION_ACCESS.pack(0, U.VFIO_PCI_CONFIG_REGION_INDEX, 2)
    return build_header(SMUGGLED, U.VFIO_USER_REGION_READ, 16 + len(body)) + body


class Gen:
    """Builds one round's messages: (bytes, fds) pairs."""

    def __init__(self, rnd: random.Random) -> None:
        self.r = rnd
        self.mid = 0

    def _id(self) -> int:
        self.mid = (self.mid % 0x7000) + 1            # never SMUGGLED
        return self.mid

    def u32(self) -> int:
        return self.r.choice([0, 1, 2, 3, 7, 0xFF, 0x1000, 0x7FFFFFFF, 0xFFFFFFFE,
                              0xFFFFFFFF, self.r.getrandbits(32)])

    def u64(self) -> int:
        return self.r.choice([0, 1, 0x1000, 0x4000, 1 << 40, (1 << 64) - 1, (1 << 64) - 2,
                              self.r.getrandbits(64)])

    def payload(self, cmd: int) -> tuple[bytes, list[str]]:
        r = self.r
        if cmd == U.VFIO_USER_REGION_READ:
            return U.REGION_ACCESS.pack(r.choice([0, 2, 0x10, 0xFFC, self.u64()]),
                                        r.choice([0, 1, 7, 9, self.u32()]),
                                        r.choice([1, 2, 4, 8, 0, self.u32()])), []
        if cmd == U.VFIO_USER_REGION_WRITE:
            n = r.choice([1, 2, 4, 8, 0, 300])
            return U.REGION_ACCESS.pack(r.choice([4, 0x40, 0x1000, self.u64()]),
                                        r.choice([1, 7, 0, self.u32()]),
                                        r.choice([n, n, self.u32()])) + r.randbytes(n), []
        if cmd == U.VFIO_USER_DMA_MAP:
            return U.DMA_MAP.pack(r.choice([32, 0, 8, self.u32()]), r.choice([3, 1, 0, 4]),
                                  r.choice([0, 4096, self.u64()]),
                                  r.choice([0x100000, 0x200000, self.u64()]),
                                  r.choice([0x1000, 0x100000, 0, self.u64()])), \
                r.choice([["mem"], [], ["mem", "mem"], ["efd"]])
        if cmd == U.VFIO_USER_DMA_UNMAP:
            return U.DMA_UNMAP.pack(r.choice([32, 0, self.u32()]), r.choice([0, 1, 2, 7]),
                                    r.choice([0x100000, self.u64()]),
                                    r.choice([0x100000, self.u64()])), []
        if cmd == U.VFIO_USER_DEVICE_SET_IRQS:
            idx = r.choice([0, 1, 2, 3, 4, 5, self.u32()])
            dtype = r.choice([1, 2, 4, 3, 0])
            act = r.choice([8, 16, 32, 0, 48])
            nf = r.choice([0, 1, 2, 3])
            extra = bytes(r.choice([0, 1, 2, 3])) if dtype == 2 else b""
            return U.IRQ_SET.pack(r.choice([20, 0, 20 + len(extra), self.u32()]), dtype | act,
                                  idx, r.choice([0, 1, 2, self.u32()]),
                                  r.choice([0, 1, 3, nf, self.u32()])) + extra, ["efd"] * nf
        if cmd in (U.VFIO_USER_DEVICE_GET_INFO, U.VFIO_USER_DEVICE_GET_IRQ_INFO):
            return struct.pack("<IIII", r.choice([16, 0, self.u32()]), 0,
                               r.choice([0, 2, 9, self.u32()]), 0), []
        if cmd == U.VFIO_USER_DEVICE_GET_REGION_INFO:
            return U.REGION_INFO.pack(r.choice([32, 0, 8, 4096, self.u32()]), 0,
                                      r.choice([0, 1, 7, 9, self.u32()]), 0, 0, 0), []
        if cmd == U.VFIO_USER_DEVICE_GET_REGION_IO_FDS:
            return struct.pack("<IIII", r.choice([16, 4096, self.u32()]), 0,
                               r.choice([0, 7, self.u32()]), 0), []
        return r.randbytes(r.choice([0, 4, 16, 64])), []

    def message(self) -> tuple[bytes, list[str], bool]:
        """One message, its fd kinds, and whether it is 'bad' (a smuggled one follows it
        inside its announced size)."""
        r = self.r
        cmd = r.choice([2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 10, 10, 13, 14, 1, 0, 99, 0xFFFF])
        body, fds = self.payload(cmd)
        kind = r.random()
        if kind < 0.7:                                # well framed, maybe bad content
            flags = r.choice([0, 0, 0, U.VFIO_USER_F_NO_REPLY])
            return build_header(self._id(), cmd, 16 + len(body), flags) + body, fds, False
        if kind < 0.9:                                # unframeable header + smuggled body
            inner = smuggled()
            choice = r.randrange(4)
            if choice == 0:                           # a reply / unknown type
                hdr = build_header(self._id(), cmd, 16 + len(inner), r.choice([1, 2, 0xF]))
            elif choice == 1:                         # beyond the maximum
                hdr = build_header(self._id(), cmd, r.choice([MAX_MSG + 1, 0xFFFFFFFF]))
            else:                                     # below the header size
                hdr = build_header(self._id(), cmd, r.choice([0, 1, 8, 15]))
            return hdr + inner, fds, True
        return r.randbytes(r.choice([1, 7, 16, 40])), [], True     # raw noise


def open_fds(kinds: list[str], mem_fd: int) -> list[int]:
    return [os.dup(mem_fd) if k == "mem" else os.eventfd(0) for k in kinds]


def control_prompt(srv, what: str) -> None:
    t0 = time.monotonic()
    try:
        with ControlClient(srv.control, timeout=PROMPT + 3) as host:
            host.get(0)
    except Exception as e:
        raise FuzzFailure(f"control socket failed {what}: {e!r}") from None
    took = time.monotonic() - t0
    if took > PROMPT:
        raise FuzzFailure(f"control socket answered after {took:.2f} s {what}")


def drain(sock: socket.socket) -> list[int]:
    """Read whatever the server sent; return the message ids of complete replies seen
    (a coarse parse that stops at the first incomplete message)."""
    data = b""
    try:
        while True:
            chunk = sock.recv(1 << 20, socket.MSG_DONTWAIT)
            if not chunk:
                break
            data += chunk
    except (BlockingIOError, ConnectionError):
        pass
    ids, off = [], 0
    while len(data) - off >= 16:
        mid, _cmd, size, _f, _e = struct.unpack_from("<HHIII", data, off)
        if size < 16:
            break
        ids.append(mid)
        off += size
    return ids


def one_round(srv, rnd: random.Random, mem_fd: int, stats: dict) -> None:
    g = Gen(rnd)
    t0 = time.monotonic()
    while True:                # backlog 0: while the last client is reaped, connect fails
        try:
            c = VfioUserClient(srv.socket, timeout=5)
            break
        except (BlockingIOError, ConnectionRefusedError):
            if time.monotonic() - t0 > 10:
                raise FuzzFailure("the server stopped accepting clients") from None
            time.sleep(0.005)  # pacing of the retry
    sock = c._sock
    try:
        stream: list[tuple[bytes, list[int]]] = []
        for _ in range(rnd.randint(1, 12)):
            data, kinds, bad = g.message()
            stream.append((data, open_fds(kinds, mem_fd)))
            stats["messages"] += 1
            if bad:
                break                                 # after a bad one the server may close
        blob = b"".join(d for d, _ in stream)
        fds_at = {}
        pos = 0
        for d, fds in stream:
            if fds:
                fds_at[pos] = fds
            pos += len(d)
        cuts = sorted({0, len(blob), *(rnd.randrange(len(blob) + 1)
                                       for _ in range(rnd.choice([0, 1, 2, 5])))})
        ids: list[int] = []
        for a, b in zip(cuts, cuts[1:]):
            piece = blob[a:b]
            fds = [fd for p, fl in fds_at.items() if a <= p < b for fd in fl]
            try:
                if fds:
                    sock.sendmsg([piece], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                            array.array("i", fds[:8]))])
                else:
                    sock.sendall(piece)
            except (ConnectionError, BlockingIOError, OSError):
                stats["closed"] += 1
                break
            stats["bytes"] += len(piece)
            if rnd.random() < 0.15:
                stats["stalls"] += 1
                control_prompt(srv, "while a client sits on a partial message")
            ids += drain(sock)
        for _d, fds in stream:
            for fd in fds:
                os.close(fd)
        time.sleep(0.002 if rnd.random() < 0.9 else 0.05)  # let replies come (not sync)
        ids += drain(sock)
        if SMUGGLED in ids:
            raise FuzzFailure("a smuggled message was answered: announced bytes were "
                              "read as a command")
    finally:
        c.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--start-round", type=int, default=0)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    stats = dict(rounds=0, messages=0, bytes=0, stalls=0, closed=0, fd_checks=0)
    srv = ServerProcess("--lines", "8", ready_timeout=60).start()
    mem_fd = os.memfd_create("fuzz-guest")
    os.ftruncate(mem_fd, 4 << 20)
    base = psutil.Process(srv.proc.pid).num_fds()
    end = time.monotonic() + args.seconds
    rnd_round = args.start_round
    try:
        while time.monotonic() < end:
            rnd = random.Random(f"{seed}:{rnd_round}")
            try:
                one_round(srv, rnd, mem_fd, stats)
                if not srv.alive():
                    raise FuzzFailure(f"server died (exit {srv.proc.returncode})")
                if rnd_round % FD_CHECK == FD_CHECK - 1:
                    control_prompt(srv, "after a round")
                    stats["fd_checks"] += 1
                    t0 = time.monotonic()
                    while psutil.Process(srv.proc.pid).num_fds() > base:
                        if time.monotonic() - t0 > 5:
                            raise FuzzFailure(f"server holds {psutil.Process(srv.proc.pid).num_fds()}"
                                              f" fds, {base} at start")
                        time.sleep(0.01)      # fds close when the loop reaps the client
            except FuzzFailure as e:
                print(f"FAILURE: {e}\nreproduce: python fuzz/fuzz_protocol.py --seed {seed} "
                      f"--start-round {rnd_round}\n--- server log ---\n{srv.log_tail(40)}")
                return 1
            except (ConnectionRefusedError, BlockingIOError, TimeoutError, ConnectionError):
                stats["refused"] = stats.get("refused", 0) + 1
            rnd_round += 1
            stats["rounds"] += 1
    finally:
        os.close(mem_fd)
        rc = srv.stop()
    shutil.rmtree(srv.workdir, ignore_errors=True)
    print(f"fuzz_protocol: rounds {stats['rounds']} messages {stats['messages']} bytes "
          f"{stats['bytes']} stall checks {stats['stalls']} fd checks {stats['fd_checks']} "
          f"closed {stats['closed']} seed {seed} failures 0 (server exit {rc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
