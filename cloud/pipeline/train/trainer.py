"""Train a small CNN on CPU (GPU when present), evaluate it, export ONNX."""

from __future__ import annotations

import random
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from agent.contract import PreprocessSpec
from cloud.pipeline.data.dataset import DatasetVersion, load_tensors

DEFAULT_SPEC = PreprocessSpec(width=64, height=64, resize="center_crop", color_order="rgb",
                              mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 5e-3
    width: int = 16
    seed: int = 0


class SmallCnn(nn.Module):
    """Three conv blocks and a linear head; ``width`` scales the channels."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, width * 2, width * 4):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class TrainResult:
    model: nn.Module
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def evaluate(model: nn.Module, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], labels: list[str]) -> dict[str, Any]:
    model.eval()
    with torch.no_grad():
        predictions = model(torch.from_numpy(x)).argmax(dim=1).numpy() if len(x) else np.zeros(0, dtype=np.int64)
    per_class = {
        label: round(float((predictions[y == i] == i).mean()), 4) if (y == i).any() else None
        for i, label in enumerate(labels)
    }
    return {"accuracy": round(float((predictions == y).mean()), 4) if len(y) else 0.0,
            "test_samples": len(y), "recall_per_class": per_class}


def train(dataset: DatasetVersion, config: TrainConfig, spec: PreprocessSpec = DEFAULT_SPEC,
          *, show_progress: bool = True) -> TrainResult:
    """Train on the dataset's train split and evaluate on its test split."""
    seed_everything(config.seed)
    x_train, y_train = load_tensors(dataset.split("train"), dataset.labels, spec)
    x_test, y_test = load_tensors(dataset.split("test"), dataset.labels, spec)
    if len(x_train) == 0:
        raise ValueError(f"dataset {dataset.dataset_id} has no readable training images")
    model = SmallCnn(len(dataset.labels), config.width)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = (len(x_train) + config.batch_size - 1) // config.batch_size
    x_all, y_all = torch.from_numpy(x_train), torch.from_numpy(y_train)
    with Progress(TextColumn("[bold]training[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                  TimeElapsedColumn(), disable=not show_progress) as progress:
        task = progress.add_task("train", total=config.epochs * steps_per_epoch, loss="")
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(len(x_all), generator=generator)
            for step in range(steps_per_epoch):
                batch = order[step * config.batch_size : (step + 1) * config.batch_size]
                optimiser.zero_grad()
                loss = loss_fn(model(x_all[batch]), y_all[batch])
                loss.backward()
                optimiser.step()
                progress.update(task, advance=1, loss=f"epoch {epoch + 1} loss {loss.item():.3f}")
    metrics = evaluate(model, x_test, y_test, dataset.labels)
    return TrainResult(model=model, metrics=metrics, hyperparameters=asdict(config))


def export_onnx(model: nn.Module, spec: PreprocessSpec, path: Path) -> Path:
    """Export with a dynamic batch axis; input ``input``, output ``logits``."""
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.zeros(spec.input_shape(1)),), str(path), dynamo=False,
                          input_names=["input"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path
