"""jaxviz: visualizing and understanding convolutional networks at dataset scale, on JAX."""

from jaxviz.runtime.xla_flags import prefer_eigen_convolutions

prefer_eigen_convolutions()

__version__ = "0.1.0"

from jaxviz.jobs.registry import run as run  # noqa: E402
