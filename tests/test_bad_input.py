"""Bad input gets one line and exit code 2 (never a traceback or a silent wrong answer)."""

import logging
import os

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from dlsa_prod.cli import main
from dlsa_prod.config import DataConfig
from dlsa_prod.data import load_splits, read_features, write_features
from dlsa_prod.errors import DataError, DLSAError

from conftest import blobs, tiny_config_dict


def _one_line_error(res, *parts):
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
    assert "Traceback" not in res.output
    for p in parts:
        assert p in res.output, res.output


@pytest.fixture
def cfg_file(tiny_files, tmp_path):
    train, test = tiny_files
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(train, test)))
    return path


def test_set_with_broken_yaml_or_a_bool_for_an_integer(cfg_file, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(cfg_file), "--out", str(tmp_path / "r"), "--set", "gmflow.optim.epoch=[1,"])
    _one_line_error(res, "--set 'gmflow.optim.epoch=[1,'", "not valid YAML")
    res = runner.invoke(main, ["train", str(cfg_file), "--out", str(tmp_path / "r"), "--set", "gmflow.optim.epoch=true"])
    _one_line_error(res, "gmflow.optim.epoch: expected an integer, got True")
    res = runner.invoke(main, ["train", str(cfg_file), "--out", str(tmp_path / "r"), "--set", "gmflow.optim.lr=false"])
    _one_line_error(res, "gmflow.optim.lr: expected a number, got False")
    assert not (tmp_path / "r").exists()


def _train_npz(tmp_path, labels, name="train.npz"):
    x = np.random.default_rng(0).normal(size=(len(labels), 3)).astype(np.float32)
    path = tmp_path / name
    np.savez(path, features=x, labels=np.asarray(labels))
    return path


def test_huge_label_is_refused_without_allocating(tmp_path):
    labels = np.repeat(np.arange(3.0), 10)
    labels[4] = 1e10  # a float label file: 1e10 is integral, and would need a 74 GiB bincount
    train = _train_npz(tmp_path, labels)
    test = write_features(tmp_path / "test.npz", blobs([4, 4, 4], dim=3))
    with pytest.raises(DataError, match=r"train.npz: label 10000000000 is not a class index"):
        load_splits(DataConfig(train=train, test=test), 0)
    with pytest.raises(DataError, match=r"train.npz: labels must lie in 0..2 \(data.num_classes = 3\)"):
        load_splits(DataConfig(train=train, test=test, num_classes=3), 0)
    # beyond float64's exact integers: not a label at all
    huge = _train_npz(tmp_path, np.array([0.0, 1e30]), "huge.npz")
    with pytest.raises(DataError, match="huge.npz: labels must be integers"):
        read_features(huge)


def test_stray_label_warns_or_is_refused_with_num_classes(tmp_path, caplog):
    labels = np.repeat(np.arange(10), 6)
    labels[0] = 10  # one stray label in a 10-class train file
    train = _train_npz(tmp_path, labels)
    test = _train_npz(tmp_path, np.arange(10), "test.npz")
    log = logging.getLogger("dlsa_prod")
    propagate, log.propagate = log.propagate, True
    try:
        with caplog.at_level(logging.WARNING, logger="dlsa_prod"):
            s = load_splits(DataConfig(train=train, test=test), 0)
    finally:
        log.propagate = propagate
    assert s.num_classes == 11 and "classes [10] have fewer than 2 training samples" in caplog.text
    with pytest.raises(DataError, match=r"train.npz: labels must lie in 0..9 \(data.num_classes = 10\), found 0..10"):
        load_splits(DataConfig(train=train, test=test, num_classes=10), 0)


def test_class_missing_from_train_blames_the_train_file(tmp_path):
    train = _train_npz(tmp_path, np.repeat(np.arange(9), 6))  # class 9 never in train
    test = _train_npz(tmp_path, np.arange(10), "test.npz")
    with pytest.raises(DataError, match=r"train.npz: classes \[9\] have no training samples but appear in .*test.npz"):
        load_splits(DataConfig(train=train, test=test), 0)


