#!/usr/bin/env bash
# The runtime against the real onnxruntime-gpu wheel, in a venv of its own (numpy, onnx, jsonschema,
# onnxruntime-gpu; no torch), on a machine without CUDA: providers=["cuda"] / ["tensorrt"] must raise
# one line, allow_fallback=True must run.  Needs the package registry (skips, saying so, without it).
# Usage: bash scripts/check_onnxruntime_gpu.sh [ORT_GPU_VERSION]   (CI runs it after the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-1.31.1}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# a small bundle, made with the project's own environment (it has torch)
python3 - "$work" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
import numpy as np
from conftest import blobs, tiny_config_dict
from dlsa_prod.config import config_from_dict
from dlsa_prod.data import write_features
from dlsa_prod.export.bundle import export_bundle
from dlsa_prod.pipeline import run_training
d = Path(sys.argv[1])
train = write_features(d / "train.npz", blobs([60, 30, 15, 8], seed=2))
test = write_features(d / "test.npz", blobs([10] * 4, seed=2))
run_training(config_from_dict(tiny_config_dict(train, test, baselines=[])), d / "run")
export_bundle(d / "run", d / "bundle")
PY
python3 -m venv "$work/venv"
if ! "$work/venv/bin/python" -m pip install -q --disable-pip-version-check numpy onnx jsonschema \
        "onnxruntime-gpu==$version" > "$work/pip.log" 2>&1; then
  echo "onnxruntime-gpu check skipped: cannot install onnxruntime-gpu==$version ($(tail -1 "$work/pip.log"))"
  exit 0
fi
PYTHONPATH="$PWD" "$work/venv/bin/python" scripts/check_onnxruntime_gpu.py "$work/bundle"
