"""Test harness: a real RTSP server process and a TCP proxy that can stall a live connection.

The server is GStreamer's RTSP server (Debian packages; ``make rtsp-deps``) started with
Debian's python3. The proxy forwards bytes between the agent and the server; ``stall()``
stops forwarding while keeping both sockets open, which is what a camera whose encoder
hung looks like to the agent (the connection stays up, no frame ever arrives).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def require_rtsp_server() -> None:
    """Skip (or fail under EDGEFLEET_REQUIRE_SERVICES) when the Debian packages are missing."""
    import os
    import shutil

    check = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer"], capture_output=True, check=False) \
        if Path(SYSTEM_PYTHON).exists() else None
    if check is None or check.returncode != 0 or shutil.which("ffmpeg") is None:
        message = "the RTSP server or ffmpeg is not installed: run `make rtsp-deps`"
        if os.environ.get("EDGEFLEET_REQUIRE_SERVICES"):
            pytest.fail(message)
        pytest.skip(message)


class RtspServer:
    """``rtsp://127.0.0.1:<port>/cam`` serving H.264 ``width`` x ``height`` at 15 fps."""

    def __init__(self, *, port: int | None = None, path: str = "/cam", width: int = 640, height: int = 480,
                 user: str | None = None, password: str | None = None) -> None:
        self.port = port or free_port()
        self.path = path
        self.width, self.height = width, height
        self.user, self.password = user, password
        self._process: subprocess.Popen[str] | None = None

    def url(self, *, port: int | None = None, userinfo: str | None = None) -> str:
        auth = f"{userinfo}@" if userinfo else ""
        return f"rtsp://{auth}127.0.0.1:{port or self.port}{self.path}"

    def start(self) -> RtspServer:
        argv = [SYSTEM_PYTHON, str(SERVER_SCRIPT), str(self.port), self.path, str(self.width), str(self.height)]
        if self.user is not None and self.password is not None:
            argv += [self.user, self.password]
        # A server restarted on its port right after a kill (an outage test) can find the port
        # still held for a moment: binding is retried for a while, any other failure is not.
        deadline = time.monotonic() + 30.0
        while True:
            self._process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert self._process.stdout is not None
            line = self._process.stdout.readline().strip()
            if line == "READY":
                return self
            self.stop()
            if line != "FAILED to bind" or time.monotonic() > deadline:
                raise RuntimeError(f"RTSP server did not start: {line!r}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StallingProxy:
    """Loopback TCP proxy to ``target_port``; ``stall()`` / ``resume()`` stop and restart forwarding."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self._forwarding.clear()

    def resume(self) -> None:
        self._forwarding.set()

    def close(self) -> None:
        self._closed.set()
        self._forwarding.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.connections += 1
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, destination: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                data = source.recv(65536)
            except OSError:
                break
            if not data:
                break
            # While stalled, hold the bytes (the sockets stay open, nothing reaches the agent).
            while not self._forwarding.wait(0.2):
                if self._closed.is_set():
                    return
            try:
                destination.sendall(data)
            except OSError:
                break
        for sock in (source, destination):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def wait_until(predicate: object, timeout_s: float = 60.0, interval_s: float = 0.2) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout_s`` passes (generous: the CPU is shared)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(interval_s)
    return bool(callable(predicate) and predicate())


class MjpegServer:
    """``http://127.0.0.1:<port>/video.mjpg``: multipart JPEG from ffmpeg's own HTTP server (one client)."""

    def __init__(self, *, width: int = 320, height: int = 240, fps: int = 10) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/video.mjpg"
        self._argv = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
                      "-i", f"testsrc=size={width}x{height}:rate={fps}", "-f", "mpjpeg", "-listen", "1", self.url]
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MjpegServer:
        self._process = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
