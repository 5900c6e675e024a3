"""Progress outside a terminal: log lines with position, elapsed time and ETA at least every
progress.INTERVAL seconds (a real `train` subprocess with stdout a pipe), the backbone bar moving
per batch, bench printing each row as it finishes, and the opt-in TensorBoard log."""

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dlsa_prod import progress
from dlsa_prod.config import config_from_dict

from conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def lines(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    monkeypatch.setattr(progress, "interactive", lambda: False)
    progress.reset_clock()
    records = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logger = logging.getLogger("dlsa_prod")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield clock, records
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_line_progress_prints_position_elapsed_and_eta_every_interval(lines):
    clock, records = lines
    bar = progress.progress(range(10), desc="depth1 flow", unit="epoch")
    assert isinstance(bar, progress.LineProgress)
    for i in bar:
        clock.t += progress.INTERVAL / 2  # a line every second epoch
        bar.set_postfix({"loss": "0.5"})
    assert records[0] == "depth1 flow: 2/10 epoch (20%), elapsed 0:15, ETA 1:00, loss 0.5"
    assert len(records) == 5
    # the clock is shared: a new short loop prints as soon as INTERVAL has passed since the last line
    clock.t += progress.INTERVAL
    with progress.progress(total=3, desc="depth 2 flow", unit="epoch") as t:
        t.update(1)
        t.update(1)
    assert records[-1] == "depth 2 flow: 1/3 epoch (33%), elapsed 0:00, ETA 0:00" and len(records) == 6
    # an outer loop (tune's candidates, leave=True) prints at every update
    with progress.progress(total=2, desc="tune", unit="candidate run", leave=True) as t:
        clock.t += 1
        t.update(1)
    assert records[-1] == "tune: 1/2 candidate run (50%), elapsed 0:01, ETA 0:01" and len(records) == 7
    assert progress.format_seconds(3725) == "1:02:05"


def test_train_outside_a_terminal_prints_progress_lines(tiny_files, tmp_path):
    train, test = tiny_files
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict(str(train), str(test))))
    env = {**os.environ, "DLSA_PROD_PROGRESS_SECONDS": "0", "PYTHONPATH": f"{ROOT}{os.pathsep}"
           + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "dlsa_prod", "train", str(cfg), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    flow = [line for line in r.stderr.splitlines() if "depth 1 flow: " in line and "epoch (" in line]
    assert flow and "elapsed" in flow[-1] and "ETA" in flow[-1], r.stderr[-2000:]
    assert any("4/4 epoch (100%)" in line for line in flow)
    assert "\r" not in r.stderr  # no tqdm bar redraws in a log


def test_backbone_bar_moves_per_batch(monkeypatch):
    from dlsa_prod.images import backbone_stage
    from dlsa_prod.images.backbones import build_backbone
    from dlsa_prod.images.preprocess import Preprocess
    from dlsa_prod.images.sources import ImageSet
    from dlsa_prod.config import BackboneConfig

    bars = []

    def spy(*a, **k):
        bars.append(progress.LineProgress(*a, **{kk: v for kk, v in k.items() if kk != "leave"}))
        return bars[-1]

    monkeypatch.setattr(backbone_stage, "progress", spy)
    rng = np.random.default_rng(0)
    images = ImageSet(rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8), np.arange(20) % 2, "tiny")
    cfg = BackboneConfig(epochs=2, batchsize=8)
    model = build_backbone("cifar_resnet", 1, 2, None)
    backbone_stage.train_backbone(model, images, Preprocess((8, 8), 1, (0.5,), (0.25,)), cfg, 2,
                                  torch.device("cpu"), torch.Generator().manual_seed(0))
    bar = bars[0]
    assert bar.unit == "batch" and bar.total == 2 * 3 and bar.n == 6  # 3 batches per epoch, 2 epochs
    assert bar.postfix["epoch"] == "2/2"


