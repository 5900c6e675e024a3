"""Same config + seed -> bit-identical CPU run (metrics and history.json) on one machine with one
thread count and kernel path: twice in this process, and once in a fresh process with another
hash seed and other memory addresses (so neither leftover state, set/dict order of strings nor
allocation alignment can change a result).  See docs/kernels.md, "Reproducibility"."""

import json
import os
import subprocess
import sys

import torch

from dlsa_prod.config import config_from_dict
from dlsa_prod.pipeline import run_training

from conftest import tiny_config_dict

RUN = """
import json, sys
from dlsa_prod.config import config_from_dict
from dlsa_prod.pipeline import run_training
tree, out = json.loads(sys.argv[1]), sys.argv[2]
metrics = run_training(config_from_dict(tree), __import__("pathlib").Path(out))
metrics.pop("seconds")
print(json.dumps(metrics, sort_keys=True, default=str))
"""


def _run_here(tree, out):
    metrics = run_training(config_from_dict(tree), out)  # no cache: everything trained afresh
    metrics.pop("seconds")
    return json.loads(json.dumps(metrics, sort_keys=True, default=str)), (out / "history.json").read_bytes()


def test_same_seed_gives_bit_identical_runs(tiny_files, tmp_path):
    train, test = tiny_files
    tree = tiny_config_dict(train, test, max_depth=1, baselines=["BSM"])  # flow + both classifier kinds, fast
    first = _run_here(tree, tmp_path / "a")
    second = _run_here(tree, tmp_path / "b")
    assert first[0] == second[0]
    assert first[1] == second[1]  # flow and classifier histories, byte for byte
    env = dict(os.environ, PYTHONHASHSEED="12345", OMP_NUM_THREADS=str(torch.get_num_threads()))
    res = subprocess.run([sys.executable, "-c", RUN, json.dumps(tree), str(tmp_path / "c")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == first[0]
    assert (tmp_path / "c" / "history.json").read_bytes() == first[1]
