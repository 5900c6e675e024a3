"""Data-parallel training under torchrun (2 gloo processes on CPU) against one process.

Every rank draws the same pairs and batches and computes its share of each batch; batch-norm
statistics, the balance posterior and gradients are summed across ranks, so 2 processes must
reproduce the single-process run up to float summation order: same selected epochs, thresholds,
routing and accuracies.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from dlsa_prod.config import config_from_dict
from dlsa_prod.distributed import DistContext
from dlsa_prod.pipeline import run_training

from conftest import tiny_config_dict

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _small_config(tiny_files, tmp_path):
    train, test = tiny_files
    tree = tiny_config_dict(train, test, baselines=["BSM"])
    tree["gmflow"]["optim"]["epoch"] = 3
    for key in ("cacls", "regcls"):
        tree[key]["optim"]["epoch"] = 4
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path, tree


def _torchrun(args, tmp_path, nproc=2):
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path), scratch


def test_shard_bounds_cover_every_item_once():
    for n in (0, 1, 5, 7, 128):
        parts = [DistContext(r, 3).shard_bounds(n) for r in range(3)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(parts[i][1] == parts[i + 1][0] for i in range(2))
        assert max(e - s for s, e in parts) - min(e - s for s, e in parts) <= 1


def test_two_gloo_processes_match_one_process(tiny_files, tmp_path):
    cfg_path, tree = _small_config(tiny_files, tmp_path)
    one = run_training(config_from_dict(tree), tmp_path / "one")
    res, scratch = _torchrun(["-m", "dlsa_prod", "train", str(cfg_path), "--out", str(tmp_path / "two")], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for split in ("val", "test"):
        for method, m in one[split].items():
            assert two[split][method]["accuracy"] == pytest.approx(m["accuracy"], abs=1e-9), (split, method)
        assert two[split]["dlsa"]["routing_share"] == pytest.approx(one[split]["dlsa"]["routing_share"], abs=1e-9)
    assert len(two["depths"]) == len(one["depths"])
    for a, b in zip(one["depths"], two["depths"]):
        for key in ("flow_epoch", "classifier_epoch", "train_exit", "val_exit", "pure_clusters"):
            assert a.get(key) == b.get(key), key
        if "threshold" in a:
            assert b["threshold"] == pytest.approx(a["threshold"], rel=1e-4)
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())
    h2 = json.loads((tmp_path / "two" / "history.json").read_text())
    assert len(h2["depth1_flow"]) == len(h1["depth1_flow"]) > 0  # (zip below would pass on an empty history)
    for r1, r2 in zip(h1["depth1_flow"], h2["depth1_flow"]):
        for key in ("loss", "lh", "purity", "balance", "cluster_purity"):
            if key in r1:
                assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-6), key
    # rank 1 wrote nothing that survives: only rank 0's run directory exists
    assert not list(scratch.glob("dlsa_prod_rank*"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failing_rank_ends_the_job_without_a_run(tiny_files, tmp_path):
    cfg_path, _ = _small_config(tiny_files, tmp_path)
    script = tmp_path / "fail_rank1.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        import dlsa_prod.training.cascade as cascade
        from dlsa_prod.cli import main
        from dlsa_prod.errors import DLSAError

        real = cascade.train_flow
        def train_flow(*a, **k):
            if os.environ["RANK"] == "1":
                raise DLSAError("rank 1: simulated failure")
            return real(*a, **k)
        cascade.train_flow = train_flow
        main(["train", {str(cfg_path)!r}, "--out", {str(tmp_path / "run")!r}], prog_name="dlsa-prod")
    """))
    res, scratch = _torchrun([str(script)], tmp_path)
    assert res.returncode != 0
    assert "error: rank 1: simulated failure" in res.stderr
    assert not (tmp_path / "run").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".run")]  # no staging leftovers
    assert not list(scratch.glob("dlsa_prod_rank*"))
