"""Preprocessing follows the spec exactly; the frame slot lets the newest frame win."""

from __future__ import annotations

import numpy as np
import pytest

from agent.capture.latest import FrameSlot
from agent.contract import PreprocessSpec
from agent.preprocess import preprocess


def test_preprocess_applies_colour_order_layout_and_normalisation() -> None:
    frame = np.zeros((8, 10, 3), dtype=np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30  # B, G, R
    spec = PreprocessSpec(width=10, height=8, color_order="rgb", layout="nchw", scale=1.0,
                          mean=(1.0, 2.0, 3.0), std=(1.0, 2.0, 3.0))
    tensor = preprocess(frame, spec)
    assert tensor.shape == (1, 3, 8, 10) and tensor.dtype == np.float32
    assert tensor[0, :, 0, 0] == pytest.approx([(30 - 1) / 1, (20 - 2) / 2, (10 - 3) / 3])
    nhwc = preprocess(frame, spec.model_copy(update={"layout": "nhwc", "color_order": "bgr"}))
    assert nhwc.shape == (1, 8, 10, 3) and nhwc[0, 0, 0].tolist() == [9.0, 9.0, 9.0]


@pytest.mark.parametrize("resize", ["stretch", "center_crop", "letterbox"])
def test_every_resize_mode_yields_the_model_input_shape(resize: str) -> None:
    spec = PreprocessSpec(width=32, height=24, resize=resize)
    assert preprocess(np.zeros((480, 640, 3), dtype=np.uint8), spec).shape == (1, 3, 24, 32)


def test_preprocess_refuses_what_is_not_a_bgr_frame() -> None:
    with pytest.raises(ValueError, match="uint8 BGR frame"):
        preprocess(np.zeros((4, 4), dtype=np.uint8), PreprocessSpec(width=8, height=8))


def test_frame_slot_hands_over_the_newest_frame_and_counts_the_rest() -> None:
    slot = FrameSlot()
    frames = [np.full((2, 2, 3), i, dtype=np.uint8) for i in range(3)]
    for frame in frames:
        slot.put(frame)
    taken = slot.take(timeout_s=0.1)
    assert taken is not None and int(taken[0, 0, 0]) == 2
    assert (slot.offered, slot.overwritten) == (3, 2)
    assert slot.take(timeout_s=0.01) is None  # nothing newer yet
