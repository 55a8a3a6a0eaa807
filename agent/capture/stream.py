"""Network and device cameras decoded by an ``ffmpeg`` subprocess (RTSP, HTTP MJPEG, V4L2).

Why a subprocess rather than ``cv2.VideoCapture(url, cv2.CAP_FFMPEG)``: a capture inside
OpenCV can block in ``read`` for as long as the socket stays open and cannot be
interrupted; a child process can always be killed, so a stalled stream, a slow
handshake or a wedged decoder is ended by the watchdog and reopened, and one dead
camera never holds a thread (or the other cameras) hostage.

The decoder writes raw BGR frames on a pipe; a reader thread keeps only the newest one
(with its capture time), so a slow consumer never builds latency. The frame size is
read from ffmpeg's stream description on stderr; a stream that changes resolution ends
ffmpeg's output for the old size, and the reopen picks the new one up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np
import numpy.typing as npt

from agent.uplink.backoff import jittered_backoff_s

log = logging.getLogger(__name__)

CameraErrorCode = Literal["auth_failed", "unreachable", "not_found", "stalled", "decode_error", "ended",
                          "no_ffmpeg", "bad_credentials_ref"]
Transport = Literal["tcp", "udp"]

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
_SECRET_REF = re.compile(r"\{secret:(?P<name>[A-Za-z0-9_.-]+)\}")
# "..., yuv420p(progressive), 640x480 [SAR 1:1 DAR 4:3], 15 fps": the size stands alone
# between separators (codec tags such as "0x31637661" must not match).
_STREAM_SIZE = re.compile(r"Stream #\d+:\d+.*?: Video: .*?[ ,](?P<width>\d{2,5})x(?P<height>\d{2,5})(?=[ ,\n]|$)")


def redact(text: str) -> str:
    """Replace ``user:pass@`` in every URL inside ``text`` by ``***@`` (for logs and reports)."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


class CredentialsError(ValueError):
    """A ``{secret:NAME}`` reference that the secret store cannot resolve."""


def resolve_credentials(url: str, *, secrets_dir: Path | None, env: Mapping[str, str]) -> str:
    """Replace each ``{secret:NAME}`` in ``url`` by the secret's value.

    Looked up first as the file ``secrets_dir/NAME`` (first line, a 0600 file written at
    provisioning), then as ``EDGEFLEET_SECRET_<NAME>`` in the environment. A value is
    ``user:password`` (or just ``user``), placed as is in the URL's userinfo.

    Raises:
        CredentialsError: a referenced secret exists nowhere (the message names it, never a value).
    """

    def lookup(match: re.Match[str]) -> str:
        name = match.group("name")
        if secrets_dir is not None:
            path = secrets_dir / name
            if path.is_file():
                return path.read_text().splitlines()[0].strip() if path.read_text().strip() else ""
        value = env.get("EDGEFLEET_SECRET_" + name.upper().replace("-", "_").replace(".", "_"))
        if value is None:
            raise CredentialsError(f"camera secret {name!r} not found in the secret store or the environment")
        return value

    return _SECRET_REF.sub(lookup, url)


def classify_ffmpeg_error(stderr_text: str) -> CameraErrorCode:
    """Map ffmpeg's diagnostics for a failed or ended stream to a camera error code."""
    text = stderr_text.lower()
    if ("401" in text and "unauthorized" in text) or "authorization failed" in text:
        return "auth_failed"
    if ("404" in text and "not found" in text) or "no such file or directory" in text:
        return "not_found"
    if any(marker in text for marker in ("connection refused", "connection timed out", "no route to host",
                                         "network is unreachable", "name or service not known",
                                         "failed to resolve", "temporary failure in name resolution",
                                         "timed out", "cannot open connection")):
        return "unreachable"
    if any(marker in text for marker in ("invalid data found", "error while decoding", "decode_slice",
                                         "could not find codec", "non-existing pps")):
        return "decode_error"
    return "ended"


def parse_frame_size(stderr_text: str) -> tuple[int, int] | None:
    """The ``(width, height)`` of the first video stream ffmpeg describes, if any yet."""
    match = _STREAM_SIZE.search(stderr_text)
    return (int(match.group("width")), int(match.group("height"))) if match else None


# --- hardware decode probe -------------------------------------------------------------

_HWACCEL_PREFERENCE = ("vaapi", "qsv", "cuda", "v4l2m2m")


