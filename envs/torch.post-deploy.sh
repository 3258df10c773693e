#!/usr/bin/env bash
# Snakemake runs this once in the new envs/torch.yaml environment (--use-conda): TRAK's fast_jl, the projector LESS
# and ClusterUCB use and the paper configs plan with (plan.fast_jl: true), built by envs/build_fast_jl.sh for the
# visible GPU, or for GS_CUDA_ARCH where the environment is made on a machine without one (a SLURM login node:
# GS_CUDA_ARCH=9.0 for H100s). Neither: nothing is built (gs.gradients.projection falls back to TRAK's
# BasicProjector, and `python -m gs.plan` on a GPU stops with one line when the config says fast_jl).
set -euo pipefail
if [ -z "${GS_CUDA_ARCH:-}" ] && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "torch.post-deploy: no GPU and no GS_CUDA_ARCH: fast_jl not built (BasicProjector fallback)"
  exit 0
fi
bash envs/build_fast_jl.sh
