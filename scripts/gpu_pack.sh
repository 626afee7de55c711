#!/usr/bin/env bash
# Builds the `cuda` feature (scripts/cuda_toolchain.sh: nvcc and the CUDA libraries from NVIDIA's
# wheels; no GPU needed) and packs the binary for the GPU machine, which has no Rust:
# target/cuda/unlearn-gpu.xz (stripped, xz: about 12 MB of a 246 MB binary, most of it the PTX and
# the static MoE/GGUF-matmul kernels of candle). scripts/gpu_check.sh unpacks and runs it:
#
#   bash scripts/gpu_pack.sh
#   # on the GPU machine, with target/cuda/unlearn-gpu.xz and libcurand.so.10.xz (55 MB together)
#   # in the working tree:
#   bash scripts/gpu_check.sh OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/cuda_toolchain.sh .cache/cuda)"
cargo build --release --features cuda --target-dir target/cuda
strip -o target/cuda/unlearn-gpu target/cuda/release/unlearn
xz -T0 -6 -f target/cuda/unlearn-gpu
# cuRAND, which PyTorch's CUDA 13 wheels do not install (cuBLAS, NVRTC and cudart they do):
# 43 MB compressed, used by gpu_check.sh only where the machine has no libcurand.so.10
xz -T0 -6 -c "$CUDA_HOME/lib/libcurand.so.10" > target/cuda/libcurand.so.10.xz
ls -la target/cuda/unlearn-gpu.xz target/cuda/libcurand.so.10.xz
