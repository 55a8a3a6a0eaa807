"""`edgefleet demo` end to end on its embedded defaults (SQLite, in-process broker, real agent processes).

The detection demo runs its real path (synthetic scenes → grid detector → mAP gate → build →
package → a video of detection scenes → enrolled agents → deployment → fleet table) with a
smaller dataset and detector than the default, fewer devices and a shorter inference window;
the classification demo runs its own loop on one device.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cloud.cli import app
from cloud.demo import run_demo
from cloud.pipeline.data.synth_detection import DETECTION_CLASSES
from cloud.pipeline.presets import DetectionQuickstartSettings

pytestmark = pytest.mark.integration

# Enough to pass the default mAP gate (0.5) in a fraction of the default preset's training time.
SMALL_DETECTOR = DetectionQuickstartSettings(images=360, epochs=12, width=16)


def test_detection_demo_ends_with_every_device_counting_objects_per_class(tmp_path: Path) -> None:
    output = io.StringIO()
    outcome = run_demo(devices=2, seconds=6.0, workdir=tmp_path / "demo", task="detection",
                       console=Console(file=output, width=160), detection_preset=SMALL_DETECTOR)

    assert outcome.line == f"demo: devices=2 reporting=2 model={outcome.model_version} task=detection"
    assert outcome.model_version.startswith("scenes-")
    # Each camera's telemetry carried objects per class, all of the detector's classes.
    assert set(outcome.object_counts) == {"cam-01", "cam-02"}
    for device_id, counts in outcome.object_counts.items():
        assert set(counts) <= set(DETECTION_CLASSES), (device_id, counts)
        assert sum(counts.values()) > 0, device_id
    seen = {label for counts in outcome.object_counts.values() for label, count in counts.items() if count}
    assert seen == set(DETECTION_CLASSES)
    printed = output.getvalue()
    assert "test mAP@0.5" in printed
    # The fleet table has a column per class and a row per device with that device's counts.
    assert all(f"{label}s" in printed for label in DETECTION_CLASSES)
    for device_id, counts in outcome.object_counts.items():
        row = next(line for line in printed.splitlines() if device_id in line and outcome.model_version in line)
        assert [cell.strip() for cell in row.split("│")[-4:-1]] == [str(counts.get(label, 0))
                                                                    for label in DETECTION_CLASSES], row


def test_classification_demo_keeps_its_loop_and_says_its_task(tmp_path: Path) -> None:
    output = io.StringIO()
    outcome = run_demo(devices=1, seconds=4.0, workdir=tmp_path / "demo", task="classification",
                       console=Console(file=output, width=160))

    assert outcome.line == f"demo: devices=1 reporting=1 model={outcome.model_version} task=classification"
    assert outcome.model_version.startswith("shapes-")
    assert outcome.object_counts == {}
    printed = output.getvalue()
    assert "test accuracy" in printed and "mean confidence" in printed


def test_demo_refuses_an_unknown_task_before_starting_anything(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--task", "tracking", "--workdir", str(tmp_path / "demo")])
    assert result.exit_code == 2
    assert "--task must be detection or classification" in result.output
    assert not (tmp_path / "demo").exists()