@dataclass(frozen=True)
class DecoderChoice:
    name: str  # "software", "vaapi", ...
    ffmpeg_args: tuple[str, ...] = ()


def parse_hwaccels(ffmpeg_output: str) -> list[str]:
    """The methods listed by ``ffmpeg -hide_banner -hwaccels`` (one per line after the heading)."""
    methods: list[str] = []
    seen_heading = False
    for line in ffmpeg_output.splitlines():
        stripped = line.strip()
        if not seen_heading:
            seen_heading = stripped.lower().startswith("hardware acceleration methods")
            continue
        if stripped and re.fullmatch(r"[a-z0-9_]+", stripped):
            methods.append(stripped)
    return methods


def choose_decoder(hwaccels: list[str], render_nodes: list[str]) -> DecoderChoice:
    """VAAPI needs both ffmpeg support and a DRM render node; anything else decodes in software.

    Only VAAPI is chosen automatically: it is the one method a plain Linux device with an
    Intel/AMD GPU exposes without vendor drivers; the others are reported by the probe only.
    """
    if "vaapi" in hwaccels and render_nodes:
        return DecoderChoice("vaapi", ("-hwaccel", "vaapi", "-hwaccel_device", sorted(render_nodes)[0]))
    return DecoderChoice("software")


_probed: DecoderChoice | None = None
_probe_lock = threading.Lock()


def probe_decoder(ffmpeg: str = "ffmpeg", *, dri_dir: Path = Path("/dev/dri")) -> DecoderChoice:
    """Probe once per process (cached): ``ffmpeg -hwaccels`` and ``/dev/dri/renderD*``."""
    global _probed
    with _probe_lock:
        if _probed is None:
            try:
                output = subprocess.run([ffmpeg, "-hide_banner", "-hwaccels"], capture_output=True, text=True,
                                        timeout=10, check=False).stdout
            except (OSError, subprocess.TimeoutExpired):
                output = ""
            nodes = [str(p) for p in dri_dir.glob("renderD*")] if dri_dir.is_dir() else []
            _probed = choose_decoder(parse_hwaccels(output), nodes)
            log.info("camera decoder: %s (hwaccels=%s, render nodes=%s)", _probed.name,
                     parse_hwaccels(output), nodes)
        return _probed


# --- the source ------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamSettings:
    transport: Transport = "tcp"
    # No frame for this long while the connection stays open: kill and reopen.
    stall_timeout_s: float = 10.0
    # Connection/socket timeout handed to ffmpeg (open and reads).
    open_timeout_s: float = 10.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    # The camera's analysed rate (0 = every frame). ffmpeg still decodes every frame (H.264
    # frames depend on each other) but converts to BGR and pipes out only frames at least
    # 0.45 of an analysis interval apart (just under half, so timestamps a hair short of an
    # exact step still count): about twice the analysed rate at most, and never fewer
    # frames than the rate needs, whatever the camera sends (the spacing stays under
    # d + interval/2 for a camera sending every d seconds; slower cameras pass untouched).
    analysed_fps: float = 0.0


@dataclass(frozen=True)
class CapturedFrame:
    frame: npt.NDArray[np.uint8]
    captured_monotonic_s: float
    captured_wall_s: float


@dataclass
class CameraHealth:
    """Cumulative per-camera counters; ``error_code`` is None while frames arrive."""

    state: Literal["connecting", "streaming", "down"] = "connecting"
    error_code: CameraErrorCode | None = None
    decoder: str = "software"
    frames: int = 0
    stale_frames_dropped: int = 0
    reconnects: int = 0
    stalls: int = 0
    outages: int = 0
    outage_s: float = 0.0
    width: int | None = None
    height: int | None = None


