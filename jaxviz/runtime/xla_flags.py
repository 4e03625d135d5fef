"""XLA flags jaxviz sets before JAX starts its backends.

jaxlib 0.10's XLA:CPU hands every convolution and dot to YNNPACK. On the reference CPU (2 cores of
a Sapphire Rapids Xeon) YNNPACK's convolutions are 1.2-2x slower than XLA's own (Eigen) ones, while
its dots are 2-4x faster than Eigen's on fully connected layers (measured at batch 32,
`benchmarks/forward.py --cases stages`, AlexNet conv3-conv5 0.47-0.56x PyTorch with YNNPACK,
0.91-1.0x without; fc6 0.8x with, 0.27x without). So jaxviz turns YNNPACK off for convolutions,
through `XLA_FLAGS`, which XLA reads once, when the first computation starts its backend.

YNNPACK's reduce fusions are off too: in VGG-16's whole forward pass at batch >= 2 one of them
page-faults ~6.4 million pages (25 GB) per call, whatever the batch (measured with
getrusage: 104 s a call at batch 2, 80% system time, against 3.4 s without it and 1.7 s at
batch 1), which made chunked occlusion of VGG-16 25x slower than one position at a time.

- A user who sets any `xla_cpu_experimental_ynn_fusion_type` in `XLA_FLAGS` keeps their choice.
- XLA aborts the process on a flag it does not know, so the flag is added only for the jaxlib
  versions it was measured on (`VERIFIED_JAXLIB`); re-measure before widening the range.
- Importing jaxviz after JAX has run a computation leaves the backend as it was: convolutions are
  then correct but slower on CPU. GPU and TPU backends ignore the flag.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

import jaxlib

YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
CONVOLUTIONS_WITHOUT_YNNPACK = (
    f"--{YNN_FUSION_TYPE}=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,-LIBRARY_FUSION_TYPE_REDUCE"
)
VERIFIED_JAXLIB = ((0, 10), (0, 11))  # [first, last) (major, minor) measured


def _minor_version(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def prefer_eigen_convolutions(
    environ: MutableMapping[str, str] = os.environ, jaxlib_version: str = jaxlib.__version__
) -> bool:
    """Adds CONVOLUTIONS_WITHOUT_YNNPACK to environ["XLA_FLAGS"]; True if it was added."""
    flags = environ.get("XLA_FLAGS", "")
    first, last = VERIFIED_JAXLIB
    if YNN_FUSION_TYPE in flags or not first <= _minor_version(jaxlib_version) < last:
        return False
    environ["XLA_FLAGS"] = f"{flags} {CONVOLUTIONS_WITHOUT_YNNPACK}".strip()
    return True
