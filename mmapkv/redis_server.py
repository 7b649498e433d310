"""A throwaway ``redis-server`` on a free loopback port: what the tests and the benchmark
run ``RedisStore`` against.  Not needed to use ``RedisStore``, which talks to any server.

``LocalRedis`` runs ``redis-server`` from ``PATH`` (Debian's ``redis-server`` package, or
any build of Redis 7 or Valkey) in a temporary directory of its own, with snapshots off, waits
(a bounded poll) until it answers ``PING``, and stops it with ``stop()`` or at the end of a
``with`` block.  On Linux a server started from the main thread also gets SIGTERM when the
Python process that started it dies, so even a killed test run leaves no server behind.

>>> missing() in (None, SERVER_MISSING, CLIENT_MISSING)
True
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

__all__ = ["LocalRedis", "missing", "SERVER_MISSING", "CLIENT_MISSING"]

SERVER_MISSING = "redis-server not found: install Debian's redis-server package (apt-get install redis-server)"
CLIENT_MISSING = 'redis-py is not installed: pip install "mmapkv[redis]"'
START_TIMEOUT = 20.0   # seconds for a server to answer PING (loading a large AOF takes a while)
STOP_TIMEOUT = 10.0    # seconds for SIGTERM before SIGKILL


def missing() -> str | None:
    """Why ``RedisStore`` cannot be run against a local server here, or None."""
    try:
        client = importlib.util.find_spec("redis")
    except ValueError:  # sys.modules["redis"] is None: imports of it are blocked
        client = None
    if client is None:
        return CLIENT_MISSING
    if shutil.which("redis-server") is None:
        return SERVER_MISSING
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGTERM the child when its parent dies; None off
    the main thread, whose end Linux would take for the parent's death (prctl(2) ties
    ``PR_SET_PDEATHSIG`` to the thread that forked): such a server lives until ``stop()``."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not after fork
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


class LocalRedis:
    """One ``redis-server`` on ``127.0.0.1``; ``start()``/``stop()`` it, or use ``with``.

    :param appendonly: log every write to the AOF (for restart tests); snapshots are off
        either way (``--save ''``).
    :param appendfsync: the AOF's fsync policy: ``always``, ``everysec`` or ``no``.
    :param directory: where its files go; by default a new temporary directory, removed by
        :meth:`stop`.
    """

    def __init__(self, *, appendonly: bool = False, appendfsync: str = "always",
                 directory: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError(SERVER_MISSING)
        self.binary = binary
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self._own_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="mmapkv-redis-")
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not running"
        return self.process.pid

    def _command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory,
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", self.appendfsync, "--daemonize", "no",
                "--logfile", os.path.join(self.directory, "redis.log")]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server (on the port it had, after a stop or kill: a restart) and
        return once it answers ``PING`` (having loaded its AOF)."""
        if self.process is not None:
            raise RuntimeError("redis-server is running already")
        for attempt in range(5):
            fresh = not self.port
            if fresh:
                self.port = _free_port()
            self.process = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent())
            if self._wait_ready(timeout):
                return
            self._reap()
            if not fresh:
                break  # a restart must keep its port: clients hold the URL
            self.port = 0  # another process took the free port first: try another
        raise RuntimeError(f"redis-server did not start on port {self.port}: {self._log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        """Poll until the server answers PING with PONG (not -LOADING), it exits, or
        *timeout* passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)  # a readiness poll, bounded by the deadline
        return False

    def _reap(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            process.wait()

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.directory, "redis.log"), encoding="utf-8", errors="replace") as f:
                return " | ".join(f.read().splitlines()[-5:])
        except OSError as exc:
            return f"(no log: {exc})"

    def kill(self) -> None:
        """SIGKILL the server (a crash: only what its AOF holds survives) and reap it."""
        if self.process is not None:
            self.process.kill()
            self._reap()

    def stop(self, *, keep_files: bool = False) -> None:
        """SIGTERM the server (SIGKILL if it takes longer than ``STOP_TIMEOUT``), reap it,
        and remove its directory if this object made it (unless *keep_files*, for a
        restart).  Idempotent."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a test may have stopped it with SIGSTOP
                process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._own_directory and not keep_files:
            shutil.rmtree(self.directory, ignore_errors=True)

    def restart(self) -> None:
        """Stop the server cleanly and start it again on the same port and files."""
        self.stop(keep_files=True)
        self.start()

    def __enter__(self) -> LocalRedis:
        try:
            self.start()
        except BaseException:
            self.stop()  # its directory too: __exit__ will not run
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LocalRedis {self.url} {'running' if self.process else 'stopped'}>"