def build_ffmpeg_command(url: str, settings: StreamSettings, decoder: DecoderChoice,
                         ffmpeg: str = "ffmpeg") -> list[str]:
    """The decoder's argv: input options for the URL's kind, raw BGR frames on stdout."""
    timeout_us = str(int(settings.open_timeout_s * 1_000_000))
    command = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "info"]
    if url.startswith(("rtsp://", "rtsps://")):
        command += ["-rtsp_transport", settings.transport, "-timeout", timeout_us]
    elif url.startswith(("http://", "https://")):
        command += ["-rw_timeout", timeout_us, "-f", "mpjpeg"] if "mjpg" in url.lower() or "mjpeg" in url.lower() \
            else ["-rw_timeout", timeout_us]
    elif url.startswith("/dev/video"):
        command += ["-f", "v4l2"]
    filters = []
    if settings.analysed_fps > 0:
        # select decides on each frame as it comes (no buffering, unlike the fps filter, and it
        # never duplicates one); the first frame has no predecessor (prev_selected_t is NaN).
        min_gap_s = 0.45 / settings.analysed_fps
        filters.append(f"select='isnan(prev_selected_t)+gte(t-prev_selected_t,{min_gap_s:.6f})'")
    # VAAPI frames come back from the GPU surface before conversion to BGR.
    if decoder.name == "vaapi":
        filters += ["hwdownload", "format=nv12"]
    vf = ["-vf", ",".join(filters), "-fps_mode", "passthrough"] if filters else []
    command += ["-fflags", "nobuffer", "-flags", "low_delay", *decoder.ffmpeg_args, "-i", url,
                "-an", *vf, "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"]
    return command


