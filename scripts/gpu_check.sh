#!/usr/bin/env bash
# The GPU figures in one short lease (< 5 minutes on one GPU): the smoke suite, then the paths
# that only mean something on an accelerator. Usage: bash scripts/gpu_check.sh [OUT_DIR]
# Needs `pip install -e ".[gpu,test]"` on the GPU machine.
set -uo pipefail
out="${1:-gpu-check}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
python -c "import jax; print('devices:', jax.devices())" | tee "$out/devices.txt"
python -m benchmarks.run --size smoke --out "$out/smoke.json" | tee "$out/smoke.md"
# faiss-gpu: an index on the GPU, searched
python - <<'PY' | tee "$out/faiss_gpu.json"
import json, time, numpy as np, faiss
x = np.random.default_rng(0).standard_normal((1_000_000, 128), dtype=np.float32)
res = faiss.StandardGpuResources()
index = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatL2(128))
index.add(x)
t = time.time(); index.search(x[:10000], 10); dt = time.time() - t
print(json.dumps({"benchmark": "faiss_gpu", "n": 1_000_000, "queries_per_s": 10000 / dt}))
PY
# JAX t-SNE at 60k points (interpolated mode) on the accelerator
python benchmarks/tsne.py --n 60000 --only jax:interpolated | tee "$out/tsne_60k.jsonl"
# occlusion at 3025 positions (window 8, stride 4, 224x224) in fp32 and bf16
for dtype in float32 bfloat16; do
  python -m jaxviz.cli occlusion --model efficientnet_lite0 --data samples --limit 1 \
    --window 8 --stride 4 --dtype "$dtype" --out "$out/occlusion_$dtype" | tee -a "$out/occlusion.txt"
done
