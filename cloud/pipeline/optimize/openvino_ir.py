"""OpenVINO IR builds: FP32, FP16 (weights compressed) and INT8.

INT8 uses NNCF post-training quantization when NNCF is installed (it pip-installs
cleanly next to OpenVINO); otherwise OpenVINO reads the INT8 QDQ ONNX model and
saves it as IR, which keeps the quantization ONNX Runtime calibrated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from cloud.pipeline.errors import BuildToolError


def nncf_available() -> bool:
    try:
        import nncf  # noqa: F401
    except Exception:  # NNCF imports fail in many ways when versions disagree
        return False
    return True


def _save(model: object, xml_path: Path, *, fp16: bool) -> tuple[Path, Path]:
    import openvino as ov

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml_path), compress_to_fp16=fp16)
    return xml_path, xml_path.with_suffix(".bin")


def convert_ir(onnx_path: Path, xml_path: Path, *, fp16: bool = False) -> tuple[Path, Path]:
    """Convert an ONNX model (FP32 or QDQ INT8) to IR; return the .xml and .bin paths.

    Raises:
        BuildToolError: OpenVINO could not convert the model.
    """
    import openvino as ov

    try:
        model = ov.convert_model(str(onnx_path))
        return _save(model, xml_path, fp16=fp16)
    except Exception as exc:
        raise BuildToolError(f"OpenVINO could not convert {onnx_path.name}: {exc}") from exc


def quantize_ir_nncf(onnx_path: Path, xml_path: Path, calibration: npt.NDArray[np.float32],
                     ignored_name_patterns: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """NNCF post-training INT8 quantization of the FP32 model, calibrated on ``calibration``.

    Operations whose names match one of ``ignored_name_patterns`` (regular expressions)
    stay in float.

    Raises:
        BuildToolError: NNCF or OpenVINO failed.
    """
    import contextlib
    import io
    import logging

    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)
    try:
        # convert_model, not Core.read_model: it folds the Reshape in front of each grouped
        # convolution's weights. Without that NNCF scales depthwise weights per group and kernel
        # column and the CPU plugin runs them in FP32 (test_builds.py guards this).
        model = ov.convert_model(str(onnx_path))
        dataset = nncf.Dataset(list(calibration), lambda item: item[np.newaxis])
        # NNCF draws progress bars on stdout; the CLI's --json output must stay parseable.
        with contextlib.redirect_stdout(io.StringIO()):
            ignored = (nncf.IgnoredScope(patterns=list(ignored_name_patterns), validate=False)
                       if ignored_name_patterns else None)
            quantized = nncf.quantize(model, dataset, subset_size=len(calibration),
                                      preset=nncf.QuantizationPreset.PERFORMANCE,
                                      **({"ignored_scope": ignored} if ignored is not None else {}))
        return _save(quantized, xml_path, fp16=False)
    except Exception as exc:
        raise BuildToolError(f"NNCF quantization of {onnx_path.name} failed: {exc}") from exc
