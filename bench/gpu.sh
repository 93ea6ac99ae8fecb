#!/usr/bin/env bash
# The GPU path and its figures, on a CUDA machine without network access: the foreign-export corpus
# audited on the GPU and held to the frameworks' own maps, then the ResNet-18-like scale run (reduced
# settings, then the paper's). Wheels the machine lacks travel in .whl (pydantic, captum...).
#   OUT=folder bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 OUT="${OUT:-bench/results/tmp}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout 120 python3 bench/foreign_exports.py --json "$OUT/foreign_exports_gpu.json"
timeout 150 python3 -m bench.scale --device cuda --budget 32768 --skip-growth --ig-steps 5 --noise-samples 5 --draws 1 \
  && cp bench/scale.json "$OUT/scale_gpu_reduced.json"
timeout 240 python3 -m bench.scale --device cuda --budget 32768 --skip-growth \
  && cp bench/scale.json "$OUT/scale_gpu_paper.json"
