"""Run the vfio-virtio-gpio server as a child process, for tests, benchmarks and the demo.

Readiness comes through a pipe (``--ready-fd``), never by connecting to the socket (it accepts
one client only). Output goes to a log file whose tail is attached to failures.
"""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))     # the repository


class ServerProcess:
    """``with ServerProcess(lines=8) as srv: VfioUserClient(srv.socket)...``"""

    def __init__(self, *args: str, workdir: str | None = None, ready_timeout: float = 15.0,
                 control: bool = True, taskset: str | None = None, env: dict | None = None):
        self.workdir = workdir or tempfile.mkdtemp(prefix="vv-")
        os.makedirs(self.workdir, exist_ok=True)
        self.socket = os.path.join(self.workdir, "gpio.sock")
        self.control = os.path.join(self.workdir, "control.sock") if control else None
        self.log_path = os.path.join(self.workdir, "server.log")
        self.args = list(args)
        self.ready_timeout = ready_timeout
        self.taskset = taskset
        self.env = env
        self.proc: subprocess.Popen | None = None

    def command(self, ready_fd: int) -> list[str]:
        cmd = [sys.executable, "-m", "vfio_virtio", "--socket", self.socket,
               "--ready-fd", str(ready_fd)]
        if self.control:
            cmd += ["--control", self.control]
        cmd += self.args
        if self.taskset:
            cmd = ["taskset", "-c", self.taskset] + cmd
        return cmd

    def start(self) -> "ServerProcess":
        r, w = os.pipe()
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        try:
            self.proc = subprocess.Popen(self.command(w), pass_fds=[w], cwd=TOP, stdout=log,
                                         stderr=subprocess.STDOUT, env=env)
        finally:
            os.close(w)
            log.close()
        try:
            ready, _, _ = select.select([r], [], [], self.ready_timeout)
            line = os.read(r, 4096) if ready else b""
        finally:
            os.close(r)
        if not line.startswith(b"READY"):
            self.stop()
            raise RuntimeError(f"server did not become ready within {self.ready_timeout} s "
                               f"(exit {self.proc.returncode})\n{self.log_tail()}")
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout)
        return p.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 60) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no server log)"

    def log_size(self) -> int:
        """Where the log ends now: a ``start`` for :meth:`wait_log`."""
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def wait_log(self, pattern: str, timeout: float = 5.0, start: int = 0) -> re.Match | None:
        """The first match of regex ``pattern`` in the log after byte ``start``, waiting up to
        ``timeout`` s for it (the server writes INFO records in batches just after the reply
        that caused them: vfio_virtio/deferlog.py). None if it never appears."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        while True:
            try:
                with open(self.log_path, "rb") as f:
                    f.seek(start)
                    m = rx.search(f.read().decode(errors="replace"))
            except OSError:
                m = None
            if m is not None or time.monotonic() > end or not self.alive():
                return m
            time.sleep(0.02)              # a file has no readiness event to wait on

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
