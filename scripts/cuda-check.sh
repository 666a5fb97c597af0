#!/usr/bin/env bash
# Compiles the whole workspace with the `cuda` feature on a machine without a GPU or a CUDA
# install: nvcc and the CUDA headers come from PyPI's wheels (nvidia-cuda-nvcc 13.x with -crt,
# -runtime and -cccl; the -cu12 nvcc wheel ships only ptxas), installed with `pip --target`
# into a cache folder whose nvidia/cu13/{bin,include,lib} is a toolkit root (~350 MB).
#
# `cargo check` compiles every crate, candle-kernels' PTX included (nvcc runs in its build
# script), but links nothing: the wheels ship versioned .so.13 files only and no driver stub,
# so a CUDA binary cannot be linked here. The compiled state lives in its own target folder in
# the cache (default CACHE/target), so a fresh checkout on the same machine (a CI run) reuses
# the PTX compile and every unchanged crate.
#
# cudarc (Candle's CUDA bindings) refuses toolkit 13.5 by name; CUDARC_CUDA_VERSION=13040 makes
# it take the 13.4 API, which 13.5 serves. There is no GPU to ask for its compute capability:
# CUDA_COMPUTE_CAP=90 builds the PTX for H100 / H200 class GPUs (override it for others).
#
# Usage: scripts/cuda-check.sh [CACHE]   (default: ~/.cache/eabs/cuda). Env: CUDA_COMPUTE_CAP,
# EABS_CUDA_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${1:-${HOME}/.cache/eabs/cuda}"
root="$cache/root/nvidia/cu13"
if [ ! -x "$root/bin/nvcc" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$cache/root.partial" \
    "nvidia-cuda-nvcc==13.*" "nvidia-cuda-crt==13.*" "nvidia-cuda-runtime==13.*" \
    "nvidia-cuda-cccl==13.*"
  rm -rf "$cache/root"
  mv "$cache/root.partial" "$cache/root"
fi
export PATH="$root/bin:$PATH" CUDA_ROOT="$root" CUDA_PATH="$root" CUDA_HOME="$root"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13040}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="${EABS_CUDA_TARGET_DIR:-$cache/target}"
nvcc --version | tail -n 2
# Every crate's `cuda` feature (the workspace is virtual: features are named per package).
features=xtask/cuda,eabs-eval/cuda,eabs-inference/cuda,eabs-models/cuda,eabs-attacks/cuda
features=$features,eabs-kernels/cuda,eabs-core/cuda,eabs-datasets/cuda
time cargo check --workspace --all-targets --features "$features"