def test_random_bytes_npz_is_not_called_pickled(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(DataError) as exc:
        read_features(path)
    assert "noise.npz: not a readable .npz file" in str(exc.value) and "pickle" not in str(exc.value)
    obj = tmp_path / "obj.npz"
    np.savez(obj, features=np.array([[1, 2]], dtype=object), labels=np.array([0]))
    with pytest.raises(DataError, match="obj.npz: holds object arrays"):
        read_features(obj)


def test_report_bins_zero_writes_nothing(tmp_path):
    from dlsa_prod.report import write_report

    res = CliRunner().invoke(main, ["report", str(tmp_path / "run"), "--bins", "0"])
    _one_line_error(res, "--bins must be at least 1, got 0")
    with pytest.raises(DLSAError, match="--bins must be at least 1"):
        write_report(tmp_path / "run", tmp_path / "rep", bins=0)
    assert list(tmp_path.iterdir()) == []



def test_negative_seed_is_one_line(cfg_file, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(cfg_file), "--out", str(tmp_path / "r"), "--seed", "-1"])
    _one_line_error(res, "seed: Input should be greater than or equal to 0")
    res = runner.invoke(main, ["train", str(cfg_file), "--out", str(tmp_path / "r"), "--seeds", "1,-2"])
    _one_line_error(res, "--seeds '1,-2': seeds must be non-negative integers")
    res = runner.invoke(main, ["train", str(cfg_file), "--out", str(tmp_path / "r"), "--set", "seeds=[3, -4]"])
    _one_line_error(res, "seeds.1: Input should be greater than or equal to 0")
    assert not (tmp_path / "r").exists()


def test_json_output_into_a_missing_directory_is_refused_before_any_work(tmp_path):
    res = CliRunner().invoke(main, ["eval", str(tmp_path / "run"), "--json", str(tmp_path / "nodir" / "m.json")])
    _one_line_error(res, "m.json: its directory", "does not exist")
    res = CliRunner().invoke(main, ["bench", str(tmp_path / "b"), "--json", str(tmp_path / "nodir" / "b.json")])
    _one_line_error(res, "b.json: its directory", "does not exist")


