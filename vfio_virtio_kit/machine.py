"""GuestMachine: a QEMU + Linux guest fixture in the style of QEMU's python ``QEMUMachine``.

A context manager that launches the private QEMU (``scripts/setup_qemu.sh``) with the test
guest (``scripts/setup_guest.sh``), logs the guest console and QEMU's stderr to files, drives
the guest through the control serial port served by ``guest/init`` and shuts down softly,
then hard, with bounded timeouts. Every failure carries the tails of both logs.

Control protocol (guest/init): the guest prints ``VV-READY <release>``; the host sends
``RUN <id> <timeout> <base64 command>``; the guest answers ``VV-BEGIN <id>``, the base64 of the
command's output, ``VV-END <id> rc=<n>``. ``QUIT`` makes the guest ``reboot -f`` (QEMU runs
with ``-no-reboot`` and exits). QEMU connects to sockets this side listens on (control port
and QMP), so nothing races QEMU's start-up.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .assets import GuestAssets, find_assets
from .console import ConsoleReader
from .qmp import QMPClient, QMPError

__all__ = ["GuestError", "GuestMachine", "log_tail"]

_END_RE = re.compile(r"^VV-END (\S+) rc=(-?\d+)$")


log = logging.getLogger(__name__)


class GuestError(RuntimeError):
    """The guest or QEMU misbehaved (timeout, early exit, protocol error); logs attached."""


def log_tail(path: Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a text file ('' if absent)."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class GuestMachine:
    """One QEMU process running the test guest.

    ``devices`` are extra ``-device`` arguments: strings are passed as they are, mappings are
    JSON-encoded (vfio-user-pci needs the JSON form, and its server must already listen).
    ``append`` adds kernel parameters; ``extra_args`` adds raw QEMU arguments.
    """

    def __init__(self, log_dir: Path | str, *, devices: Sequence[str | Mapping[str, Any]] = (),
                 append: str = "", memory_mb: int = 512, smp: int = 1,
                 extra_args: Sequence[str] = (), assets: GuestAssets | None = None,
                 name: str = "guest") -> None:
        self.assets = assets if assets is not None else find_assets()
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.console_log = self.log_dir / f"{name}-console.log"
        self.stderr_log = self.log_dir / f"{name}-qemu-stderr.log"
        self.devices = [d if isinstance(d, str) else json.dumps(dict(d)) for d in devices]
        self.append = append
        self.memory_mb = memory_mb
        self.smp = smp
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.kernel_release: str | None = None
        self.exitcode: int | None = None
        self.hard_shutdown = False
        self.boot_seconds: float | None = None
        self._sockdir: str | None = None
        self._ctl_listener: socket.socket | None = None
        self._qmp_listener: socket.socket | None = None
        self._ctl: socket.socket | None = None
        self._qmp: QMPClient | None = None
        self._pidfd: int | None = None
        self._buf = b""
        self._next_id = 0
        self._results: dict[str, tuple[int, str]] = {}
        self._unanswered: list[tuple[str, int, str]] = []   # RUNs sent, no reply begun yet
        self._resent: dict[str, int] = {}
        self._started_at = 0.0
        self._stderr_file: Any = None
        self.console: ConsoleReader | None = None

    # ---- command line and launch --------------------------------------------------------
    def command_line(self) -> list[str]:
        """The full QEMU argv (valid after the sockets exist, i.e. inside :meth:`launch`)."""
        assert self._sockdir is not None
        a = self.assets
        cmdline = f"console=ttyS0,115200 panic=-1 rdinit=/init {self.append}".strip()
        args = [
            str(a.qemu), "-accel", "tcg", "-M", "q35,memory-backend=mem",
            "-object", f"memory-backend-memfd,id=mem,size={self.memory_mb}M,share=on",
            "-m", f"{self.memory_mb}", "-smp", str(self.smp), "-cpu", "max",
            "-nographic", "-no-reboot", "-monitor", "none", "-nodefaults",
            "-kernel", str(a.kernel), "-initrd", str(a.initrd), "-append", cmdline,
            "-chardev", f"socket,id=con,path={self._sockdir}/con",
            "-serial", "chardev:con",
            "-chardev", f"socket,id=ctl,path={self._sockdir}/ctl",
            "-serial", "chardev:ctl",
            "-chardev", f"socket,id=qmp,path={self._sockdir}/qmp",
            "-object", "monitor-qmp,id=qmp0,chardev=qmp",
        ]
        for dev in self.devices:
            args += ["-device", dev]
        return args + self.extra_args

    def _listen(self, path: str) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.bind(path)
        s.listen(1)
        return s

    def launch(self) -> None:
        """Start QEMU (the guest boots in the background; see :meth:`wait_ready`)."""
        if self.proc is not None:
            raise GuestError("already launched")
        # Short private dir: UNIX socket paths are limited to 108 bytes.
        self._sockdir = tempfile.mkdtemp(prefix="vvm-")
        self._ctl_listener = self._listen(f"{self._sockdir}/ctl")
        self._qmp_listener = self._listen(f"{self._sockdir}/qmp")
        con_listener = self._listen(f"{self._sockdir}/con")
        argv = self.command_line()
        (self.log_dir / f"{self.name}-cmdline.txt").write_text(
            " ".join(repr(x) if " " in x or "{" in x else x for x in argv) + "\n")
        self.console_log.write_bytes(b"")
        self._stderr_file = open(self.stderr_log, "wb")
        self._started_at = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._stderr_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._pidfd = os.pidfd_open(self.proc.pid)
        self.console = ConsoleReader(con_listener, self.console_log)

    # ---- diagnostics ---------------------------------------------------------------------
    def logs(self, lines: int = 40) -> str:
        """Tails of the console and QEMU stderr logs, for error messages."""
        state = "running" if self.proc is not None and self.proc.poll() is None else \
            f"exited rc={self.proc.returncode if self.proc else None}"
        return (f"--- qemu: {state} ---\n--- {self.console_log} (tail) ---\n"
                f"{log_tail(self.console_log, lines)}\n--- {self.stderr_log} (tail) ---\n"
                f"{log_tail(self.stderr_log, lines)}")

    def error(self, msg: str) -> GuestError:
        """A :class:`GuestError` with ``msg`` and the log tails."""
        return GuestError(f"{msg}\n{self.logs()}")

    def console_text(self, start: int = 0) -> str:
        """The guest console captured so far (from byte offset ``start``, see :meth:`console_mark`)."""
        if self.console is None:
            return ""
        return self.console.text(start)

    def console_mark(self) -> int:
        """Current console length: a ``start`` for :meth:`wait_console` / :meth:`console_text`."""
        return self.console.mark() if self.console is not None else 0

    def wait_console(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        """Wait for a console line matching regex ``pattern`` (after offset ``start``)."""
        if self.console is None:
            raise GuestError("not launched")
        m = self.console.wait_for(pattern, timeout, start)
        if m is None:
            raise self.error(f"console pattern {pattern!r} not seen within {timeout}s")
        return m

    # ---- control port ----------------------------------------------------------------------
    def _wait_readable(self, fd: Any, deadline: float, what: str) -> None:
        """Block until ``fd`` is readable; raise if QEMU exits or the deadline passes."""
        assert self._pidfd is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.error(f"timeout waiting for {what}")
            ready, _, _ = select.select([fd, self._pidfd], [], [], left)
            if fd in ready:
                return
            if self._pidfd in ready:
                self.proc.wait()  # type: ignore[union-attr]
                raise self.error(f"QEMU exited (rc={self.proc.returncode}) while waiting for {what}")  # type: ignore[union-attr]

    def _accept(self, listener: socket.socket, deadline: float, what: str) -> socket.socket:
        self._wait_readable(listener, deadline, f"QEMU to connect the {what} socket")
        conn, _ = listener.accept()
        conn.setblocking(True)
        return conn

    def _read_line(self, deadline: float, what: str) -> str:
        assert self._ctl is not None
        while b"\n" not in self._buf:
            self._wait_readable(self._ctl, deadline, what)
            chunk = self._ctl.recv(65536)
            if not chunk:
                if self._wait_exit(2.0):
                    raise self.error(f"QEMU exited (rc={self.proc.returncode}) while waiting for {what}")  # type: ignore[union-attr]
                raise self.error(f"control port closed while waiting for {what}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode("utf-8", "replace").rstrip("\r")

    def wait_ready(self, timeout: float = 120.0) -> str:
        """Wait for ``VV-READY`` from guest/init; return the guest kernel release."""
        if self.proc is None:
            raise GuestError("not launched")
        deadline = time.monotonic() + timeout
        if self._ctl is None:
            self._ctl = self._accept(self._ctl_listener, deadline, "control")  # type: ignore[arg-type]
        while True:
            line = self._read_line(deadline, "VV-READY")
            if line.startswith("VV-READY"):
                self.kernel_release = line.split(" ", 1)[1] if " " in line else ""
                self.boot_seconds = time.monotonic() - self._started_at
                return self.kernel_release

    def start(self, cmd: str, timeout: float = 30.0) -> str:
        """Send a shell command line to the guest without waiting; return its id.

        ``timeout`` (seconds, rounded up; 0 = none) is enforced in the guest with SIGKILL.
        """
        if self._ctl is None:
            raise GuestError("guest not ready: call wait_ready() first")
        self._next_id += 1
        cid = str(self._next_id)
        b64 = base64.b64encode(cmd.encode()).decode()
        tsec = 0 if timeout <= 0 else int(-(-timeout // 1))
        self._send_run(cid, tsec, b64)
        self._unanswered.append((cid, tsec, b64))
        return cid

    def _send_run(self, cid: str, tsec: int, b64: str) -> None:
        try:
            self._ctl.sendall(f"RUN {cid} {tsec} {b64}\n".encode())
        except OSError as exc:
            raise self.error(f"control port send failed: {exc}") from exc

    def _resend_garbled(self, line: str) -> None:
        """The runner answers every line in order, a RUN with VV-BEGIN..VV-END and a line it
        cannot parse with VV-ERROR, so a VV-ERROR belongs to the earliest unanswered RUN.
        The 16550 control port occasionally loses the start of a line (seen under heavy host
        load); nothing ran, so resending is safe. Twice for one command is a real error."""
        if not self._unanswered:
            raise self.error(f"guest protocol error: {line}")
        cid, tsec, b64 = self._unanswered.pop(0)
        self._resent[cid] = self._resent.get(cid, 0) + 1
        if self._resent[cid] > 2:
            raise self.error(f"guest protocol error for command {cid}: {line}")
        log.warning("guest rejected a garbled control line (%s): resending command %s",
                    line, cid)
        self._send_run(cid, tsec, b64)
        self._unanswered.append((cid, tsec, b64))

    def wait(self, cid: str, timeout: float) -> tuple[int, str]:
        """Wait for the result of command ``cid``: ``(exit code, output)``."""
        if cid in self._results:
            return self._results.pop(cid)
        deadline = time.monotonic() + timeout
        while True:
            line = self._read_line(deadline, f"command {cid}")
            if not line.startswith("VV-BEGIN "):
                if line.startswith("VV-ERROR"):
                    self._resend_garbled(line)
                continue
            rid = line.split(" ", 1)[1]
            self._unanswered = [u for u in self._unanswered if u[0] != rid]
            chunks = []
            while True:
                line = self._read_line(deadline, f"end of command {rid}")
                m = _END_RE.match(line)
                if m:
                    if m.group(1) != rid:
                        raise self.error(f"guest protocol error: END {m.group(1)} inside {rid}")
                    break
                chunks.append(line)
            out = base64.b64decode("".join(chunks)).decode("utf-8", "replace")
            result = (int(m.group(2)), out)
            if rid == cid:
                return result
            self._results[rid] = result

    def run(self, cmd: str, timeout: float = 30.0, check: bool = False) -> tuple[int, str]:
        """Run ``cmd`` in the guest (``sh``), return ``(rc, stdout+stderr)``.

        rc 137 means the guest-side timeout killed it. ``check`` raises on rc != 0.
        """
        cid = self.start(cmd, timeout)
        rc, out = self.wait(cid, timeout + 10.0)
        if check and rc != 0:
            raise self.error(f"guest command failed (rc={rc}): {cmd}\n{out}")
        return rc, out

    def send_wake(self) -> None:
        """Write one empty line on the control port (ignored by the runner): with
        ``/sys/class/tty/ttyS1/power/wakeup`` enabled its IRQ wakes a guest in s2idle."""
        if self._ctl is None:
            raise GuestError("guest not ready")
        self._ctl.sendall(b"\n")

    # ---- QMP ---------------------------------------------------------------------------------
    @property
    def qmp(self) -> QMPClient:
        """The QMP connection (accepted on first use)."""
        return self._get_qmp(30.0)

    def _get_qmp(self, timeout: float) -> QMPClient:
        if self._qmp is None:
            if self.proc is None or self._qmp_listener is None:
                raise GuestError("not launched")
            sock = self._accept(self._qmp_listener, time.monotonic() + timeout, "QMP")
            try:
                self._qmp = QMPClient(sock, timeout=timeout)
            except QMPError as exc:
                raise self.error(f"QMP: {exc}") from exc
        return self._qmp

    def query_status(self) -> str:
        """QMP ``query-status``: e.g. ``running``, ``suspended``, ``shutdown``."""
        return str(self.qmp.execute("query-status")["status"])

    # ---- shutdown --------------------------------------------------------------------------
    def _wait_exit(self, timeout: float) -> bool:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def shutdown(self, soft_timeout: float = 15.0, hard_timeout: float = 5.0) -> int:
        """Stop QEMU: QUIT to the guest (reboot -f), then QMP ``quit``, then SIGTERM, then
        SIGKILL, each bounded. Returns QEMU's exit code. Idempotent."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None and self._ctl is not None:
            try:
                self._ctl.sendall(b"QUIT\n")
            except OSError:
                pass
            self._wait_exit(soft_timeout)
        if self.proc.poll() is None:
            self.hard_shutdown = True
            try:
                self._get_qmp(hard_timeout).execute("quit", timeout=hard_timeout)
            except (QMPError, GuestError, OSError):
                pass
            if not self._wait_exit(hard_timeout):
                self.proc.send_signal(signal.SIGTERM)
                if not self._wait_exit(hard_timeout):
                    self.proc.kill()
                    self.proc.wait()
        self.exitcode = self.proc.returncode
        self._cleanup()
        return self.exitcode

    def _cleanup(self) -> None:
        for s in (self._ctl, self._ctl_listener, self._qmp_listener):
            if s is not None:
                s.close()
        if self._qmp is not None:
            self._qmp.close()
        self._ctl = self._ctl_listener = self._qmp_listener = None
        self._qmp = None
        if self.console is not None:
            self.console.join()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None

    def __enter__(self) -> "GuestMachine":
        self.launch()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            self.shutdown()
        finally:
            if exc is not None and not isinstance(exc, GuestError):
                exc.add_note(self.logs())
