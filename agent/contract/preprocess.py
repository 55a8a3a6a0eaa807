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
    # The uint8 value letterbox padding is filled with (YOLO models are trained on 114).
    pad_value: int = Field(default=0, ge=0, le=255)

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s == 0 for s in std):
            raise ValueError("std entries must be non-zero")
        return std

    def letterbox(self, source_width: int, source_height: int) -> tuple[int, int, int, int]:
        """``(new_width, new_height, pad_x, pad_y)`` of a letterboxed frame: aspect kept, scaled to fit, centred.

        The one definition of the geometry: preprocessing places the frame with it and
        detection decoding maps boxes back to the source frame with it.
        """
        ratio = min(self.width / source_width, self.height / source_height)
        new_width, new_height = max(1, round(source_width * ratio)), max(1, round(source_height * ratio))
        return new_width, new_height, (self.width - new_width) // 2, (self.height - new_height) // 2

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        if self.layout == "nchw":
            return (batch, 3, self.height, self.width)
        return (batch, self.height, self.width, 3)
