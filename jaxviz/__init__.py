"""jaxviz: visualizing and understanding convolutional networks at dataset scale, on JAX.

The public Python API (imported lazily, so `import jaxviz` stays fast):

- adapters: `from_flax(module, variables, *, input_size, ...)`, `from_nnx(module, ...)`
  -> (Model, params); `load_model("demo")` for the zoo (and `MODULE:ATTR`, plugins);
- one function per method, on preprocessed float inputs x [B, H, W, C]: `occlusion`, `gradcam`,
  `saliency`, `integrated_gradients`, `smoothgrad`, `activations`, `receptive_fields`,
  `top_patches`; `forward` runs any part of a model.
"""

from jaxviz.runtime.xla_flags import prefer_eigen_convolutions

prefer_eigen_convolutions()

__version__ = "0.1.0"

# name -> module that defines it; imported on first use
_LAZY = {
    "from_flax": "jaxviz.models.flax_adapter",
    "from_nnx": "jaxviz.models.flax_adapter",
    "from_apply_fn": "jaxviz.models.flax_adapter",
    "Model": "jaxviz.models.stage",
    "forward": "jaxviz.models.stage",
    "load_model": "jaxviz.models.zoo",
    "UsageError": "jaxviz.errors",
    "occlusion": "jaxviz.api",
    "gradcam": "jaxviz.api",
    "saliency": "jaxviz.api",
    "integrated_gradients": "jaxviz.api",
    "smoothgrad": "jaxviz.api",
    "activations": "jaxviz.api",
    "receptive_fields": "jaxviz.api",
    "top_patches": "jaxviz.api",
    "run": "jaxviz.jobs.registry",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'jaxviz' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
