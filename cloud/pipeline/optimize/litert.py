"""LiteRT (.tflite) builds through ``litert-torch``, an optional extra.

litert-torch converts a PyTorch module without TensorFlow, but it pins its own
pydantic and typing-extensions versions and pulls JAX; it is not installed in the
control plane by default. When it is absent, the build records LiteRT as *not
built* with that reason; nothing is faked.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from agent.contract import PreprocessSpec
from cloud.pipeline.errors import BuildToolError

NOT_INSTALLED = ("litert-torch is not installed (optional extra: pip install litert-torch); "
                 "LiteRT .tflite artifacts were not built")


def litert_available() -> bool:
    try:
        import litert_torch  # noqa: F401
    except Exception:
        return False
    return True


def convert_tflite(model: nn.Module, spec: PreprocessSpec, path: Path) -> Path:
    """Convert ``model`` (NCHW float input) to an FP32 ``.tflite`` file.

    Raises:
        BuildToolError: litert-torch is missing or the conversion failed.
    """
    import torch

    try:
        import litert_torch
    except Exception as exc:
        raise BuildToolError(NOT_INSTALLED) from exc
    try:
        edge_model = litert_torch.convert(model.eval(), (torch.zeros(spec.input_shape(1)),))
        path.parent.mkdir(parents=True, exist_ok=True)
        edge_model.export(str(path))
    except Exception as exc:
        raise BuildToolError(f"litert-torch could not convert the model: {exc}") from exc
    return path
