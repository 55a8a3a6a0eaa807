"""The cloud's evaluation and the agent turn the same image into the same tensor.

Cloud side: the dataset loader the trainer and the evaluation use (decode a file,
then ``agent.preprocess``). Agent side: the camera path (OpenCV capture, grab and
retrieve, then the pipeline's preprocessing).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture.scenes import SceneConditions, render_frame
from agent.capture.source import OpenCvSource, read_frame
from agent.contract import PreprocessSpec
from agent.preprocess import preprocess
from cloud.pipeline.data.dataset import load_tensors, scan_imagefolder
from cloud.pipeline.train.trainer import DEFAULT_SPEC

SPECS = {
    "training-default": DEFAULT_SPEC,
    "letterbox-bgr-nhwc": PreprocessSpec(width=48, height=40, resize="letterbox", color_order="bgr", layout="nhwc",
                                         mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), interpolation="linear"),
    "stretch-uint8": PreprocessSpec(width=32, height=32, resize="stretch", dtype="uint8"),
}


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parity")
    rng = np.random.default_rng(5)
    for label in ("circle", "cross"):
        (root / label).mkdir()
        frame = render_frame(label, rng, conditions=SceneConditions(noise_std=6.0))
        assert cv2.imwrite(str(root / label / "frame.png"), frame)
    return root


@pytest.mark.parametrize("spec_name", list(SPECS))
def test_cloud_evaluation_and_agent_produce_the_same_tensor(dataset_root: Path, spec_name: str) -> None:
    spec = SPECS[spec_name]
    dataset = scan_imagefolder(dataset_root)
    cloud_tensors, _ = load_tensors(dataset.samples, dataset.labels, spec)
    assert len(cloud_tensors) == 2
    for sample, cloud_tensor in zip(dataset.samples, cloud_tensors, strict=True):
        source = OpenCvSource(str(sample.path), loop=False)
        frame = read_frame(source)
        source.close()
        assert frame is not None and frame.shape == (480, 640, 3)
        agent_tensor = preprocess(frame, spec)[0]
        assert agent_tensor.shape == cloud_tensor.shape
        # Bit for bit: one implementation, so not even float rounding may differ.
        assert np.array_equal(agent_tensor.astype(np.float32), cloud_tensor)


@pytest.mark.parametrize("spec_name", list(SPECS))
def test_lookup_table_normalisation_equals_the_arithmetic_form(spec_name: str) -> None:
    """The fast path (per-plane lookup tables) must equal (v * scale - mean) / std bit for bit."""
    spec = SPECS[spec_name]
    frame = np.random.default_rng(9).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    resized = preprocess(frame, spec.model_copy(update={"dtype": "uint8", "layout": "nhwc"}))[0]
    if spec.dtype != "float32":
        return
    expected = (resized.astype(np.float32) * np.float32(spec.scale) - np.asarray(spec.mean, dtype=np.float32)) \
        / np.asarray(spec.std, dtype=np.float32)
    if spec.layout == "nchw":
        expected = expected.transpose(2, 0, 1)
    assert np.array_equal(preprocess(frame, spec)[0], expected)
