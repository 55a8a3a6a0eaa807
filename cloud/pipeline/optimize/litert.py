"""LiteRT (.tflite) builds, FP32 and INT8, through ``litert-torch``.

litert-torch converts a PyTorch module without TensorFlow, but it pins its own
pydantic and typing-extensions versions and pulls JAX, so the control plane does not
depend on it. The conversion runs as a separate process (``litert_convert.py``) in
either this environment, when litert-torch is installed here, or the one named by
``EDGEFLEET_LITERT_PYTHON`` (``make test`` builds one in ``.venv-litert``). The module
crosses over as a ``torch.export`` program, the calibration batch as ``.npy``. With no
converter the build records LiteRT as *not built* with the reason; nothing is faked.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
from torch import nn

from agent.contract import PreprocessSpec
from cloud.pipeline.errors import BuildToolError

LITERT_PYTHON_ENV = "EDGEFLEET_LITERT_PYTHON"
NOT_INSTALLED = ("litert-torch is not available: install it (pip install litert-torch) or point "
                 f"{LITERT_PYTHON_ENV} at a Python that has it; LiteRT .tflite artifacts were not built")
_SCRIPT = Path(__file__).with_name("litert_convert.py")


def converter_python() -> str | None:
    """The interpreter that runs the conversion, or None when there is none."""
    configured = os.environ.get(LITERT_PYTHON_ENV)
    if configured:
        return configured if Path(configured).is_file() else None
    return sys.executable if importlib.util.find_spec("litert_torch") is not None else None


def litert_available() -> bool:
    return converter_python() is not None


def convert_tflite(model: nn.Module, spec: PreprocessSpec, path: Path,
                   calibration: npt.NDArray[np.float32] | None = None, *, timeout_s: float = 1800,
                   quantize_modules: tuple[str, ...] = ()) -> Path:
    """Convert ``model`` (NCHW float input) to ``path``: FP32, or INT8 calibrated on ``calibration``.

    ``quantize_modules`` limits INT8 to those submodules (by attribute name); the rest
    stays float (a detector's decode stage). Empty: the whole model.

    Raises:
        BuildToolError: no converter, or the conversion failed (with the converter's last words).
    """
    import torch

    python = converter_python()
    if python is None:
        raise BuildToolError(NOT_INSTALLED)
    with tempfile.TemporaryDirectory(prefix="ef-litert-") as tmp:
        program = Path(tmp) / "model.pt2"
        try:
            exported = torch.export.export(model.eval(), (torch.zeros(spec.input_shape(1)),))
            torch.export.save(exported, str(program))
        except Exception as exc:  # torch.export raises many types for unsupported modules
            raise BuildToolError(f"torch.export could not capture the model for LiteRT: {exc}") from exc
        command = [python, str(_SCRIPT), "--program", str(program), "--out", str(path)]
        if calibration is not None:
            np.save(Path(tmp) / "calibration.npy", np.asarray(calibration, dtype=np.float32))
            command += ["--calibration", str(Path(tmp) / "calibration.npy")]
            for name in quantize_modules:
                command += ["--quantize-module", name]
        path.unlink(missing_ok=True)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildToolError(f"the LiteRT converter ({python}) did not run to the end: {exc}") from exc
    if result.returncode != 0 or not path.is_file():
        last_words = " | ".join(line for line in (result.stderr or result.stdout).strip().splitlines()[-3:])
        raise BuildToolError(f"litert-torch could not convert the model (exit {result.returncode}): {last_words}")
    return path
