"""Optional Prometheus endpoint on the device: a few counters, standard library only.

The agent must stay light (no prometheus_client), and the text exposition format is
simple enough to write by hand. Enabled by ``metrics_port`` in the agent config;
binds to ``metrics_host`` (loopback by default: a device should not expose it to
the camera network unless the operator decides so).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent.contract import TelemetryReport

__all__ = ["AgentMetrics", "MetricsServer", "render_exposition"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class _Family:
    name: str
    kind: str  # "counter" or "gauge"
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render_exposition(families: Iterable[_Family]) -> str:
    """The Prometheus text format (version 0.0.4) for ``families``."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            # Counters are exposed with the conventional _total suffix.
            sample = family.name + ("_total" if family.kind == "counter" else "")
            if labels:
                sample += "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items())) + "}"
            lines.append(f"{sample} {_number(value)}")
    return "\n".join(lines) + "\n"


class AgentMetrics:
    """Counters and gauges the agent updates as it works; thread-safe, cheap to update."""

    def __init__(self, device_id: str, agent_version: str) -> None:
        self.device_id = device_id
        self.agent_version = agent_version
        self.started_monotonic = time.monotonic()
        self._lock = threading.Lock()
        self.frames_total = 0
        self.inference_errors_total = 0
        self.telemetry_windows_total = 0
        self.rejected_commands = 0
        self.dropped_reports = 0
        # The newest window per pipeline: gauges show the last measurement, per pipeline.
        self._latest: dict[str, TelemetryReport] = {}

    def observe_window(self, report: TelemetryReport) -> None:
        """Fold one telemetry window (a report the agent just published) into the metrics."""
        with self._lock:
            self.frames_total += report.frames
            self.inference_errors_total += report.inference_errors
            self.telemetry_windows_total += 1
            # These two are cumulative on the device already: take the latest value.
            self.rejected_commands = report.rejected_commands
            self.dropped_reports = report.dropped_reports
            self._latest[report.pipeline or "main"] = report

    def families(self) -> list[_Family]:
        with self._lock:
            latest = dict(self._latest)
            families = [
                _Family("edgefleet_agent_uptime_seconds", "gauge", "Seconds since the agent started.",
                        [({}, round(time.monotonic() - self.started_monotonic, 3))]),
                _Family("edgefleet_agent_frames", "counter", "Frames run through a model.",
                        [({}, float(self.frames_total))]),
                _Family("edgefleet_agent_inference_errors", "counter", "Frames whose inference failed.",
                        [({}, float(self.inference_errors_total))]),
                _Family("edgefleet_agent_telemetry_windows", "counter", "Telemetry windows published.",
                        [({}, float(self.telemetry_windows_total))]),
                _Family("edgefleet_agent_rejected_commands", "counter", "Commands refused (malformed, forged, stale).",
                        [({}, float(self.rejected_commands))]),
                _Family("edgefleet_agent_dropped_reports", "counter", "Reports dropped because the buffer was full.",
                        [({}, float(self.dropped_reports))]),
            ]
        info = _Family("edgefleet_agent_info", "gauge", "Constant 1; labels name the device, agent, and per "
                       "pipeline the model version and runtime.")
        per_pipeline: dict[str, tuple[str, Callable[[TelemetryReport], float | None]]] = {
            "edgefleet_agent_fps": ("Frames per second in the last window.", lambda r: r.fps),
            "edgefleet_agent_p95_latency_milliseconds": ("95th percentile inference latency in the last window.",
                                                         lambda r: r.p95_latency_ms),
            "edgefleet_agent_mean_confidence": ("Mean top-1 confidence in the last window.", lambda r: r.mean_confidence),
            "edgefleet_agent_camera_ok": ("1 while the camera delivers frames.", lambda r: 1.0 if r.camera_ok else 0.0),
            "edgefleet_agent_cpu_percent": ("Agent process CPU use in the last window.", lambda r: r.cpu_percent),
            "edgefleet_agent_memory_megabytes": ("Agent process resident memory.", lambda r: r.memory_mb),
        }
        gauges = {name: _Family(name, "gauge", help_text) for name, (help_text, _) in per_pipeline.items()}
        for pipeline, report in sorted(latest.items()):
            info.samples.append(({"device_id": self.device_id, "agent_version": self.agent_version,
                                  "pipeline": pipeline, "model_version": report.model_version or "none",
                                  "runtime": report.runtime or "none"}, 1.0))
            for name, (_, read) in per_pipeline.items():
                value = read(report)
                if value is not None:
                    gauges[name].samples.append(({"pipeline": pipeline}, float(value)))
        if not info.samples:
            info.samples.append(({"device_id": self.device_id, "agent_version": self.agent_version,
                                  "pipeline": "none", "model_version": "none", "runtime": "none"}, 1.0))
        return [info, *families, *(g for g in gauges.values() if g.samples)]

    def render(self) -> str:
        return render_exposition(self.families())


class MetricsServer:
    """Serves ``GET /metrics`` on a daemon thread until :meth:`stop`."""

    def __init__(self, metrics: AgentMetrics, *, host: str = "127.0.0.1", port: int = 9108) -> None:
        self.metrics = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = metrics.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                # Scrapes every 15 s would flood the agent log; keep them at debug.
                log.debug("metrics: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("agent metrics on http://%s:%d/metrics", self._server.server_address[0], self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
