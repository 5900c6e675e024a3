"""The CLI end to end: quickstart train, eval re-scoring, refusal and error lines."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlsa_prod.cli import main

from conftest import tiny_config_dict

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_end_to_end(tmp_path):
    runner = CliRunner()
    out = tmp_path / "qs"
    res = runner.invoke(main, ["train", str(REPO / "configs/quickstart.yaml"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("config.yaml", "meta.json", "model.safetensors", "baseline_BSM.safetensors",
                 "baseline_CE.safetensors", "routing.json", "metrics.json", "train.log"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    assert test["dlsa"]["accuracy"] > 0.7 and test["plain_BSM"]["accuracy"] > 0.7
    assert sum(test["dlsa"]["routing_share"]) == pytest.approx(1.0)
    assert "DLSA" in (out / "train.log").read_text()

    # eval re-scores the saved models on a feature file: the test split written to .npz
    from dlsa_prod.config import load_config
    from dlsa_prod.data import load_splits, write_features

    cfg = load_config(REPO / "configs/quickstart.yaml")
    feats = write_features(tmp_path / "test.npz", load_splits(cfg.data, cfg.seed).test)
    res = runner.invoke(main, ["eval", str(out), "--features", str(feats), "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["dlsa"]["accuracy"] == pytest.approx(test["dlsa"]["accuracy"])
    assert again["plain_BSM"]["accuracy"] == pytest.approx(test["plain_BSM"]["accuracy"])

    # an existing output dir is refused without --force
    res = runner.invoke(main, ["train", str(REPO / "configs/quickstart.yaml"), "--out", str(out)])
    assert res.exit_code == 2 and "exists (use --force" in res.output


def test_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("max_depth: two\ndata: {source: digits}\n")
    res = CliRunner().invoke(main, ["train", str(cfg)])
    assert res.exit_code == 2
    assert res.output.strip() == f"error: {cfg}: max_depth: expected an integer, got 'two'"


def test_set_and_seed_overrides(tiny_files, tmp_path):
    import yaml

    train, test = tiny_files
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict(train, test)))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", str(cfg), "--out", str(out), "--seed", "5", "--set", "max_depth=1",
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["seed"] == 5 and saved["max_depth"] == 1
    assert json.loads((out / "meta.json").read_text())["depth"] == 1


def test_eval_errors(tmp_path):
    res = CliRunner().invoke(main, ["eval", str(tmp_path / "nope"), "--features", "x.npz"])
    assert res.exit_code == 2 and "run directory not found" in res.output


def test_info():
    res = CliRunner().invoke(main, ["info"])
    assert res.exit_code == 0 and "native ops" in res.output and "torch" in res.output


def test_report_writes_plots(tiny_files, tmp_path):
    from dlsa_prod.config import config_from_dict
    from dlsa_prod.pipeline import run_training

    from conftest import tiny_config_dict as tcd

    train, test = tiny_files
    run_training(config_from_dict(tcd(train, test)), tmp_path / "run")
    res = CliRunner().invoke(main, ["report", str(tmp_path / "run"), "--bins", "3"])
    assert res.exit_code == 0, res.output
    rep = tmp_path / "run" / "report"
    for png in ("per_class_accuracy.png", "routing_by_class.png", "loglik_hist.png", "confusion_by_frequency.png",
                "cluster_purity.png"):
        data = (rep / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    md = (rep / "report.md").read_text()
    assert "DLSA" in md and "plain BSM" in md and "![Where each class exits](routing_by_class.png)" in md
