"""Pipeline fixtures: one synthetic dataset and one well-trained ONNX model per test session.

Training once and importing the exported ONNX into each test's own database keeps
the suite fast, and exercises the "bring your own model" path on every use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud.pipeline.service import PipelinePaths

TEST_IMAGES_PER_CLASS = 200


@dataclass(frozen=True)
class TrainedOnnx:
    onnx_path: Path
    labels_path: Path
    spec_path: Path
    data_root: Path
    accuracy: float
    torch_model: Any  # the trained torch.nn.Module, for builds that convert from PyTorch (LiteRT)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cloud.pipeline.data.synth import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("shapes") / "data", images_per_class=TEST_IMAGES_PER_CLASS,
                                   seed=3)


@pytest.fixture(scope="session")
def good_onnx(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedOnnx:
    """A model trained well enough (>= 0.9 test accuracy) that INT8 builds should pass their gate."""
    import json

    from cloud.pipeline.data.dataset import scan_imagefolder
    from cloud.pipeline.train.trainer import DEFAULT_SPEC, TrainConfig, export_onnx, train

    workdir = tmp_path_factory.mktemp("good-model")
    dataset = scan_imagefolder(shapes_root)
    result = train(dataset, TrainConfig(epochs=8, batch_size=16, seed=0), DEFAULT_SPEC, show_progress=False)
    onnx_path = export_onnx(result.model, DEFAULT_SPEC, workdir / "external.onnx")
    labels_path = workdir / "labels.txt"
    labels_path.write_text("\n".join(dataset.labels) + "\n")
    spec_path = workdir / "preprocessing.json"
    spec_path.write_text(json.dumps(DEFAULT_SPEC.model_dump(mode="json")))
    return TrainedOnnx(onnx_path, labels_path, spec_path, shapes_root, float(result.metrics["accuracy"]),
                       result.model.eval())


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Path:
    """The CLI's data directory and database for one test (in the environment its commands read)."""
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "cloud"))
    monkeypatch.setenv("EDGEFLEET_DATABASE_URL", database_url)
    return tmp_path


@pytest.fixture
def paths(tmp_path: Path) -> PipelinePaths:
    return PipelinePaths.under(tmp_path / "cloud")
