"""Inferring mode: simulated devices install real packages through TUF and report what the model does."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fleet import enroll_agent, publish_model
from tests.support.models import TrainedModel
from tests.support.services import wait_for
from tools.fleet_sim import DeviceMode, FleetSimulator

pytestmark = pytest.mark.integration


def nan_model(path: Path, num_classes: int) -> Path:
    """An ONNX model of the trainer's input shape whose every score is NaN."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from cloud.pipeline.train.trainer import DEFAULT_SPEC

    shape = list(DEFAULT_SPEC.input_shape(1))
    graph = helper.make_graph(
        nodes=[
            helper.make_node("ReduceMean", ["input"], ["pooled"], keepdims=1),
            helper.make_node("Flatten", ["pooled"], ["column"], axis=1),
            helper.make_node("Mul", ["column", "zero"], ["zeroed"]),
            helper.make_node("Add", ["zeroed", "const"], ["logits"]),
        ],
        name="nan",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape[1:]])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])],
        initializer=[
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("const", TensorProto.FLOAT, [1, num_classes],
                               np.full(num_classes, np.nan, dtype=np.float32).tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _telemetry(api, device_id: str) -> list[dict]:
    return api.get(f"/api/v1/devices/{device_id}/telemetry", params={"limit": 50}).json()


def test_inferring_devices_run_the_real_model_and_report_nan_as_errors(control_plane, api, trained_model,
                                                                        tmp_path: Path) -> None:
    good = publish_model(control_plane, trained_model)
    nan_path = nan_model(tmp_path / "nan.onnx", len(trained_model.labels))
    broken = publish_model(control_plane, TrainedModel(nan_path, trained_model.labels, trained_model.dataset_id, 0.0),
                           name="nan")
    device_ids = ["inf-good", "inf-nan", "proto-1"]
    for device_id in device_ids:
        assert api.post("/api/v1/devices", json={"id": device_id}).status_code == 201
    sim = FleetSimulator(
        control_plane.broker_url, device_ids, topic_prefix=control_plane.settings.topic_prefix,
        telemetry_interval_s=1.0, inferring=["inf-good", "inf-nan"], inferring_state_dir=tmp_path / "sim",
        inferring_api_url=control_plane.base_url, inferring_fps=4.0,
        inferring_enroll=lambda device_id, state_dir: enroll_agent(control_plane, state_dir, device_id),
    )
    try:
        sim.start()
        assert sim.device("inf-good").mode is DeviceMode.INFERRING
        for package_id, targets in ((good.package_id, ["inf-good", "proto-1"]), (broken.package_id, ["inf-nan"])):
            response = api.post("/api/v1/deployments", json={"package_id": package_id, "device_ids": targets})
            assert response.status_code == 201, response.text
            deployment_id = response.json()["id"]
            wait_for(lambda d=deployment_id: api.get(f"/api/v1/deployments/{d}").json()["state"] != "in_progress", 90,
                     what=f"deployment of {package_id}")
            deployment = api.get(f"/api/v1/deployments/{deployment_id}").json()
            assert deployment["state"] == "succeeded", [(j["state"], j["error_code"], j["error"]) for j in deployment["jobs"]]
        assert sim.device("inf-good").running_model_version == good.model_version
        assert sim.device("inf-good").runtime == "onnxruntime"

        def good_windows() -> list[dict]:
            return [t for t in _telemetry(api, "inf-good") if t["model_version"] == good.model_version and t["frames"]]

        wait_for(lambda: len(good_windows()) >= 2, 60, what="telemetry from the real model")
        window = good_windows()[0]
        assert set(window["class_counts"]) <= set(trained_model.labels)
        assert 0.0 < window["mean_confidence"] <= 1.0
        # The real runtime reported a latency figure (its size is the benchmarks' business).
        assert window["p95_latency_ms"] is not None and window["p95_latency_ms"] != 0
        assert window["inference_errors"] == 0

        def nan_windows() -> list[dict]:
            return [t for t in _telemetry(api, "inf-nan") if t["model_version"] == broken.model_version]

        wait_for(lambda: sum(t["inference_errors"] for t in nan_windows()) >= 2, 60, what="NaN outputs counted")
        assert all(t["frames"] == 0 and t["mean_confidence"] is None for t in nan_windows())
    finally:
        sim.stop()
