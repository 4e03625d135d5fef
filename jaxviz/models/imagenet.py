"""ImageNet-1k class names, shipped as data (jaxviz/assets/imagenet_classes.txt, one per line,
in class-index order).

Origin: `_IMAGENET_CATEGORIES` in torchvision/models/_meta.py of torchvision 0.29.1 (BSD-3-Clause,
Copyright (c) Soumith Chintala 2016, all rights reserved), copied verbatim, one name per line.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

NUM_CLASSES = 1000
_FILE = "imagenet_classes.txt"


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names; index k is class k (e.g. 281 'tabby', 967 'espresso')."""
    text = (resources.files("jaxviz.assets") / _FILE).read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != NUM_CLASSES:
        raise RuntimeError(f"{_FILE} holds {len(names)} names, expected {NUM_CLASSES}")
    return names
