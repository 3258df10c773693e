#!/usr/bin/env bash
# Build TRAK's fast_jl 0.1.3 (the CudaProjector that LESS and ClusterUCB project gradients with) for the GPU
# at hand, in the active environment (envs/torch.yaml: torch==2.13.0, the CUDA 13.0 build).
#   conda activate <the torch env>; bash envs/build_fast_jl.sh
#
# Why a script: fast_jl's setup.py sets os.environ['TORCH_CUDA_ARCH_LIST'] = "7.0+PTX" itself, so the usual
# build setting cannot override it, and CUDA 13's nvcc has dropped Volta: "nvcc fatal: Unsupported gpu
# architecture 'compute_70'" (reproduced with nvcc 13.5.37). The same fast_jl.cu compiles for sm_90 with
# that nvcc against torch 2.13.0's headers (warnings only). So: take the sdist, put this GPU's compute
# capability in place of "7.0+PTX", and build it with an nvcc of torch's CUDA major version (torch's
# cpp_extension refuses another) from NVIDIA's PyPI wheels, with --no-build-isolation because setup.py
# imports torch.
# Then `python -m gs.plan` can count CudaProjector (plan.fast_jl: true) and gs.gradients.projection uses it.
set -euo pipefail

cuda=$(python -c "import torch; print(torch.version.cuda or '')")
gpu=$(python -c "import torch; print(1 if torch.cuda.is_available() else '')")
if [ -z "$cuda" ] || { [ -z "$gpu" ] && [ -z "${GS_CUDA_ARCH:-}" ]; }; then
  echo "build_fast_jl: needs a CUDA build of torch and a visible GPU, or GS_CUDA_ARCH (e.g. 9.0 for an H100) to" \
    "build for the jobs' GPUs without one (torch.version.cuda='$cuda')" >&2
  exit 2
fi
# GS_CUDA_ARCH: the compute capability of the GPUs the jobs get (a login node sees none); else the visible GPU's.
arch=${GS_CUDA_ARCH:-$(python -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}')")}
major=${cuda%%.*}

# nvcc, its crt headers and nvvm's cicc, at torch's CUDA major version.
# (torch's own CUDA wheels already bring cuBLAS, cuSPARSE, cuSOLVER and cuRAND with their headers.)
pip install "nvidia-cuda-nvcc==${major}.*" "nvidia-cuda-crt==${major}.*" "nvidia-nvvm==${major}.*"
CUDA_HOME=$(python -c "import nvidia, pathlib; print(pathlib.Path(nvidia.__path__[0]) / 'cu${major}')")
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
chmod +x "$CUDA_HOME"/bin/* "$CUDA_HOME"/nvvm/bin/* 2>/dev/null || true

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip download --no-deps --no-binary :all: --no-build-isolation -d "$work" fast_jl==0.1.3
tar -xzf "$work"/fast_jl-0.1.3.tar.gz -C "$work"
sed -i "s/\"7.0+PTX\"/\"${arch}\"/" "$work/fast_jl-0.1.3/setup.py"
grep -q "\"${arch}\"" "$work/fast_jl-0.1.3/setup.py"
pip install --no-deps --no-build-isolation "$work/fast_jl-0.1.3"

# The check LESS's get_trak_projector makes (one projection on the device); gs uses the same.
if [ -z "$gpu" ]; then
  echo "fast_jl: built for compute capability $arch; not run here (no GPU): the plan checks it on a GPU"
  exit 0
fi
python - <<'PY'
import torch

from gs.gradients.projection import fast_jl_available

ok = fast_jl_available(torch.device("cuda"))
print(f"fast_jl: {'runs' if ok else 'does NOT run'} on {torch.cuda.get_device_name()}")
raise SystemExit(0 if ok else 1)
PY
