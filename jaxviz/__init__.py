"""jaxviz: visualizing and understanding convolutional networks at dataset scale, on JAX."""

__version__ = "0.1.0"
