#!/usr/bin/env bash
# Compile-only check of the CUDA kernels with the local nvcc (no GPU needed): builds the .cu
# and the CPU/schema sources into object files against the installed torch headers.
# Usage: bash scripts/check_cuda_compile.sh [ARCH]   (default ARCH: 90, the H100/H200)
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH="${1:-90}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
NVCC="$CUDA_HOME/bin/nvcc"
if [ ! -x "$NVCC" ]; then
  echo "check_cuda_compile: no nvcc at $NVCC (set CUDA_HOME); skipped"
  exit 0
fi
read -r TORCH_DIR CXX11_ABI SITE <<<"$(python3 -c 'import os, site, torch; print(os.path.dirname(torch.__file__), int(torch._C._GLIBCXX_USE_CXX11_ABI), site.getsitepackages()[0])')"
INC=(-I"$TORCH_DIR/include" -I"$TORCH_DIR/include/torch/csrc/api/include" -Icsrc -Icsrc/include)
# torch's CUDA headers include cuBLAS/cuSPARSE headers that pip's CUDA wheels ship
[ -d "$SITE/nvidia/cu13/include" ] && INC+=(-I"$SITE/nvidia/cu13/include")
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
STD="-std=c++20"
"$NVCC" --version | tail -1
for cu in csrc/cuda/*.cu; do
  "$NVCC" -c "$cu" -o "$OUT/$(basename "$cu").o" "${INC[@]}" $STD -O3 --expt-relaxed-constexpr \
    -D_GLIBCXX_USE_CXX11_ABI="$CXX11_ABI" -gencode arch=compute_"$ARCH",code=sm_"$ARCH" -Xcompiler -fPIC
  echo "nvcc: $cu ok"
done
# host-side CUDA sources: the host compiler with the toolkit's headers
for cpp in csrc/cuda/*.cpp; do
  c++ -c "$cpp" -o "$OUT/$(basename "$cpp").o" "${INC[@]}" -I"$CUDA_HOME/include" $STD -O2 -fPIC \
    -D_GLIBCXX_USE_CXX11_ABI="$CXX11_ABI" -DUSE_CUDA
  echo "c++: $cpp ok"
done
echo "check_cuda_compile: csrc/cuda compiled for sm_$ARCH"
