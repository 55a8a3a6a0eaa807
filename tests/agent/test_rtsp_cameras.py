"""Network cameras against a real RTSP server: outages, stalls, wrong credentials, resolution changes.

Every assertion is on counts, codes and states, with generous waits (the CPU is shared).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.capture.stream import (
    CredentialsError,
    DecoderChoice,
    StreamSettings,
    StreamSource,
    build_ffmpeg_command,
    choose_decoder,
    classify_ffmpeg_error,
    parse_frame_size,
    parse_hwaccels,
    redact,
    resolve_credentials,
)
from agent.telemetry.capture_latency import CaptureLatency
from tests.support.rtsp import (
    MjpegServer,
    RtspServer,
    StallingProxy,
    free_port,
    require_rtsp_server,
    wait_until,
)

FAST = StreamSettings(stall_timeout_s=3.0, open_timeout_s=3.0, reconnect_min_s=0.3, reconnect_max_s=2.0)
PASSWORD = "s3cret-Pa55"


# --- pure parts --------------------------------------------------------------------------


def test_redact_hides_userinfo_in_every_url_of_a_line() -> None:
    line = f"open rtsp://admin:{PASSWORD}@10.0.0.5:554/s1 then http://u:p@cam/mjpg ok"
    assert redact(line) == "open rtsp://***@10.0.0.5:554/s1 then http://***@cam/mjpg ok"
    assert redact("rtsp://10.0.0.5/s1") == "rtsp://10.0.0.5/s1"


def test_credentials_come_from_the_secret_store_then_the_environment(tmp_path: Path) -> None:
    (tmp_path / "cam1").write_text(f"admin:{PASSWORD}\n")
    url = "rtsp://{secret:cam1}@10.0.0.5/s1"
    assert resolve_credentials(url, secrets_dir=tmp_path, env={}) == f"rtsp://admin:{PASSWORD}@10.0.0.5/s1"
    assert resolve_credentials("rtsp://{secret:cam2}@h/s", secrets_dir=tmp_path,
                               env={"EDGEFLEET_SECRET_CAM2": "u:p"}) == "rtsp://u:p@h/s"
    with pytest.raises(CredentialsError, match="cam3"):
        resolve_credentials("rtsp://{secret:cam3}@h/s", secrets_dir=tmp_path, env={})


def test_hwaccel_probe_parsing_and_software_fallback() -> None:
    output = "Hardware acceleration methods:\nvdpau\ncuda\nvaapi\nqsv\n\n"
    assert parse_hwaccels(output) == ["vdpau", "cuda", "vaapi", "qsv"]
    assert parse_hwaccels("") == []
    assert choose_decoder(["vaapi"], ["/dev/dri/renderD129", "/dev/dri/renderD128"]) == DecoderChoice(
        "vaapi", ("-hwaccel", "vaapi", "-hwaccel_device", "/dev/dri/renderD128"))
    # ffmpeg supports VAAPI but the device has no render node (this machine): software.
    assert choose_decoder(["vaapi", "cuda"], []).name == "software"
    assert choose_decoder([], ["/dev/dri/renderD128"]).name == "software"


def test_ffmpeg_diagnostics_map_to_camera_error_codes() -> None:
    assert classify_ffmpeg_error("[rtsp @ 0x1] method DESCRIBE failed: 401 Unauthorized") == "auth_failed"
    assert classify_ffmpeg_error("rtsp://***@h/s: Connection refused") == "unreachable"
    assert classify_ffmpeg_error("method DESCRIBE failed: 404 Not Found") == "not_found"
    assert classify_ffmpeg_error("Invalid data found when processing input") == "decode_error"
    assert classify_ffmpeg_error("") == "ended"
    description = "  Stream #0:0: Video: h264 (Constrained Baseline), yuv420p(progressive), 640x480, 15 fps"
    assert parse_frame_size(description) == (640, 480)
    tagged = "  Stream #0:0: Video: h264 (Main) (avc1 / 0x31637661), yuv420p, 1280x720 [SAR 1:1 DAR 16:9], 25 fps"
    assert parse_frame_size(tagged) == (1280, 720)
    assert parse_frame_size("Input #0, rtsp, from 'rtsp://***@h/s':") is None


def test_ffmpeg_command_selects_the_transport_per_camera() -> None:
    software = DecoderChoice("software")
    tcp = build_ffmpeg_command("rtsp://h/s", StreamSettings(transport="tcp"), software)
    udp = build_ffmpeg_command("rtsp://h/s", StreamSettings(transport="udp"), software)
    assert tcp[tcp.index("-rtsp_transport") + 1] == "tcp"
    assert udp[udp.index("-rtsp_transport") + 1] == "udp"
    v4l2 = build_ffmpeg_command("/dev/video0", StreamSettings(), software)
    assert v4l2[v4l2.index("v4l2") - 1] == "-f"
    assert "mpjpeg" in build_ffmpeg_command("http://cam/video.mjpg", StreamSettings(), software)


# --- against the real RTSP server ----------------------------------------------------------


@pytest.fixture
def rtsp_ready() -> None:
    require_rtsp_server()


@pytest.fixture
def sources() -> Iterator[list[StreamSource]]:
    opened: list[StreamSource] = []
    yield opened
    for source in opened:
        source.close()


def _open(sources: list[StreamSource], url: str, name: str, **kwargs: object) -> StreamSource:
    source = StreamSource(url, name=name, settings=kwargs.pop("settings", FAST),
                          rng=random.Random(0), **kwargs)
    sources.append(source)
    return source


def _frames_flow(source: StreamSource, more_than: int = 0) -> bool:
    source.grab()
    return source.health_snapshot().frames > more_than


def test_server_outage_recovers_by_itself_while_another_camera_keeps_streaming(
        rtsp_ready: None, sources: list[StreamSource]) -> None:
    with RtspServer() as flaky_server, RtspServer() as steady_server:
        flaky = _open(sources, flaky_server.url(), "flaky")
        steady = _open(sources, steady_server.url(), "steady")
        assert wait_until(lambda: _frames_flow(flaky) and _frames_flow(steady))
        flaky_server.stop()
        assert wait_until(lambda: flaky.health_snapshot().state == "down")
        steady_before = steady.health_snapshot().frames
        # The outage lasts a while; the other camera never stops meanwhile.
        wait_until(lambda: False, timeout_s=10)
        assert steady.health_snapshot().state == "streaming"
        assert steady.health_snapshot().frames > steady_before
        flaky_server.start()
        assert wait_until(lambda: flaky.health_snapshot().state == "streaming", timeout_s=90)
        recovered = flaky.health_snapshot()
        assert recovered.outages == 1 and recovered.outage_s > 0 and recovered.reconnects >= 1
        assert recovered.error_code is None
        assert steady.health_snapshot().outages == 0


def test_stall_with_the_connection_open_is_detected_and_reopened(
        rtsp_ready: None, sources: list[StreamSource]) -> None:
    with RtspServer() as server:
        proxy = StallingProxy(server.port)
        try:
            camera = _open(sources, server.url(port=proxy.port), "stalling")
            assert wait_until(lambda: _frames_flow(camera))
            proxy.stall()
            assert wait_until(lambda: camera.health_snapshot().stalls >= 1)
            assert camera.health_snapshot().error_code in ("stalled", "unreachable")
            proxy.resume()
            # The reopen goes through the proxy again (a new connection) and frames flow.
            frames_before = camera.health_snapshot().frames
            assert wait_until(lambda: _frames_flow(camera, frames_before), timeout_s=90)
            assert proxy.connections >= 2
            assert camera.health_snapshot().state == "streaming"
        finally:
            proxy.close()


def test_wrong_credentials_and_unreachable_host_are_reported_per_camera_and_never_logged(
        rtsp_ready: None, sources: list[StreamSource], caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "cam-good").write_text(f"viewer:{PASSWORD}\n")
    with RtspServer(user="viewer", password=PASSWORD) as server:
        good = _open(sources, server.url(userinfo="{secret:cam-good}"), "good", secrets_dir=tmp_path)
        wrong = _open(sources, server.url(userinfo="viewer:not-" + PASSWORD), "wrong")
        gone = _open(sources, server.url(port=free_port()), "gone")
        assert wait_until(lambda: wrong.health_snapshot().error_code == "auth_failed")
        assert wait_until(lambda: gone.health_snapshot().error_code == "unreachable")
        assert wait_until(lambda: _frames_flow(good))
        frames = good.health_snapshot().frames
        assert wait_until(lambda: _frames_flow(good, frames))
        assert good.health_snapshot().error_code is None
    assert PASSWORD not in caplog.text
    assert "***@" in caplog.text
    assert all(PASSWORD not in source.display_url for source in sources)


def test_a_stream_that_changes_resolution_keeps_working(rtsp_ready: None, sources: list[StreamSource]) -> None:
    port = free_port()
    with RtspServer(port=port, width=640, height=480) as server:
        camera = _open(sources, server.url(), "resizing")
        assert wait_until(lambda: _frames_flow(camera))
        assert camera.health_snapshot().width == 640
    with RtspServer(port=port, width=320, height=240):
        assert wait_until(lambda: camera.grab() and camera.health_snapshot().width == 320, timeout_s=90)
        frame = camera.retrieve()
        assert frame is not None and frame.shape == (240, 320, 3)


def test_the_newest_frame_wins_and_older_ones_are_counted_stale(
        rtsp_ready: None, sources: list[StreamSource]) -> None:
    with RtspServer() as server:
        camera = _open(sources, server.url(), "slow-consumer")
        assert wait_until(lambda: _frames_flow(camera))
        dropped_before = camera.health_snapshot().stale_frames_dropped
        # Nobody takes frames for a while (a slow model): they are replaced, not queued.
        paused_at = time.monotonic()
        assert wait_until(lambda: camera.health_snapshot().stale_frames_dropped >= dropped_before + 5)
        assert camera.grab()
        taken = camera.latest()
        assert taken is not None and taken.captured_monotonic_s > paused_at
        assert taken.captured_wall_s > 0


def test_capture_to_result_latency_pairs_results_with_their_capture_times() -> None:
    latency = CaptureLatency()
    latency.captured(1, 100.0)
    latency.captured(2, 100.5)
    assert latency.result(2, at_monotonic_s=100.6) == pytest.approx(100.0)
    assert latency.result(2, at_monotonic_s=101.0) is None  # one result per frame
    assert latency.result(7, at_monotonic_s=101.0) is None  # never captured (or overwritten long ago)
    assert latency.result(1, at_monotonic_s=100.3) == pytest.approx(300.0)
    # The clock is injected: this checks the percentile arithmetic, not how fast anything ran.
    median, upper = latency.snapshot_and_reset()
    assert median == pytest.approx(200.0) and upper is not None and upper > median
    assert latency.snapshot_and_reset() == (None, None)


def test_udp_transport_streams_from_the_same_server(rtsp_ready: None, sources: list[StreamSource]) -> None:
    with RtspServer() as server:
        camera = _open(sources, server.url(), "udp-camera",
                       settings=StreamSettings(transport="udp", stall_timeout_s=3.0, open_timeout_s=3.0))
        assert wait_until(lambda: _frames_flow(camera, 5))
        assert camera.health_snapshot().state == "streaming"


def test_http_mjpeg_camera_streams(rtsp_ready: None, sources: list[StreamSource]) -> None:
    with MjpegServer(width=320, height=240) as server:
        # ffmpeg's server listens shortly after it starts; the source retries until it does.
        camera = _open(sources, server.url, "mjpeg")
        assert wait_until(lambda: _frames_flow(camera, 3))
        snapshot = camera.health_snapshot()
        assert (snapshot.state, snapshot.width, snapshot.height) == ("streaming", 320, 240)
