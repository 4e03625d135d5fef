"""Fuzz the checkpoint readers through the CLI: N random mutations of a valid zip `.pth`, legacy
`.pth` and `.safetensors` of a tiny model, each run as `jaxviz filters --model NAME=PATH`.

    nice python scripts/fuzz_checkpoints.py 1000 [SEED]

Prints one JSON line: counts by outcome (ok = exit 0, refused = exit 2 with one line), the
slowest case, and every failure (any other exit, a traceback, several lines, or over 5 s).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("JAXVIZ_CACHE", "off")

from tests import hostile_files as hf  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    hf.register()
    with tempfile.TemporaryDirectory() as folder:
        t = time.time()
        report = hf.fuzz(folder, n, seed=seed, cli=True)
    print(json.dumps({"n": n, "seed": seed, "seconds": round(time.time() - t, 1), **report}))


if __name__ == "__main__":
    main()
