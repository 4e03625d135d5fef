"""Per-model preprocessing: host-side resize/crop to uint8, device-side normalization."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxviz.models.geometry import Pair


@dataclass(frozen=True)
class Preprocess:
    """How images become model inputs.

    size: model input (H, W). resize: shorter side resized to this, then a center crop to `size`
    (torchvision style); None resizes straight to `size`. mean/std: per RGB channel on the [0, 1]
    scale.
    """

    size: Pair
    resize: int | None = None
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """An RGB PIL image -> [H, W, 3] uint8 at the model's input size (bilinear, center crop)."""
        h, w = self.size
        if self.resize is None:
            if image.size != (w, h):
                image = image.resize((w, h), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
        iw, ih = image.size
        scale = self.resize / min(iw, ih)
        nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
        image = image.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - w) // 2, (nh - h) // 2
        return np.asarray(image.crop((left, top, left + w, top + h)), dtype=np.uint8)

    def normalize(self, images: jax.Array) -> jax.Array:
        """[B, H, W, 3] uint8 (or float in [0, 255]) -> float32 normalized model input."""
        x = jnp.asarray(images, jnp.float32) / 255.0
        return (x - self._channel(self.mean, x.ndim)) / self._channel(self.std, x.ndim)

    def denormalize(self, x: jax.Array) -> jax.Array:
        """Inverse of `normalize`, to float32 in [0, 1] (clipped), for display."""
        y = x * self._channel(self.std, x.ndim) + self._channel(self.mean, x.ndim)
        return jnp.clip(y, 0.0, 1.0)

    @staticmethod
    def _channel(v: tuple[float, float, float], ndim: int) -> jax.Array:
        """A per-channel constant shaped to broadcast against an [..., 3] array of rank ndim."""
        return jnp.asarray(v, jnp.float32).reshape((1,) * (ndim - 1) + (3,))
