#!/usr/bin/env bash
# Builds the `cuda` feature (scripts/cuda_toolchain.sh: nvcc and the CUDA libraries from NVIDIA's
# wheels; no GPU needed) and packs the binary for the GPU machine, which has no Rust:
# target/cuda/unlearn-gpu.xz (stripped, xz: about 12 MB of a 246 MB binary, most of it the PTX and
# the static MoE/GGUF-matmul kernels of candle). scripts/gpu_check.sh unpacks and runs it:
#
#   bash scripts/gpu_pack.sh
#   # on the GPU machine, with target/cuda/unlearn-gpu.xz beside the working tree:
#   bash scripts/gpu_check.sh OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/cuda_toolchain.sh .cache/cuda)"
cargo build --release --features cuda --target-dir target/cuda
strip -o target/cuda/unlearn-gpu target/cuda/release/unlearn
xz -T0 -6 -f target/cuda/unlearn-gpu
ls -la target/cuda/unlearn-gpu.xz