def test_json_output_never_overwrites_an_input(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    feats = write_features(tmp_path / "f.npz", blobs([4, 4], dim=3))
    before = feats.read_bytes()
    res = CliRunner().invoke(main, ["eval", str(run), "--json", str(run / "metrics.json")])
    _one_line_error(res, "metrics.json: is a file in", "an input of this command")
    res = CliRunner().invoke(main, ["eval", str(run), "--features", str(feats), "--json", str(feats)])
    _one_line_error(res, "f.npz: is ", "an input of this command")
    assert (run / "metrics.json").read_text() == "{}" and feats.read_bytes() == before


# ----------------------------------------------------------------------------- Runtime arguments
@pytest.mark.parametrize("kwargs, message", [
    ({"provider": ["cuda"]}, "unknown argument 'provider' for backend 'onnxruntime' (did you mean 'providers'?)"),
    ({"device": "cuda"}, "unknown argument 'device' for backend 'onnxruntime' (an option of backend 'torch')"),
    ({"backend": "torch", "providers": ["cuda"]}, "providers= applies to backend 'onnxruntime' only"),
    ({"backend": "torch", "memory": None}, "unknown argument 'memory' for backend 'torch'"),
    ({"threads": -1}, "threads must be a non-negative integer (0 = all CPUs), got -1"),
    ({"threads": "x"}, "threads must be a non-negative integer (0 = all CPUs), got 'x'"),
    ({"threads": True}, "threads must be a non-negative integer"),
    ({"chunk_rows": 2.5}, "chunk_rows must be a positive integer, got 2.5"),
    ({"chunk_rows": 0}, "chunk_rows must be a positive integer, got 0"),
])
def test_runtime_refuses_unknown_or_invalid_arguments(tmp_path, kwargs, message):
    from dlsa_prod.runtime import Runtime

    with pytest.raises(DLSAError) as err:  # checked before the bundle is read: no bundle needed
        Runtime(tmp_path / "no_bundle", **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_runtime_accepts_each_backends_own_options():
    from dlsa_prod.runtime import check_arguments

    check_arguments("onnxruntime", ["cpu"], np.int64(2), 8, {"fp16": False, "spinning": False})
    check_arguments("torch", None, 0, 8, {"device": "cpu", "cuda_graphs": False, "max_bucket": 64, "model": None})
    check_arguments("tensorrt", None, 0, 8, {"memory": None, "cuda_graphs": True, "warmup": True, "precision": None})


# ----------------------------------------------------------------------------- YAML, --seeds, usage, Ctrl-C
def test_duplicate_yaml_keys_are_refused(cfg_file, tmp_path):
    text = cfg_file.read_text()
    cfg_file.write_text(text + "seed: 3\n")  # seed: 0 is already there
    res = CliRunner().invoke(main, ["train", str(cfg_file), "--out", str(tmp_path / "r")])
    _one_line_error(res, "c.yaml: not valid YAML (line", "duplicate key 'seed' (first given on line")
    cfg_file.write_text(text.replace("gmflow:\n", "gmflow:\n  eval_freq: 1\n  eval_freq: 2\n"))
    res = CliRunner().invoke(main, ["train", str(cfg_file), "--out", str(tmp_path / "r")])
    _one_line_error(res, "duplicate key 'eval_freq'")
    cfg_file.write_text(text)
    res = CliRunner().invoke(main, ["train", str(cfg_file), "--out", str(tmp_path / "r"),
                                    "--set", "gmflow.optim={lr: 1, lr: 2}"])
    _one_line_error(res, "--set", "duplicate key 'lr'")
    assert not (tmp_path / "r").exists()


def test_empty_seeds_is_refused(cfg_file, tmp_path):
    res = CliRunner().invoke(main, ["train", str(cfg_file), "--out", str(tmp_path / "r"), "--seeds", ""])
    _one_line_error(res, "--seeds '': expected distinct comma-separated integers")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, message", [
    (["bogus"], "error: No such command 'bogus' (see dlsa-prod --help)"),
    (["train"], "error: Missing argument 'CONFIG' (see dlsa-prod train --help)"),
    (["eval", "run", "--device", "tpu"], "error: Invalid value for '--device': 'tpu' is not one of"),
    (["bench", "b", "--nope"], "error: No such option"),
])
def test_usage_errors_are_one_line(args, message):
    res = CliRunner().invoke(main, args, prog_name="dlsa-prod")
    assert res.exit_code == 2 and res.output.count("\n") == 1 and res.output.startswith(message), res.output


def test_help_and_version_still_work():
    res = CliRunner().invoke(main, [], prog_name="dlsa-prod")
    assert res.exit_code == 0 and "Usage: dlsa-prod" in res.output and "train" in res.output
    res = CliRunner().invoke(main, ["--version"], prog_name="dlsa-prod")
    assert res.exit_code == 0 and "version" in res.output


def test_ctrl_c_exits_130_with_one_line(cfg_file, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    tree = yaml.safe_load(cfg_file.read_text())
    tree["gmflow"]["optim"]["epoch"] = 100000  # still training when interrupted
    cfg_file.write_text(yaml.safe_dump(tree))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the child gets SIGINT's default disposition, as a terminal's Ctrl-C finds it: a test run started in
    # the background (`nohup ... &`) ignores SIGINT, the child would inherit that and never stop
    proc = subprocess.Popen([sys.executable, "-m", "dlsa_prod.cli", "train", str(cfg_file), "--out",
                             str(tmp_path / "r")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".r.partial-")] and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    # 130, or death by SIGINT when the signal lands while the interpreter finishes (a shell shows 130 for both)
    assert proc.returncode in (130, -signal.SIGINT), err
    assert err.strip().splitlines()[-1] == "error: interrupted (nothing half-written was left behind)"
    assert "Traceback" not in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.") or p.name == "r"]


def test_output_into_a_closed_pipe_exits_quietly():
    """`dlsa-prod info | head -1`: the closed pipe is no error line and no traceback (exit 1, as click does)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "dlsa_prod.cli", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read()
    proc.wait(timeout=120)
    proc.stderr.close()
    assert proc.returncode == 1 and err == "", err
