"""Devices, meshes and batch sharding: every local device gets a slice of the batch axis."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def local_mesh() -> Mesh:
    """A 1-D mesh named 'batch' over this process's devices."""
    return Mesh(np.array(jax.local_devices()), ("batch",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh; other axes whole."""
    return NamedSharding(mesh, PartitionSpec("batch"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= n (batch sizes divisible by device count)."""
    return -(-n // multiple) * multiple
