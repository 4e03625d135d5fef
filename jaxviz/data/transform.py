"""What the input pipeline needs from its caller to turn a decoded image into a model input.

data/ knows nothing of models: a job hands `stream` any object with the `Transform` shape (the
model's `Preprocess` has it). The pipeline uses `size` for the batch shape, `resize` (when
present) to choose how far a JPEG may be DCT-downscaled while decoding, and `to_uint8` to resize
and crop, in the worker that decoded the image.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from PIL import Image


class Transform(Protocol):
    """size: (H, W) of the uint8 output; to_uint8: RGB PIL image -> [H, W, 3] uint8.

    Optional attribute `resize: int | None`: the shorter side is resized to it before a centre
    crop to `size` (torchvision style); absent or None: straight resize to `size`.
    """

    size: tuple[int, int]

    def to_uint8(self, image: Image.Image) -> np.ndarray: ...


def draft_target(transform: Transform) -> tuple[int, int]:
    """(width, height) the decoded image must cover for `to_uint8` not to upsample: a JPEG is
    decoded at the smallest DCT scale whose size is still at least this."""
    h, w = transform.size
    side = getattr(transform, "resize", None)
    if side is None:
        return int(w), int(h)
    return max(int(w), int(side)), max(int(h), int(side))
