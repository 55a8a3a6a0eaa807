"""A small anchor-free grid detector in plain PyTorch, trained seeded on CPU.

Architecture (``GridDetector``): a plain 3x3-convolution backbone (dense convolutions,
not depthwise: they are what INT8 kernels speed up most) to stride 16, a top-down
merge back to stride 8, and one head per stride-8 cell predicting class logits and
the distances from the cell centre to the box's four sides (YOLOv8's anchor-free
form, one scale). Everything that learns lives in ``body``; ``decode`` turns its raw
maps into the agent's ``yolo_raw`` layout, ``1 x (4+C) x N``: centre-x, centre-y,
width, height in input pixels, then per-class sigmoid scores, for the N grid cells.
Builds quantize ``body`` and keep ``decode`` in float (see :data:`DECODE_SCOPE`).

Training assigns each ground-truth box to the cells whose centres lie inside it and
within 2.5 cells of its centre (the smallest box wins a shared cell). Boxes learn
from a GIoU loss; classes from binary cross-entropy whose target on an assigned cell
is the IoU of that cell's predicted box (a quality score, as in VarifocalNet/GFL), so
that the box NMS keeps is the best-placed one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from agent.contract import DetectionSpec, PreprocessSpec
from cloud.pipeline.data.detection import DetectionDataset, DetectionTensors, load_detection_tensors
from cloud.pipeline.errors import PipelineInputError
from cloud.pipeline.train.trainer import environment, seed_everything

STRIDE = 8
# The most a cell may reach from its centre to a box side, in cells (the sigmoid's range).
MAX_REACH_CELLS = 8.0
# ONNX node-name prefix of the decode stage (float in every INT8 build).
DECODE_SCOPE = "/decode/"

DETECTION_SPEC = PreprocessSpec(width=160, height=160, resize="letterbox", interpolation="linear",
                                color_order="rgb", pad_value=114)


def detection_spec_for(input_size: int) -> PreprocessSpec:
    """Raises ``PipelineInputError`` unless ``input_size`` is a multiple of 16 (the backbone's stride)."""
    if input_size % 16 or input_size < 32:
        raise PipelineInputError(f"detector input size must be a multiple of 16 and at least 32, got {input_size}")
    return DETECTION_SPEC.model_copy(update={"width": input_size, "height": input_size})


def detection_block(spec: PreprocessSpec, *, score_threshold: float = 0.25, iou_threshold: float = 0.5,
                    max_detections: int = 100) -> DetectionSpec:
    """The manifest's detection block for a :class:`GridDetector` export."""
    return DetectionSpec(decoder="yolo_raw", input_width=spec.width, input_height=spec.height,
                         score_threshold=score_threshold, iou_threshold=iou_threshold,
                         max_detections=max_detections, scores="probabilities")


def _conv(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


class DetectorBody(nn.Module):
    """Backbone, top-down merge and head: raw box distances (B, 4, H, W) and class logits (B, C, H, W)."""

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        c1, c2, c3, c4 = width // 2, width, width * 2, width * 4
        self.stem = nn.Sequential(_conv(3, c1, 2), _conv(c1, c2, 2), _conv(c2, c2))  # stride 4
        self.stage8 = nn.Sequential(_conv(c2, c3, 2), _conv(c3, c3), _conv(c3, c3))  # stride 8
        self.stage16 = nn.Sequential(_conv(c3, c4, 2), _conv(c4, c4))  # stride 16: context for large objects
        self.lateral = nn.Sequential(nn.Conv2d(c4, c3, 1, bias=False), nn.BatchNorm2d(c3), nn.ReLU(inplace=True))
        self.head = nn.Sequential(_conv(c3, c3), _conv(c3, c3))
        self.box = nn.Conv2d(c3, 4, 1)
        self.cls = nn.Conv2d(c3, num_classes, 1)
        assert self.cls.bias is not None and self.box.bias is not None
        nn.init.constant_(self.cls.bias, -4.6)  # start at p = 0.01: most cells are background
        nn.init.zeros_(self.box.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8 = self.stage8(self.stem(x))
        f16 = self.stage16(f8)
        merged = f8 + F.interpolate(self.lateral(f16), scale_factor=2.0, mode="nearest")
        features = self.head(merged)
        return self.box(features), self.cls(features)


class GridDecode(nn.Module):
    """Raw maps → ``(B, 4+C, N)``: cx, cy, w, h in input pixels and class probabilities."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        cells = input_size // STRIDE
        ys, xs = torch.meshgrid(torch.arange(cells, dtype=torch.float32), torch.arange(cells, dtype=torch.float32),
                                indexing="ij")
        self.register_buffer("centres", torch.stack([(xs.flatten() + 0.5) * STRIDE, (ys.flatten() + 0.5) * STRIDE]))

    def distances(self, raw_box: torch.Tensor) -> torch.Tensor:
        """(B, 4, N) left, top, right, bottom distances in input pixels."""
        return torch.sigmoid(raw_box.flatten(2)) * (MAX_REACH_CELLS * STRIDE)

    def forward(self, raw_box: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        ltrb = self.distances(raw_box)
        left, top, right, bottom = ltrb[:, 0:1], ltrb[:, 1:2], ltrb[:, 2:3], ltrb[:, 3:4]
        centres: torch.Tensor = self.centres  # type: ignore[assignment]
        cx = centres[0:1] + (right - left) * 0.5
        cy = centres[1:2] + (bottom - top) * 0.5
        return torch.cat([cx, cy, left + right, top + bottom, torch.sigmoid(logits.flatten(2))], dim=1)


class GridDetector(nn.Module):
    def __init__(self, num_classes: int, width: int = 32, input_size: int = 160) -> None:
        super().__init__()
        if num_classes < 1 or width < 8 or width % 8:
            raise ValueError("a detector needs at least one class and a width that is a multiple of 8")
        self.body = DetectorBody(num_classes, width)
        self.decode = GridDecode(input_size)
        for module in self.body.modules():
            if isinstance(module, nn.Conv2d) and module not in (self.body.box, self.body.cls):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw_box, logits = self.body(x)
        output: torch.Tensor = self.decode(raw_box, logits)
        return output


@dataclass(frozen=True)
class DetectorConfig:
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 4e-3
    weight_decay: float = 5e-4
    width: int = 32
    seed: int = 0
    threads: int = 1
    # Half the batches see a horizontally flipped image (boxes flipped with it).
    flip: bool = True
    centre_radius_cells: float = 2.5

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.threads < 1:
            raise PipelineInputError("epochs and threads must be at least 1, batch_size at least 2")
        if self.width < 8 or self.width % 8:
            raise PipelineInputError("width must be a multiple of 8")


@dataclass
class DetectorResult:
    model: GridDetector
    hyperparameters: dict[str, Any]
    environment: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


EpochCallback = Callable[[int, int, float], None]


def _box_iou_aligned(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and GIoU of matching rows of (M, 4) xyxy boxes."""
    inter_w = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    inter_h = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = inter_w * inter_h
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    hull = ((torch.maximum(a[:, 2], b[:, 2]) - torch.minimum(a[:, 0], b[:, 0]))
            * (torch.maximum(a[:, 3], b[:, 3]) - torch.minimum(a[:, 1], b[:, 1])) + 1e-7)
    return iou, iou - (hull - union) / hull


def assign_targets(boxes: list[npt.NDArray[np.float32]], classes: list[npt.NDArray[np.int64]],
                   centres: npt.NDArray[np.float32], radius_cells: float) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Per image and cell: the assigned box's index (-1 = background), its box and its class.

    Returns ``(assigned (B, N), target boxes (B, N, 4) xyxy, target classes (B, N))``.
    """
    batch, cells = len(boxes), centres.shape[1]
    assigned = np.full((batch, cells), -1, dtype=np.int64)
    target_boxes = np.zeros((batch, cells, 4), dtype=np.float32)
    target_classes = np.zeros((batch, cells), dtype=np.int64)
    px, py = centres[0], centres[1]
    radius = radius_cells * STRIDE
    for image, (image_boxes, image_classes) in enumerate(zip(boxes, classes, strict=True)):
        if not len(image_boxes):
            continue
        areas = (image_boxes[:, 2] - image_boxes[:, 0]) * (image_boxes[:, 3] - image_boxes[:, 1])
        best_area = np.full(cells, np.inf, dtype=np.float32)
        for index in np.argsort(-areas):
            x1, y1, x2, y2 = image_boxes[index]
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            inside = (px > x1) & (px < x2) & (py > y1) & (py < y2)
            near = (np.abs(px - cx) < radius) & (np.abs(py - cy) < radius)
            chosen = inside & near
            if not chosen.any():  # a tiny box: the cell holding its centre
                chosen = np.zeros(cells, dtype=bool)
                chosen[int(np.argmin((px - cx) ** 2 + (py - cy) ** 2))] = True
            chosen &= areas[index] < best_area
            best_area[chosen] = areas[index]
            assigned[image, chosen] = index
            target_boxes[image, chosen] = image_boxes[index]
            target_classes[image, chosen] = image_classes[index]
    return assigned, target_boxes, target_classes


def detection_loss(model: GridDetector, x: torch.Tensor, boxes: list[npt.NDArray[np.float32]],
                   classes: list[npt.NDArray[np.int64]], radius_cells: float) -> torch.Tensor:
    raw_box, logits = model.body(x)
    decode = model.decode
    centres: torch.Tensor = decode.centres  # type: ignore[assignment]
    ltrb = decode.distances(raw_box).permute(0, 2, 1)  # (B, N, 4)
    px, py = centres[0][None], centres[1][None]
    predicted = torch.stack([px - ltrb[..., 0], py - ltrb[..., 1], px + ltrb[..., 2], py + ltrb[..., 3]], dim=-1)
    assigned, target_boxes, target_classes = assign_targets(boxes, classes, centres.numpy(), radius_cells)
    positive = torch.from_numpy(assigned >= 0)
    logits = logits.flatten(2).permute(0, 2, 1)  # (B, N, C)
    quality = torch.zeros_like(logits)
    count = max(1, int(positive.sum()))
    if positive.any():
        iou, giou = _box_iou_aligned(predicted[positive], torch.from_numpy(target_boxes)[positive])
        box_loss = (1.0 - giou).sum() / count
        cls_index = torch.from_numpy(target_classes)[positive]
        quality[positive, cls_index] = iou.detach().clamp(min=0.05)
    else:
        box_loss = predicted.sum() * 0.0
    cls_loss = F.binary_cross_entropy_with_logits(logits, quality, reduction="sum") / count
    return cls_loss + 2.0 * box_loss


def train_detector(dataset: DetectionDataset, config: DetectorConfig, spec: PreprocessSpec = DETECTION_SPEC, *,
                   on_epoch: EpochCallback | None = None,
                   train_tensors: DetectionTensors | None = None) -> DetectorResult:
    """Train on the dataset's train split; same data, config, seed and threads give the same weights.

    ``train_tensors`` skips decoding when the caller already has the preprocessed split.
    ``on_epoch(done, epochs, loss)`` runs after every epoch; whatever it raises stops training.

    Raises:
        PipelineInputError: the train split has no readable image, or the input size does not fit the grid.
    """
    if spec.width != spec.height or spec.width % 16:
        raise PipelineInputError(f"the detector needs a square input that is a multiple of 16, got "
                                 f"{spec.width}x{spec.height}")
    data = train_tensors if train_tensors is not None else load_detection_tensors(dataset.split("train"), spec)
    if len(data) == 0:
        raise PipelineInputError(f"dataset {dataset.dataset_id} has no readable training images")
    seed_everything(config.seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    started = time.monotonic()
    try:
        model = GridDetector(len(dataset.labels), config.width, spec.width)
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        steps_per_epoch = max(1, len(data) // config.batch_size)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.learning_rate,
                                                        total_steps=config.epochs * steps_per_epoch, pct_start=0.15)
        generator = torch.Generator().manual_seed(config.seed)
        x_all = torch.from_numpy(data.x)
        losses: list[float] = []
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(len(data), generator=generator).tolist()
            flips = torch.rand(steps_per_epoch, generator=generator).tolist()
            epoch_loss = 0.0
            for step in range(steps_per_epoch):
                batch = order[step * config.batch_size : (step + 1) * config.batch_size]
                if len(batch) < 2:
                    continue  # BatchNorm cannot normalise a batch of one
                x = x_all[batch]
                boxes = [data.boxes_input[i] for i in batch]
                if config.flip and flips[step] < 0.5:
                    x = torch.flip(x, dims=[3])
                    boxes = [np.stack([spec.width - b[:, 2], b[:, 1], spec.width - b[:, 0], b[:, 3]], axis=1)
                             if len(b) else b for b in boxes]
                optimiser.zero_grad()
                loss = detection_loss(model, x, boxes, [data.classes[i] for i in batch], config.centre_radius_cells)
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
                scheduler.step()
                epoch_loss += float(loss.item())
            losses.append(epoch_loss / steps_per_epoch)
            if on_epoch is not None:
                on_epoch(epoch + 1, config.epochs, losses[-1])
    finally:
        torch.set_num_threads(previous_threads)
    model.eval()
    hyperparameters = {**asdict(config), "architecture": "grid-detector", "input_size": spec.width,
                       "train_images": len(data), "task": "detection"}
    return DetectorResult(model=model, hyperparameters=hyperparameters, environment=environment(), losses=losses,
                          seconds=time.monotonic() - started)


def export_detector_onnx(model: GridDetector, spec: PreprocessSpec, path: Path) -> Path:
    """Export to ONNX (opset 17, input ``input``, output ``output0`` in the yolo_raw layout).

    The batch axis is dynamic, as for classifiers: an agent serving several cameras from
    one loaded detector runs their frames as one batch.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(spec.input_shape(1)),), str(path), input_names=["input"],
                          output_names=["output0"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "output0": {0: "batch"}})
    return path


def save_detector(model: GridDetector, hyperparameters: dict[str, Any], num_classes: int, path: Path) -> Path:
    torch.save({"state_dict": model.state_dict(), "config": hyperparameters, "num_classes": num_classes}, path)
    return path


def load_detector(path: Path) -> GridDetector:
    saved = torch.load(path, weights_only=True)
    config = saved["config"]
    model = GridDetector(saved["num_classes"], config["width"], config["input_size"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()
