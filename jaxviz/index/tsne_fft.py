"""Repulsive t-SNE forces by FFT-accelerated interpolation (Linderman, Rachh, Hoskins,
Steinerberger, Kluger 2019, "Fast interpolation-based t-SNE for improved visualization of
single-cell RNA-seq data", Nature Methods; FIt-SNE): O(N) per evaluation plus an FFT on a fixed
grid.

The bounding square of the embedding is cut into n_boxes x n_boxes boxes with `n_interp`
equispaced Lagrange nodes per box and axis. Charges are spread from points to nodes with the
Lagrange weights, convolved with the kernel on the (uniform) node grid by FFT, and the potentials
interpolated back to the points. Deviation from FIt-SNE: the normalization Z = sum_ij q_ij uses its
own Cauchy-kernel channel (charge 1, kernel 1/(1+r^2)) instead of FIt-SNE's expansion of
(1 + |y_i - y_j|^2) over the squared kernel, which cancels badly in float32; it shares the charge
grid of the squared kernel's first channel, so 3 charge FFTs, 2 kernel FFTs and 4 inverse FFTs.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

# box counts per axis the engine compiles for (FFT-friendly, ~25% apart); see `grid_boxes`
BOX_SIZES = (25, 32, 40, 50, 64, 80, 100, 128, 160, 200, 256, 320, 400, 512, 640, 800, 1024)


def grid_boxes(extent: float, min_boxes: int = 50, boxes_per_unit: float = 1.0) -> int:
    """Boxes per axis for an embedding of this extent: at least `min_boxes`, about one box per unit
    of embedding length (FIt-SNE's defaults), rounded up to the next of BOX_SIZES."""
    need = max(min_boxes, extent * boxes_per_unit)
    return next((b for b in BOX_SIZES if b >= need), BOX_SIZES[-1])


def _lagrange_weights(u: jax.Array, n_interp: int) -> jax.Array:
    """u [N] in [0, 1] (position in its box) -> [N, n_interp] Lagrange basis at nodes (l+0.5)/p."""
    nodes = (jnp.arange(n_interp, dtype=jnp.float32) + 0.5) / n_interp
    cols = []
    for a in range(n_interp):
        w = jnp.ones_like(u)
        for b in range(n_interp):
            if b != a:
                w = w * (u - nodes[b]) / (nodes[a] - nodes[b])
        cols.append(w)
    return jnp.stack(cols, axis=1)


@partial(jax.jit, static_argnames=("n_boxes", "n_interp"))
def interpolated_repulsion(
    y: jax.Array, n_boxes: int = 50, n_interp: int = 3
) -> tuple[jax.Array, jax.Array]:
    """Approximate unnormalized repulsion and normalization of the t-SNE gradient.

    y: [N, 2] float32. Returns (rep [N, 2] = sum_j q_ij^2 (y_i - y_j), Z = sum_{i != j} q_ij) with
    q_ij = 1 / (1 + |y_i - y_j|^2); the negative gradient term is rep / Z.
    """
    n = y.shape[0]
    lo = jnp.min(y)
    hi = jnp.max(y)
    width = jnp.maximum(hi - lo, 1e-6) / n_boxes
    center = 0.5 * (lo + hi)
    m = n_boxes * n_interp  # nodes per axis
    spacing = width / n_interp

    t = (y - lo) / width  # [N, 2] in box units
    box = jnp.clip(jnp.floor(t), 0, n_boxes - 1)
    u = t - box
    wx = _lagrange_weights(u[:, 0], n_interp)  # [N, p]
    wy = _lagrange_weights(u[:, 1], n_interp)
    gx = box[:, 0:1].astype(jnp.int32) * n_interp + jnp.arange(n_interp)[None, :]  # [N, p]
    gy = box[:, 1:2].astype(jnp.int32) * n_interp + jnp.arange(n_interp)[None, :]
    flat = (gx[:, :, None] * m + gy[:, None, :]).reshape(n, -1)  # [N, p*p]
    w = (wx[:, :, None] * wy[:, None, :]).reshape(n, -1)  # [N, p*p]

    yc = y - center
    charges = jnp.concatenate([jnp.ones((n, 1), y.dtype), yc], axis=1)  # [N, 3]: 1, y_x, y_y
    spread = (w[:, :, None] * charges[:, None, :]).reshape(-1, 3)
    grid = jax.ops.segment_sum(spread, flat.reshape(-1), num_segments=m * m)
    grid = grid.reshape(m, m, 3)

    # kernels on the circulant embedding of the node grid: offsets 0..m-1, then -(m-1)..-1
    off = jnp.arange(2 * m)
    off = jnp.where(off < m, off, off - 2 * m).astype(jnp.float32) * spacing
    cauchy = 1.0 / (1.0 + off[:, None] ** 2 + off[None, :] ** 2)
    k_hat = jnp.fft.rfft2(jnp.stack([cauchy**2, cauchy], axis=-1), axes=(0, 1))  # [2m, m+1, 2]
    c_hat = jnp.fft.rfft2(grid, s=(2 * m, 2 * m), axes=(0, 1))  # [2m, m+1, 3]
    # channels: (1, y_x, y_y) against the squared kernel, then 1 against the Cauchy kernel
    prod = jnp.concatenate([k_hat[..., :1] * c_hat, k_hat[..., 1:] * c_hat[..., :1]], axis=-1)
    pot = jnp.fft.irfft2(prod, s=(2 * m, 2 * m), axes=(0, 1))[:m, :m]
    pot = pot.reshape(m * m, 4)

    phi = jnp.einsum("nk,nkc->nc", w, pot[flat])  # [N, 4]
    rep = yc * phi[:, 0:1] - phi[:, 1:3]
    z = jnp.sum(phi[:, 3]) - n  # remove the self terms q_ii = 1
    return rep, z
