#!/usr/bin/env bash
# Prepared GPU run (device machine): build the extension with CUDA, then the sections named in
# GPU_CHECK_SECTIONS (default: all), logs/tables to $OUT.  The device tool allows 10 minutes a
# command and about 15 minutes a session, so split a full check over two calls, e.g.
#   GPU_CHECK_SECTIONS=ops,serve OUT=$OUT bash scripts/gpu_check.sh      (~6 min incl. build)
#   GPU_CHECK_SECTIONS=train     OUT=$OUT bash scripts/gpu_check.sh      (~8 min incl. build)
# Sections: ops (CUDA op tests, GMM + flow-step benchmarks, quickstart on CUDA), serve (torch
# backend vs eager, issue 9), train (training speed per precision, compile, end to end, issue 11),
# precision (3-seed Fashion-MNIST-LT precision comparison; long), torchrun (NCCL smoke run).
# Needs: torch with CUDA, nvcc, ninja.  Optional: wheels in .whl/ for missing packages.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/dlsa_gpu_out}"
mkdir -p "$OUT"
SECTIONS=",${GPU_CHECK_SECTIONS:-ops,serve,train,precision,torchrun},"
want() { [[ "$SECTIONS" == *",$1,"* ]]; }
for s in ${SECTIONS//,/ }; do
  case "$s" in ops|serve|train|precision|torchrun) ;;
    *) echo "error: GPU_CHECK_SECTIONS: unknown section '$s' (ops, serve, train, precision, torchrun)" >&2; exit 2 ;;
  esac
done
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
if want ops; then
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_native_ops.py tests/test_gmm_torch.py \
  tests/test_flow_step_backends.py 2>&1 | tee "$OUT/cuda_tests.log" | tail -15
timeout 240 python3 benchmarks/gmm_loglik.py --device cuda --json "$OUT/gmm_cuda.json" --profile "$OUT/gmm_cuda_profile.md" 2>&1 \
  | grep -v -E "USDT|gpuGetDeviceCount" | tee "$OUT/gmm_cuda.md"
timeout 120 python3 benchmarks/flow_step.py --device cuda --pairs 1024 --json "$OUT/flow_step_cuda.json" 2>&1 \
  | grep -v -E "USDT|gpuGetDeviceCount" | tee "$OUT/flow_step_cuda.md"
timeout 90 python3 -m dlsa_prod.cli train configs/quickstart.yaml --device cuda --out /tmp/qs_cuda --force 2>&1 \
  | tail -8 | tee "$OUT/quickstart_cuda.log"
echo "total: $(( $(date +%s) - t0 )) s"
fi
# --- torch backend (issue 9): masked all-depths form replayed as one CUDA graph per batch bucket vs
# DLSAModel eager, ImageNet-LT shape, p50/p99 at batch 1/64/256 and exit mismatches, one run
if want serve; then
timeout 240 python3 benchmarks/imagenet_shape_bundle.py --torch-backend cuda --batch 1,64,256 --duration 3 \
  --json "$OUT/torch_backend_cuda.json" 2>&1 | grep -v -E "USDT|gpuGetDeviceCount" | tee "$OUT/torch_backend_cuda.md"
fi
# ---- training speed (issue 11; docs/training_speed.md): ImageNet-LT-shaped flow and classifier epochs
# per precision (targets: flow epoch <= 0.25 s, classifier epoch <= 0.1 s, <= 3 GiB beyond the data),
# host syncs / copies / launches of one flow epoch (profile), torch.compile, then the whole research
# config end to end with the plain baseline (target <= 3 min), and a one-GPU torchrun (NCCL) smoke run.
if want train; then
for prec in fp32 tf32 bf16; do
  timeout 150 python3 benchmarks/imagenet_shape_train.py --device cuda --precision $prec --phases flow,classifier \
    --flow-epochs 3 --classifier-epochs 5 --json "$OUT/train_speed_$prec.json" \
    $([ $prec = fp32 ] && echo --profile "$OUT/train_flow_profile.txt") 2>&1 | grep -E "^\||device|profile" \
    | tee "$OUT/train_speed_$prec.md"
done
timeout 200 python3 benchmarks/imagenet_shape_train.py --device cuda --compile --phases flow,classifier \
  --flow-epochs 3 --classifier-epochs 5 --json "$OUT/train_speed_compile.json" 2>&1 | grep -E "^\||device" \
  | tee "$OUT/train_speed_compile.md"
timeout 300 python3 benchmarks/imagenet_shape_train.py --device cuda --phases e2e --json "$OUT/train_e2e_fp32.json" 2>&1 \
  | grep -E "^\||device" | tee "$OUT/train_e2e_fp32.md" || echo "e2e: did not finish within 300 s" | tee -a "$OUT/train_e2e_fp32.md"
fi
if want precision && [ -d /usr/share/datasets/fashion-mnist ]; then  # precision effect on accuracy/routing on the GPU (3 seeds)
  timeout 420 python3 benchmarks/precision_compare.py --features /tmp/fmnist_gpu --make-fmnist-features --device cuda \
    --precisions fp32,tf32,bf16 --json "$OUT/precision_fmnist_cuda.json" 2>&1 | grep -E "^\||std" | tee "$OUT/precision_fmnist_cuda.md"
fi
if want torchrun; then
timeout 120 torchrun --standalone --nproc_per_node 1 -m dlsa_prod train configs/quickstart.yaml --device cuda \
  --out /tmp/qs_torchrun --force 2>&1 | tail -4 | tee "$OUT/torchrun_nccl_smoke.log"
fi
echo "total: $(( $(date +%s) - t0 )) s"
