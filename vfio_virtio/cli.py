"""Command line: ``vfio-virtio-gpio`` / ``python -m vfio_virtio``.

Every invalid flag or value gets a one-line message and exit status 2; start-up failures
(busy socket, missing directory, bad snapshot) exit 1. Never a traceback for operator errors.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys

from . import deferlog
from .gpio.names import parse_names_arg, parse_names_file
from .handover import start_server
from .server import ServerConfig, ServerError

LOG_LEVELS = ("debug", "info", "warning", "error")


def _positive(lo: int, hi: int):
    def conv(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {v}")
        return v
    return conv


def _queue_size(text: str) -> int:
    v = _positive(2, 32768)(text)
    if v & (v - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vfio-virtio-gpio",
        description="Serve a virtio-gpio PCI device over vfio-user (QEMU vfio-user-pci).")
    p.add_argument("--socket", required=True, metavar="PATH",
                   help="UNIX socket to listen on (created 0600; its directory must exist)")
    p.add_argument("--lines", type=_positive(1, 1024), default=None,
                   help="number of GPIO lines (default 8, or the backend's count)")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--names", metavar="A,B,...", help="comma-separated line names")
    names.add_argument("--names-file", metavar="FILE", help="line names, one per line")
    p.add_argument("--backend", default="sim",
                   help="'sim' (default) or 'gpiod:/dev/gpiochipN'")
    p.add_argument("--control", metavar="PATH",
                   help="JSON-lines control socket: sim lines read and driven, gpiod lines "
                   "read and watched (see docs/CONTROL.md)")
    nsr = p.add_mutually_exclusive_group()
    nsr.add_argument("--no-soft-reset", dest="no_soft_reset", action="store_true",
                     default=True, help="set PMCSR No_Soft_Reset: D3hot->D0 keeps state "
                     "(default)")
    nsr.add_argument("--soft-reset", dest="no_soft_reset", action="store_false",
                     help="clear No_Soft_Reset: D3hot->D0 soft-resets the device")
    p.add_argument("--no-suspend-feature", dest="suspend_feature", action="store_false",
                   help="do not offer VIRTIO_F_SUSPEND")
    p.add_argument("--reset-lines-on-disconnect", action="store_true",
                   help="when the client goes away, reset lines too (default: keep driving)")
    p.add_argument("--transport", choices=("pci", "mmio"), default="pci",
                   help="virtio-pci modern (default) or the virtio-mmio v2 register block "
                   "in BAR0 (see docs/MMIO.md)")
    p.add_argument("--no-msix", dest="msix", action="store_false",
                   help="no MSI-X capability: INTx only. QEMU 11.1 aborts when a device "
                   "with MSI-X is unplugged (device_del); serve a device you will re-plug "
                   "so (docs/HANDOVER.md)")
    p.add_argument("--ring", choices=("c", "py"), default=None,
                   help="virtqueue implementation (default c)")
    p.add_argument("--fast", choices=("on", "off"), default="on",
                   help="serve BAR0 hot registers and the requestq in C (default on; "
                        "off: every access through Python, the reference path)")
    p.add_argument("--queue-size", type=_queue_size, default=256,
                   help="maximum virtqueue size (power of two, default 256)")
    p.add_argument("--ready-fd", type=_positive(0, 65535), default=None, metavar="FD",
                   help="write 'READY <socket>' to this fd when listening, then close it")
    p.add_argument("--restore", metavar="FILE", help="start from a saved device snapshot")
    p.add_argument("--snapshot", metavar="FILE",
                   help="save a device snapshot to FILE on SIGUSR1 and at exit")
    p.add_argument("--handover", metavar="PATH",
                   help="listen on PATH for a successor process (--take-over PATH) to hand "
                   "the device and its line requests to (docs/HANDOVER.md)")
    p.add_argument("--take-over", metavar="PATH",
                   help="continue the server whose --handover is PATH: same --socket and "
                   "--backend, lines keep driving (docs/HANDOVER.md)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Validate cross-field rules; raises ValueError with an operator-facing message."""
    lines = args.lines
    if args.names is not None:
        names = parse_names_arg(args.names, lines or len(args.names.split(",")))
    elif args.names_file is not None:
        try:
            if not stat.S_ISREG(os.stat(args.names_file).st_mode):  # a FIFO would block
                raise ValueError(f"names file {args.names_file} is not a regular file")
        except OSError:
            pass                            # parse_names_file says what is wrong
        names = parse_names_file(args.names_file, lines or 1024)
        if lines is None:
            while len(names) > 1 and names[-1] == "":
                names.pop()
    else:
        names = None
    if lines is None and args.backend == "sim":
        lines = len(names) if names else 8
    if args.ready_fd is not None:
        if args.ready_fd <= 2:
            raise ValueError(f"--ready-fd {args.ready_fd} is a standard stream; the READY "
                             "line is printed on stdout anyway")
        try:
            os.fstat(args.ready_fd)
        except OSError:
            raise ValueError(f"--ready-fd {args.ready_fd} is not an open file descriptor") \
                from None
    if args.take_over and args.restore:
        raise ValueError("--take-over and --restore exclude each other (a take-over "
                         "carries the device state)")
    if args.control and os.path.realpath(args.control) == os.path.realpath(args.socket):
        raise ValueError("--control must be another path than --socket")
    if args.snapshot is not None:
        snap = os.path.abspath(args.snapshot)
        if os.path.isdir(snap):
            raise ValueError(f"--snapshot {args.snapshot} is a directory")
        if not os.path.isdir(os.path.dirname(snap)):
            raise ValueError(f"--snapshot {args.snapshot}: directory "
                             f"{os.path.dirname(snap)} does not exist")
    return ServerConfig(socket=args.socket, lines=lines, names=names, backend=args.backend,
                        control=args.control, no_soft_reset=args.no_soft_reset,
                        suspend_feature=args.suspend_feature,
                        keep_lines_on_disconnect=not args.reset_lines_on_disconnect,
                        ring=args.ring, queue_size=args.queue_size, ready_fd=args.ready_fd,
                        restore=args.restore, transport=args.transport, snapshot=args.snapshot,
                        handover=args.handover, take_over=args.take_over,
                        fast=args.fast == "on", msix=args.msix)


def main(argv: list[str] | None = None) -> int:
    # SIGUSR1 (save a snapshot) would kill the process until its handler is installed:
    # hold it until then (__main__ blocks it even earlier, before the imports).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    parser = build_parser()
    args = parser.parse_args(argv)
    # Records are written after the reply that caused them (deferlog), not inside it.
    logh = deferlog.install(args.log_level.upper(),
                            "%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
    except (ValueError, OSError) as e:
        parser.error(str(e))
    try:
        server = start_server(cfg)
    except ValueError as e:                  # a value the flags could not check alone
        parser.error(str(e))
    except (ServerError, OSError) as e:
        print(f"vfio-virtio-gpio: error: {e}", file=sys.stderr)
        return 1
    rc = 0
    logh.set_scheduler(lambda fn: server.loop.call_later(deferlog.FLUSH_DELAY, fn))
    try:
        server.install_signals()
        server.announce()
        server.serve_forever()
    finally:
        try:
            if args.snapshot:
                server.save_snapshot(args.snapshot)
        except OSError as e:
            logging.getLogger("vfio_virtio").error("snapshot not saved: %s", e)
            rc = 1
        finally:
            server.close()                  # socket and lock go, whatever happened
            logh.set_scheduler(None)
    return rc
