#!/usr/bin/env bash
# Installs the CUDA compiler, headers and link-time libraries that `cargo build --features cuda`
# needs, from NVIDIA's Python wheels on PyPI, into DIR (default .cache/cuda), on a machine with
# no GPU and no CUDA toolkit. Prints the environment to build with, for `eval`:
#
#   eval "$(bash scripts/cuda_toolchain.sh)"
#   cargo build --release --features cuda --target-dir target/cuda
#
# Versions: our candle 0.11.1 uses cudarc 0.19.10, which knows CUDA 11.4-13.4 and reads the
# version from `nvcc --version`; the CUDA 12 compiler wheels carry no `nvcc` driver, so this is
# CUDA 13.2 (nvcc, cicc from nvidia-nvvm, crt and cccl headers, runtime/nvrtc/cuBLAS/cuRAND
# libraries). candle links the driver library (libcuda) at build time, which ships with the GPU
# driver, not in any wheel: we link against a stub with the same soname (libcuda.so.1) that
# defines every driver entry point cudarc declares; on a GPU machine the real driver library is
# loaded instead. CUDA_COMPUTE_CAP (default 90: H100/H200) sets the PTX and kernel target,
# since there is no GPU to ask.
set -euo pipefail
dir=${1:-.cache/cuda}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
root="$dir/nvidia/cu13"
ver=13.2.86
if [ ! -x "$root/bin/nvcc" ] || [ ! -x "$root/nvvm/bin/cicc" ] || [ ! -f "$dir/.complete-$ver" ]; then
  rm -rf "$dir/nvidia" "$dir"/*.dist-info
  # One pip call: with --target, a second call would not merge into the existing nvidia/ folder.
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$dir" \
    "nvidia-cuda-nvcc==$ver" "nvidia-nvvm==$ver" "nvidia-cuda-crt==$ver" \
    "nvidia-cuda-cccl==$ver" "nvidia-cuda-runtime==$ver" "nvidia-cuda-nvrtc==$ver" \
    "nvidia-cublas==13.4.1.3" "nvidia-curand==10.4.2.51" >&2
  touch "$dir/.complete-$ver"
fi
lib="$root/lib"
# The wheels carry only the versioned names; the linker looks for libX.so.
for so in cudart cublas cublasLt nvrtc curand; do
  real=$(ls "$lib"/lib$so.so.* 2>/dev/null | grep -E "lib$so\.so\.[0-9]+$" | head -n1)
  [ -n "$real" ] || { echo "cuda_toolchain: lib$so.so.* missing in $lib" >&2; exit 1; }
  ln -sf "$(basename "$real")" "$lib/lib$so.so"
done
# The driver stub: every cu* function cudarc's driver bindings declare, returning
# CUDA_ERROR_STUB_LIBRARY (34) should it ever be called.
stubs="$lib/stubs"
if [ ! -f "$stubs/libcuda.so" ]; then
  mkdir -p "$stubs"
  # cudarc is an optional dependency: resolve with the feature on to find its sources
  cudarc=$(cargo metadata --format-version 1 --features cuda \
    | python3 -c 'import json,os,sys; print(next(os.path.dirname(p["manifest_path"]) for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')
  [ -d "$cudarc" ] || { echo "cuda_toolchain: cudarc's sources not found" >&2; exit 1; }
  grep -ohE '^\s+fn cu[A-Za-z0-9_]+\(' "$cudarc/src/driver/sys/mod.rs" \
    | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u \
    | awk '{ printf "int %s(void) { return 34; }\n", $1 }' > "$stubs/cuda_stub.c"
  [ -s "$stubs/cuda_stub.c" ] || { echo "cuda_toolchain: no driver functions found in $cudarc" >&2; exit 1; }
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/cuda_stub.c"
fi
# for running the binary here (LD_LIBRARY_PATH=$stubs:$lib): it starts, and says CUDA fails
ln -sf libcuda.so "$stubs/libcuda.so.1"
cat <<EOF
export CUDA_HOME="$root"
export PATH="$root/bin:\$PATH"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
export LIBRARY_PATH="$lib:$stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
EOF
