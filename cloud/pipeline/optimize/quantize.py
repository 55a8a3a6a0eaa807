"""ONNX Runtime static quantization to INT8 QDQ, with a calibration set from the training split.

Settings come from the firmware profile's ``quantization`` block. ONNX Runtime's
documentation: S8S8 QDQ is the default recommendation; on x86 CPUs without VNNI,
U8S8 can saturate, so use ``reduce_range`` (7-bit weights) or U8U8 there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cloud.pipeline.errors import BuildToolError, PipelineInputError

CalibrationMethodName = Literal["minmax", "entropy", "percentile"]
IntType = Literal["int8", "uint8"]


@dataclass(frozen=True)
class QuantizationSettings:
    activation_type: IntType = "int8"
    weight_type: IntType = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    calibration_method: CalibrationMethodName = "minmax"

    @classmethod
    def from_profile(cls, block: dict[str, Any], **overrides: Any) -> QuantizationSettings:
        """Build from a profile's ``quantization:`` mapping; ``overrides`` (e.g. from the CLI) win.

        Raises:
            PipelineInputError: an unknown format, type or calibration method.
        """
        values = {k: v for k, v in {**block, **overrides}.items() if v is not None}
        quant_format = values.pop("format", "qdq")
        if quant_format != "qdq":
            raise PipelineInputError(f"quantization format {quant_format!r} is not supported; use 'qdq'")
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise PipelineInputError(f"unknown quantization settings {sorted(unknown)}")
        settings = cls(**values)
        for name in ("activation_type", "weight_type"):
            if getattr(settings, name) not in ("int8", "uint8"):
                raise PipelineInputError(f"{name} must be int8 or uint8")
        if settings.calibration_method not in ("minmax", "entropy", "percentile"):
            raise PipelineInputError("calibration_method must be minmax, entropy or percentile")
        return settings

    @property
    def tag(self) -> str:
        """A short, file-name-safe name: e.g. ``s8s8-pc-minmax`` or ``u8s8-pc-rr-minmax``."""
        letters = {"int8": "s8", "uint8": "u8"}
        parts = [letters[self.activation_type] + letters[self.weight_type]]
        if self.per_channel:
            parts.append("pc")
        if self.reduce_range:
            parts.append("rr")
        parts.append(self.calibration_method)
        return "-".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _CalibrationReader:
    """Feeds calibration tensors one at a time (ORT's ``CalibrationDataReader`` protocol)."""

    def __init__(self, input_name: str, tensors: npt.NDArray[np.float32]) -> None:
        self._input_name = input_name
        self._tensors = tensors
        self._iterator: Iterator[npt.NDArray[np.float32]] = iter(tensors)

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        item = next(self._iterator, None)
        return None if item is None else {self._input_name: item[np.newaxis]}

    def rewind(self) -> None:
        self._iterator = iter(self._tensors)


def select_calibration(tensors: npt.NDArray[np.float32], count: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """A seeded random subset of the training tensors (the same subset for the same seed)."""
    if len(tensors) == 0:
        raise PipelineInputError("the calibration set is empty: the training split has no readable image")
    order = np.random.default_rng(seed).permutation(len(tensors))[:count]
    return tensors[np.sort(order)]


def _nodes_named(model_path: Path, prefixes: tuple[str, ...]) -> list[str]:
    if not prefixes:
        return []
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [node.name for node in graph.node if node.name.startswith(prefixes)]


def quantize_onnx_static(fp32_path: Path, out_path: Path, calibration: npt.NDArray[np.float32],
                         settings: QuantizationSettings, input_name: str = "input",
                         exclude_node_prefixes: tuple[str, ...] = ()) -> Path:
    """Write an INT8 QDQ model calibrated on ``calibration`` (preprocessed NCHW float32 batch).

    Nodes whose names start with one of ``exclude_node_prefixes`` stay in float (a
    detector's decode stage: box coordinates and class scores share no useful int8 range).

    Raises:
        PipelineInputError: no calibration data.
        BuildToolError: ONNX Runtime's quantizer failed.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise PipelineInputError("the calibration set is empty")
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    prepared = out_path.with_name(out_path.stem + ".prep.onnx")
    logging.getLogger("root").setLevel(logging.ERROR)  # ORT's quantizer logs every node at WARNING
    try:
        # Shape inference and BN/Conv folding first, as ORT's quantization guide recommends.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        excluded = _nodes_named(prepared, exclude_node_prefixes)
        quantize_static(
            str(prepared), str(out_path), _CalibrationReader(input_name, calibration),
            quant_format=QuantFormat.QDQ, per_channel=settings.per_channel, reduce_range=settings.reduce_range,
            activation_type=types[settings.activation_type], weight_type=types[settings.weight_type],
            calibrate_method=methods[settings.calibration_method], nodes_to_exclude=excluded,
            # ActivationSymmetric stays off: measured here it made S8S8 QDQ ~2x slower than
            # FP32 (ReLU6 outputs are non-negative; a symmetric range wastes half of it).
        )
    except (PipelineInputError, BuildToolError):
        raise
    except Exception as exc:  # the quantizer raises many types; wrap once, here
        raise BuildToolError(f"ONNX Runtime static quantization failed for {fp32_path.name}: {exc}") from exc
    finally:
        prepared.unlink(missing_ok=True)
    return out_path
