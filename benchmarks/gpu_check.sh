#!/usr/bin/env bash
# The GPU check for the day a CUDA machine is at hand (README, "Paper scale"): in under 8 minutes on one
# GPU it runs the per-sample gradient and online-SVD benchmarks, the GPU-marked tests and the tiny test
# config's workflow on the GPU, and prints one line of ratios per benchmark at the end.
#   bash benchmarks/gpu_check.sh            # after the README's install, with a CUDA build of torch
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY' || { echo "gpu_check: no CUDA device visible to torch; nothing to check" >&2; exit 2; }
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
PY
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

# 1. Per-sample LoRA gradients on the GPU: batched hooks against the per-sample loop and a plain step.
timeout 180 python benchmarks/per_sample_grads.py --device cuda --batch-size 8 --seq-len 256 \
  | tee "$out/per_sample_grads.txt"
# 2. The online SVD, float32 state on the GPU against float64 on the CPU, same stream.
timeout 120 python benchmarks/svd_device.py --d 2000000 --blocks 20 | tee "$out/svd_device.txt"
# 3. The tests that need a GPU (CUDA projector, device SVD, bf16 gradients on the device).
timeout 120 python -m pytest -q -p no:cacheprovider -m gpu 2>&1 | tee "$out/pytest_gpu.txt" | tail -3
# 4. The tiny test config through the whole DAG with every model stage on the GPU (model.device: cuda).
work=$(mktemp -d)
tar --exclude=./.git --exclude=./results --exclude=./resources --exclude=./logs --exclude=./.snakemake -cf - . \
  | tar -xf - -C "$work"
python - "$work/config/test.yaml" <<'PY'
import sys, yaml
path = sys.argv[1]
cfg = yaml.safe_load(open(path))
cfg["model"]["device"] = "cuda"
yaml.safe_dump(cfg, open(path, "w"), sort_keys=False)
PY
start=$(date +%s)
(cd "$work" && timeout 300 python -m snakemake --cores 8 --configfile config/test.yaml > "$out/test_config.log" 2>&1) \
  && status=ok || status="failed (see $out/test_config.log)"
wf_s=$(( $(date +%s) - start ))

echo "== gpu_check: one line per benchmark =="
echo "per_sample_grads: $(tail -1 "$out/per_sample_grads.txt")"
echo "svd_device: $(tail -1 "$out/svd_device.txt")"
echo "pytest -m gpu: $(grep -E 'passed|failed|error' "$out/pytest_gpu.txt" | tail -1)"
echo "test config on the GPU: $status in ${wf_s} s"
