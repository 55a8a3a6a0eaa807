"""Seeded, deterministic training of the MobileNetV2-style classifier on CPU (GPU when present).

The same dataset version, config and seed give bit-identical weights and metrics
on the same machine: every random source is seeded, batches are drawn from a
private generator, and PyTorch is asked for deterministic kernels.
"""

from __future__ import annotations

import platform
import random
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from agent.contract import PreprocessSpec
from agent.profiles import FirmwareProfile
from cloud.pipeline.data.dataset import DatasetVersion, load_tensors_with_index
from cloud.pipeline.errors import PipelineInputError
from cloud.pipeline.evaluate.metrics import EvaluationReport, evaluate_predictions
from cloud.pipeline.train.model import Architecture, MobileNetV2

# The demo's input: 64 px keeps training under a minute on two cores.
DEFAULT_SPEC = PreprocessSpec(width=64, height=64, resize="center_crop", color_order="rgb",
                              mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


# Called after each epoch with (epochs done, epochs in all, the last batch's loss).
EpochCallback = Callable[[int, int, float], None]


def spec_for_input_size(input_size: int) -> PreprocessSpec:
    return DEFAULT_SPEC.model_copy(update={"width": input_size, "height": input_size})


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 16
    learning_rate: float = 2e-2
    weight_decay: float = 1e-4
    width_multiplier: float = 0.75
    architecture: Architecture = "compact"
    seed: int = 0
    # One thread by default: on a shared 2-core machine PyTorch's OpenMP threads spin
    # against other processes and a step gets ~10x slower than on one thread.
    threads: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.threads < 1:
            raise PipelineInputError("epochs, batch_size and threads must be at least 1")
        if self.learning_rate <= 0 or self.width_multiplier <= 0:
            raise PipelineInputError("learning_rate and width_multiplier must be positive")

    @classmethod
    def for_profile(cls, profile: FirmwareProfile, **overrides: Any) -> TrainConfig:
        """Width (and, through :func:`spec_for_input_size`, input size) from the firmware profile."""
        architecture: Architecture = "mobilenetv2" if profile.input_size >= 128 else "compact"
        return cls(**{"width_multiplier": profile.width_multiplier, "architecture": architecture, **overrides})


@dataclass
class TrainResult:
    model: nn.Module
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any]
    evaluation: EvaluationReport
    environment: dict[str, Any]
    checkpoint: Path | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def environment() -> dict[str, Any]:
    """What a rerun needs to reproduce the numbers: library versions, machine, threads."""
    versions: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                                "numpy": np.__version__, "platform": platform.platform(),
                                "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
                                "device": "cuda" if torch.cuda.is_available() else "cpu"}
    for module in ("onnx", "onnxruntime", "openvino", "nncf"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # an optional tool is simply absent from the record
            versions[module] = None
    return versions


def predict_torch(model: nn.Module, x: npt.NDArray[np.float32], batch_size: int = 256) -> npt.NDArray[np.float32]:
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            outputs.append(model(torch.from_numpy(x[start : start + batch_size]).to(device)).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def evaluate(model: nn.Module, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], labels: list[str],
             metadata: list[dict[str, str]] | None = None) -> EvaluationReport:
    scores = predict_torch(model, x)
    predictions = scores.argmax(axis=1) if len(scores) else np.zeros(0, dtype=np.int64)
    return evaluate_predictions(predictions, y, labels, metadata)


def train(dataset: DatasetVersion, config: TrainConfig, spec: PreprocessSpec = DEFAULT_SPEC,
          *, show_progress: bool = True, checkpoint_dir: Path | None = None,
          initial_state: dict[str, torch.Tensor] | None = None, on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train on the dataset's train split and evaluate on its test split.

    ``initial_state`` (a state dict of the same architecture) fine-tunes instead of
    starting from random weights, e.g. a short pass at full resolution after
    training at a lower one (the network is fully convolutional).

    With ``checkpoint_dir``, the state after every epoch is saved there
    (``epoch-NNN.pt`` and ``last.pt``) and a run resumes from ``last.pt``.

    ``on_epoch(epochs_done, epochs, last_loss)`` is called after every epoch; whatever it
    raises ends the training there (a job's cancel stops it this way).

    Raises:
        PipelineInputError: the train split has no readable image.
    """
    seed_everything(config.seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(dataset, config, spec, show_progress=show_progress, checkpoint_dir=checkpoint_dir,
                      initial_state=initial_state, on_epoch=on_epoch)
    finally:
        torch.set_num_threads(previous_threads)


def _train(dataset: DatasetVersion, config: TrainConfig, spec: PreprocessSpec, *, show_progress: bool,
           checkpoint_dir: Path | None, initial_state: dict[str, torch.Tensor] | None,
           on_epoch: EpochCallback | None) -> TrainResult:
    x_train, y_train, _ = load_tensors_with_index(dataset.split("train"), dataset.labels, spec)
    x_test, y_test, test_samples = load_tensors_with_index(dataset.split("test"), dataset.labels, spec)
    if len(x_train) == 0:
        raise PipelineInputError(f"dataset {dataset.dataset_id} has no readable training images")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = MobileNetV2(len(dataset.labels), config.width_multiplier, config.architecture)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    model = model.to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = (len(x_train) + config.batch_size - 1) // config.batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.learning_rate,
                                                    total_steps=config.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)
    start_epoch = 0
    last_checkpoint = checkpoint_dir / "last.pt" if checkpoint_dir else None
    if last_checkpoint is not None and last_checkpoint.exists():
        state = torch.load(last_checkpoint, weights_only=True)
        if state["config"] == asdict(config) and state["dataset_id"] == dataset.dataset_id:
            model.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            start_epoch = state["epoch"]
    x_all, y_all = torch.from_numpy(x_train), torch.from_numpy(y_train)
    with Progress(TextColumn("[bold]training[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                  TimeElapsedColumn(), disable=not show_progress) as progress:
        task = progress.add_task("train", total=config.epochs * steps_per_epoch,
                                 completed=start_epoch * steps_per_epoch, loss="")
        for epoch in range(start_epoch, config.epochs):
            model.train()
            order = torch.randperm(len(x_all), generator=generator)
            last_loss = float("nan")
            for step in range(steps_per_epoch):
                batch = order[step * config.batch_size : (step + 1) * config.batch_size]
                if len(batch) < 2:
                    continue  # BatchNorm cannot normalise a batch of one
                optimiser.zero_grad()
                loss = loss_fn(model(x_all[batch].to(device)), y_all[batch].to(device))
                loss.backward()
                optimiser.step()
                scheduler.step()
                last_loss = float(loss.item())
                progress.update(task, advance=1, loss=f"epoch {epoch + 1} loss {loss.item():.3f}")
            if checkpoint_dir is not None:
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                state = {"epoch": epoch + 1, "config": asdict(config), "dataset_id": dataset.dataset_id,
                         "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                         "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                         "torch_rng": torch.get_rng_state()}
                torch.save(state, checkpoint_dir / f"epoch-{epoch + 1:03d}.pt")
                torch.save(state, checkpoint_dir / "last.pt")
            if on_epoch is not None:
                on_epoch(epoch + 1, config.epochs, last_loss)
    model = model.cpu().eval()
    report = evaluate(model, x_test, y_test, dataset.labels, [s.meta for s in test_samples])
    hyperparameters = {**asdict(config), "input_size": spec.width, "train_images": len(x_train),
                       "fine_tuned": initial_state is not None}
    return TrainResult(model=model, metrics=report.as_dict(), hyperparameters=hyperparameters, evaluation=report,
                       environment=environment(), checkpoint=last_checkpoint)


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