class StreamSource:
    """One camera behind an ``ffmpeg`` decoder, watched and reopened on its own thread.

    A :class:`~agent.capture.source.FrameSource`: ``grab`` is True when a frame newer
    than the last retrieved one is waiting; ``retrieve`` returns it. ``latest`` also gives
    its capture times. Never raises after construction; failures show in ``health``.
    """

    def __init__(self, url: str, *, name: str = "camera", settings: StreamSettings = StreamSettings(),
                 secrets_dir: Path | None = None, env: Mapping[str, str] | None = None,
                 ffmpeg: str | None = None, rng: random.Random | None = None) -> None:
        self.name = name
        self.settings = settings
        self.display_url = redact(url)
        self.health = CameraHealth()
        self.reconnects = 0
        self._ffmpeg = ffmpeg or shutil.which("ffmpeg") or "ffmpeg"
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)
        self._latest: CapturedFrame | None = None
        self._latest_taken = True
        self._grabbed: CapturedFrame | None = None
        self._stop = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._down_since: float | None = None
        try:
            self._url: str | None = resolve_credentials(url, secrets_dir=secrets_dir,
                                                        env=os.environ if env is None else env)
        except CredentialsError as exc:
            self._url = None
            self._set_down("bad_credentials_ref")
            log.error("[%s] %s", name, exc)
        self.health.decoder = probe_decoder(self._ffmpeg).name if shutil.which(self._ffmpeg) else "software"
        self._thread = threading.Thread(target=self._run, name=f"stream-{name}", daemon=True)
        if self._url is not None:
            self._thread.start()

    # FrameSource -----------------------------------------------------------------------
    def grab(self) -> bool:
        with self._lock:
            if self._latest_taken or self._latest is None:
                self._new_frame.wait(0.2)
            if self._latest is None or self._latest_taken:
                return False
            self._grabbed, self._latest_taken = self._latest, True
            return True

    def retrieve(self) -> npt.NDArray[np.uint8] | None:
        grabbed = self._grabbed
        return grabbed.frame if grabbed is not None else None

    def latest(self) -> CapturedFrame | None:
        """The frame the last successful ``grab`` took, with its capture times."""
        return self._grabbed

    def close(self) -> None:
        self._stop.set()
        self._kill()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def health_snapshot(self) -> CameraHealth:
        with self._lock:
            snapshot = CameraHealth(**vars(self.health))
            if self._down_since is not None:
                snapshot.outage_s = round(snapshot.outage_s + time.monotonic() - self._down_since, 3)
            return snapshot

    # internals -------------------------------------------------------------------------
    def _set_down(self, code: CameraErrorCode) -> None:
        with self._lock:
            if self.health.state == "streaming" or self._down_since is None:
                if self.health.state == "streaming" or self.health.error_code is None:
                    self.health.outages += 1
                self._down_since = self._down_since or time.monotonic()
            self.health.state = "down"
            self.health.error_code = code

    def _set_up(self) -> None:
        with self._lock:
            if self._down_since is not None:
                self.health.outage_s = round(self.health.outage_s + time.monotonic() - self._down_since, 3)
                self._down_since = None
            self.health.state = "streaming"
            self.health.error_code = None

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            delivered = self._run_once()
            if self._stop.is_set():
                return
            attempt = 0 if delivered else attempt + 1
            self.reconnects += 1
            self.health.reconnects = self.reconnects
            delay_s = jittered_backoff_s(attempt, min_s=self.settings.reconnect_min_s,
                                         max_s=self.settings.reconnect_max_s, rng=self._rng)
            log.warning("[%s] camera %s: %s; reopening in %.1fs", self.name, self.display_url,
                        self.health.error_code, delay_s)
            self._stop.wait(delay_s)

    def _run_once(self) -> bool:
        """One ffmpeg session: open, read frames until it ends or stalls. True if frames arrived."""
        assert self._url is not None
        if shutil.which(self._ffmpeg) is None:
            self._set_down("no_ffmpeg")
            return False
        decoder = probe_decoder(self._ffmpeg)
        command = build_ffmpeg_command(self._url, self.settings, decoder, self._ffmpeg)
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, bufsize=0)
        except OSError:
            self._set_down("no_ffmpeg")
            return False
        self._process = process
        assert process.stdout is not None and process.stderr is not None
        stderr_chunks: list[bytes] = []
        stderr_reader = threading.Thread(target=_drain, args=(process.stderr, stderr_chunks), daemon=True)
        stderr_reader.start()
        delivered = False
        stalled = False
        size: tuple[int, int] | None = None
        buffer = bytearray()
        last_frame_at = time.monotonic()
        stdout_fd = process.stdout.fileno()
        # Before the first frame the open timeout applies (handshake), then the stall timeout.
        while not self._stop.is_set():
            limit_s = self.settings.stall_timeout_s if delivered else max(
                self.settings.stall_timeout_s, self.settings.open_timeout_s + 2)
            if time.monotonic() - last_frame_at > limit_s:
                stalled = True
                break
            readable, _, _ = select.select([stdout_fd], [], [], 0.2)
            if not readable:
                continue
            chunk = os.read(stdout_fd, 1 << 20)
            if not chunk:
                break
            if size is None:
                size = parse_frame_size(b"".join(stderr_chunks).decode(errors="replace").split("Output #0")[0])
                if size is None:
                    # ffmpeg writes the description before any frame; wait for it briefly.
                    for _ in range(20):
                        time.sleep(0.01)
                        size = parse_frame_size(b"".join(stderr_chunks).decode(errors="replace"))
                        if size is not None:
                            break
                if size is None:
                    break
            buffer += chunk
            frame_bytes = size[0] * size[1] * 3
            complete = len(buffer) // frame_bytes
            if complete == 0:
                continue
            now_mono, now_wall = time.monotonic(), time.time()
            newest = bytes(buffer[(complete - 1) * frame_bytes: complete * frame_bytes])
            del buffer[: complete * frame_bytes]
            frame = np.frombuffer(newest, dtype=np.uint8).reshape(size[1], size[0], 3)
            last_frame_at = now_mono
            if not delivered:
                delivered = True
                self._set_up()
                log.info("[%s] camera %s streaming %dx%d (%s, %s decode)", self.name, self.display_url,
                         size[0], size[1], self.settings.transport, decoder.name)
            with self._lock:
                self.health.frames += complete
                self.health.width, self.health.height = size
                # Frames decoded in the same read burst, and a frame nobody took, are stale.
                self.health.stale_frames_dropped += complete - 1 + (0 if self._latest_taken else 1)
                self._latest = CapturedFrame(frame, now_mono, now_wall)
                self._latest_taken = False
                self._new_frame.notify_all()
        self._kill()
        stderr_reader.join(timeout=2)
        stderr_text = b"".join(stderr_chunks).decode(errors="replace")
        if self._stop.is_set():
            return delivered
        if stalled:
            with self._lock:
                self.health.stalls += 1
            code: CameraErrorCode = "stalled" if delivered else classify_or_unreachable(stderr_text)
        else:
            code = classify_ffmpeg_error(stderr_text)
        self._set_down(code)
        log.debug("[%s] ffmpeg ended: %s", self.name, redact(stderr_text[-500:]))
        return delivered


def classify_or_unreachable(stderr_text: str) -> CameraErrorCode:
    """A session that never produced a frame before its timeout: what ffmpeg said, else unreachable."""
    code = classify_ffmpeg_error(stderr_text)
    return "unreachable" if code == "ended" else code


def _drain(stream: IO[bytes], chunks: list[bytes]) -> None:
    read = stream.read
    while True:
        data = read(4096)
        if not data:
            return
        chunks.append(data)
        # Keep the head (stream description) and a bounded tail.
        if len(chunks) > 256:
            del chunks[16:-200]
