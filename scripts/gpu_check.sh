#!/usr/bin/env bash
# One prepared GPU run (device machine): build the extension with CUDA, run the ctest-free
# CUDA op tests, the GMM benchmark and the flow-step benchmark; copy logs/tables to $OUT.
# Needs: torch with CUDA, nvcc, ninja.  Optional: wheels in .whl/ for missing packages.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/dlsa_gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS=16
# the extension must link libstdc++ dynamically, like torch: a toolchain that links it statically
# (seen: CXX=/opt/gcc/bin/g++ on the device image) gives an .so whose iostreams crash on first use
[ -x /usr/bin/g++ ] && export CXX=/usr/bin/g++ CC=/usr/bin/gcc
rm -rf build dlsa_prod/_C*.so
t0=$(date +%s)
DLSA_PROD_FORCE_CUDA=1 python3 setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/gpu.txt"
ldd dlsa_prod/_C*.so | grep -q libstdc++ || echo "WARNING: dlsa_prod/_C links libstdc++ statically" | tee -a "$OUT/gpu.txt"
python3 -c "from dlsa_prod.ops import native; print('native ops:', native.build_info())" | tee -a "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_native_ops.py tests/test_gmm_torch.py \
  tests/test_flow_step_backends.py 2>&1 | tee "$OUT/cuda_tests.log" | tail -15
timeout 240 python3 benchmarks/gmm_loglik.py --device cuda --json "$OUT/gmm_cuda.json" --profile "$OUT/gmm_cuda_profile.md" 2>&1 \
  | grep -v -E "USDT|gpuGetDeviceCount" | tee "$OUT/gmm_cuda.md"
timeout 120 python3 benchmarks/flow_step.py --device cuda --pairs 1024 --json "$OUT/flow_step_cuda.json" 2>&1 \
  | grep -v -E "USDT|gpuGetDeviceCount" | tee "$OUT/flow_step_cuda.md"
timeout 90 python3 -m dlsa_prod.cli train configs/quickstart.yaml --device cuda --out /tmp/qs_cuda --force 2>&1 \
  | tail -8 | tee "$OUT/quickstart_cuda.log"
echo "total: $(( $(date +%s) - t0 )) s"