def test_bench_prints_each_row_as_it_finishes(monkeypatch, tmp_path_factory):
    from dlsa_prod import bench
    from fakes.deploy_run import trt_bundle

    bundle = trt_bundle(tmp_path_factory)
    events = []
    real = bench._measure
    monkeypatch.setattr(bench, "_measure", lambda *a: (events.append("measure"), real(*a))[1])
    rows, _text = bench.bench_command(str(bundle), "1,8", ["cpu"], "fused", "0", "0.01", None, "1",
                                      ["onnxruntime"], False, echo=lambda line, err=False: events.append(line))
    row_lines = [i for i, e in enumerate(events) if e.startswith("| 1 |") or e.startswith("| 8 |")]
    assert len(row_lines) == len(rows) == 4  # eager + fused at batch 1 and 8
    measures = [i for i, e in enumerate(events) if e == "measure"]
    assert row_lines[0] < measures[-1]  # the first row is out before the last measurement starts
    assert events.index("| batch | method | p50 ms | p90 ms | p99 ms | samples/s | p50 vs eager | stage share |") \
        < measures[0]


def test_bench_on_a_run_directory_names_its_bundle(tmp_path_factory):
    from click.testing import CliRunner

    from dlsa_prod.cli import main
    from fakes.deploy_run import trt_bundle

    bundle = trt_bundle(tmp_path_factory)
    r = CliRunner().invoke(main, ["bench", str(bundle.parent)])
    assert r.exit_code == 2 and r.output.strip() == f"error: {bundle.parent}: is a run directory, not a bundle; " \
                                                     f"did you mean {bundle}?"


HAS_TB = importlib.util.find_spec("tensorboard") is not None


def _histories():
    return {"depth1_flow": [{"epoch": 1, "lr": 0.1, "loss": -1.0, "good_clusters": 3, "cluster_purity": 0.5},
                            {"epoch": 2, "lr": 0.1, "loss": -2.0, "good_clusters": 4, "cluster_purity": 0.6}],
            "regcls": [{"epoch": 1, "lr": 0.05, "loss": 1.0, "val_acc": 0.7}]}


def _metrics():
    return {"val": {"dlsa": {"routing_share": [0.3, 0.7]}}, "test": {"dlsa": {"routing_share": [0.25, 0.75]}},
            "train_routing_share": [30, 70]}


@pytest.mark.skipif(not HAS_TB, reason="tensorboard is not installed (pip install tensorboard)")
def test_tensorboard_log_has_losses_selection_scores_and_routing(tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from dlsa_prod.tensorboard_log import write_tensorboard

    assert write_tensorboard(tmp_path / "tb", _histories(), _metrics())
    scalars = {}
    for f in (tmp_path / "tb").iterdir():
        for ev in EventFileLoader(str(f)).Load():
            for v in ev.summary.value:
                scalars[(v.tag, ev.step)] = list(v.tensor.float_val) or [v.simple_value]
    assert scalars[("depth1_flow/loss", 2)] == [-2.0]
    assert scalars[("depth1_flow/good_clusters", 1)] == [3.0]
    assert scalars[("regcls/val_acc", 1)] == pytest.approx([0.7])
    assert scalars[("routing/test/regular", 0)] == [0.75] and scalars[("routing/train/depth1", 0)] == pytest.approx([0.3])


def test_tensorboard_missing_is_one_warning(tmp_path, monkeypatch, lines):
    from dlsa_prod.tensorboard_log import write_tensorboard

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    _clock, records = lines
    assert write_tensorboard(tmp_path / "tb", _histories(), _metrics()) is False
    assert not (tmp_path / "tb").exists()
    assert len(records) == 1 and records[0].startswith("output.tensorboard: no TensorBoard log written (")


def test_train_flag_turns_the_log_on(tiny_files, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dlsa_prod import pipeline
    from dlsa_prod.cli import main

    seen = {}
    monkeypatch.setattr(pipeline, "run_training", lambda cfg, out, force=False: seen.update(tb=cfg.output.tensorboard))
    train, test = tiny_files
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict(str(train), str(test))))
    assert CliRunner().invoke(main, ["train", str(cfg), "--out", str(tmp_path / "r"), "--tensorboard"]).exit_code == 0
    assert seen == {"tb": True}
    assert config_from_dict(tiny_config_dict(train, test)).output.tensorboard is False
