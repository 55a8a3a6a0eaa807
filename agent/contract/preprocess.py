"""The preprocessing spec carried in every package manifest.

The spec is data; the one implementation lives in :mod:`agent.preprocess` and is
used by the agent at inference time *and* by the cloud's training and evaluation,
so that a model sees the same tensor for the same image on both sides.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PreprocessSpec(BaseModel):
    """How a decoded BGR uint8 frame becomes a model input tensor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(ge=8, le=4096, description="model input width in pixels")
    height: int = Field(ge=8, le=4096, description="model input height in pixels")
    resize: Literal["stretch", "center_crop", "letterbox"] = "stretch"
    interpolation: Literal["nearest", "linear", "area"] = "area"
    color_order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"
    scale: float = Field(default=1.0 / 255.0, gt=0)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    dtype: Literal["float32", "uint8", "int8"] = "float32"

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s == 0 for s in std):
            raise ValueError("std entries must be non-zero")
        return std

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        if self.layout == "nchw":
            return (batch, 3, self.height, self.width)
        return (batch, self.height, self.width, 3)
