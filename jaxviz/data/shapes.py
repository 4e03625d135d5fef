"""The synthetic shapes set (class names only, generator to come in this module)."""

CLASS_NAMES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "star",
    "ring",
    "stripes",
    "diamond",
    "hexagon",
    "crescent",
)
