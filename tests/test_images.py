"""Image datasets (split lists, ImageFolder, IDX, digits), long-tail draw, corrupt images,
feature cache, the image pipeline end to end, image bundles and feature evaluation."""

import gzip
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dlsa_prod.cli import main
from dlsa_prod.errors import DataError, DLSAError
from dlsa_prod.images.backbone_stage import cache_key, cached_features, extract_features
from dlsa_prod.images.backbones import build_backbone
from dlsa_prod.images.preprocess import Preprocess
from dlsa_prod.images.sources import (draw_longtail_split, load_image, read_digits, read_idx_images,
                                      read_image_folder, read_split_list)


def _png(path, value, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), value, np.uint8)
    Image.fromarray(arr, mode).save(path)
    return path


def test_split_list_reader_and_errors(tmp_path):
    _png(tmp_path / "img/a/1.png", 10)
    _png(tmp_path / "img/b/2.jpg", 200)
    lst = tmp_path / "train.txt"
    lst.write_text("a/1.png 0\nb/2.jpg 3\n\n")
    s = read_split_list(lst, tmp_path / "img")
    assert s.labels.tolist() == [0, 3] and s.items[1] == tmp_path / "img/b/2.jpg"
    assert load_image(s.items[0], 3).shape == (10, 12, 3) and load_image(s.items[1], 1).shape == (10, 12, 1)
    (tmp_path / "bad.txt").write_text("a/1.png zero\n")
    with pytest.raises(DataError, match=r"bad.txt:1: expected 'relative/path label'"):
        read_split_list(tmp_path / "bad.txt", tmp_path / "img")
    with pytest.raises(DataError, match="split list not found"):
        read_split_list(tmp_path / "nope.txt", tmp_path)


def test_corrupt_and_missing_images_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png: cannot decode image"):
        load_image(bad, 3)
    with pytest.raises(DataError, match="gone.png: image file not found"):
        load_image(tmp_path / "gone.png", 3)


def test_corrupt_image_error_or_skip_during_extraction(tmp_path):
    good = [_png(tmp_path / f"g{i}.png", 30 * i, size=(8, 8)) for i in range(3)]
    bad = tmp_path / "x.png"
    bad.write_bytes(b"junk")
    from dlsa_prod.images.sources import ImageSet

    s = ImageSet(good + [bad], np.array([0, 1, 0, 1]), "list")
    prep = Preprocess((8, 8), 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    net = build_backbone("cifar_resnet", 3, 2)
    with pytest.raises(DataError, match="x.png: cannot decode image"):
        extract_features(net, s, prep, "cpu")
    fs, skipped = extract_features(net, s, prep, "cpu", skip_bad=True)
    assert skipped == [str(bad)] and len(fs) == 3 and fs.labels.tolist() == [0, 1, 0]


def test_image_folder_reader(tmp_path):
    for cls, n in (("cat", 2), ("dog", 1)):
        for i in range(n):
            _png(tmp_path / "train" / cls / f"{i}.png", 50)
    s = read_image_folder(tmp_path / "train")
    assert s.class_names == ["cat", "dog"] and s.labels.tolist() == [0, 0, 1]
    with pytest.raises(DataError, match="image folder not found"):
        read_image_folder(tmp_path / "nope")


def _idx(arr, code):
    return bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()


def test_idx_images_and_longtail_draw(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 6, 6), dtype=np.uint8)
    labels = np.repeat(np.arange(3), 20).astype(np.uint8)
    for split in ("train", "t10k"):
        with gzip.open(tmp_path / f"{split}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(_idx(images, 0x08))
        (tmp_path / f"{split}-labels-idx1-ubyte").write_bytes(_idx(labels, 0x08))
    s = read_idx_images(tmp_path, "train")
    assert s.items.shape == (60, 6, 6, 1) and s.in_memory
    lt = draw_longtail_split(s, imbalance_ratio=10, profile="exponential", seed=3)
    assert np.bincount(lt.labels).tolist() == [20, 6, 2]
    lt2 = draw_longtail_split(s, imbalance_ratio=10, profile="exponential", seed=3)
    np.testing.assert_array_equal(lt.items, lt2.items)
    assert read_digits().items.shape == (1797, 8, 8, 1)


def test_preprocess_layouts_and_errors():
    prep = Preprocess((4, 5), 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    hwc = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    a = prep.to_nchw(hwc)
    np.testing.assert_array_equal(a, prep.to_nchw(hwc.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(a, prep.to_nchw(hwc.astype(np.float32) / 255), rtol=1e-6)
    assert a.shape == (2, 3, 4, 5) and a.dtype == np.float32
    with pytest.raises(DLSAError, match="4x5 with 3 channel"):
        prep.to_nchw(np.zeros((1, 5, 4, 3), np.uint8))
    with pytest.raises(DLSAError, match="uint8"):
        prep.to_nchw(np.zeros((1, 4, 5, 3), np.int32))


def test_feature_cache_hits_and_misses(tmp_path, caplog):
    from dlsa_prod.images.sources import ImageSet

    rng = np.random.default_rng(1)
    sets = {"train": ImageSet(rng.integers(0, 256, (10, 8, 8, 1), dtype=np.uint8), np.arange(10) % 2, "a")}
    prep = Preprocess((8, 8), 1, (0.5,), (0.25,))
    torch.manual_seed(0)
    net = build_backbone("cifar_resnet", 1, 2)
    key = cache_key(net, prep, sets, "cifar_resnet")
    first = cached_features(tmp_path, key, net, sets, prep, "cpu", False)
    assert (tmp_path / key / "feature_train.h5").is_file()
    import logging

    with caplog.at_level(logging.INFO, logger="dlsa_prod"):
        logging.getLogger("dlsa_prod").propagate = True
        again = cached_features(tmp_path, key, net, sets, prep, "cpu", False)
    assert "cache hit" in caplog.text
    np.testing.assert_array_equal(first["train"].features, again["train"].features)
    with torch.no_grad():
        net.head.weight.add_(0.5)  # head only: features unchanged, but every weight is part of the key
    head_key = cache_key(net, prep, sets, "cifar_resnet")
    assert head_key != key
    with torch.no_grad():
        net.trunk.stem[0].weight.mul_(1.01)
    assert cache_key(net, prep, sets, "cifar_resnet") not in (key, head_key)
    sets2 = {"train": ImageSet(sets["train"].items.copy(), sets["train"].labels[::-1].copy(), "a")}
    assert cache_key(build_backbone("cifar_resnet", 1, 2), prep, sets2, "cifar_resnet") != key


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgrun")
    tree = {
        "seed": 0, "device": "cpu", "max_depth": 1, "baselines": ["BSM"],
        "data": {"source": "images", "val_per_class": 5,
                 "images": {"format": "digits", "longtail": {"imbalance_ratio": 10}, "test_per_class": 20}},
        "backbone": {"arch": "cifar_resnet", "epochs": 1, "batchsize": 64, "cache_dir": str(d / "cache"),
                     "augment": {"crop_padding": 1, "hflip": False}},
        "gmflow": {"model": {"num_cluster": 16}, "data": {"batchsize": 128}, "optim": {"lr": 0.05, "epoch": 2}},
        "filter": {"min_size": 2},
        "cacls": {"eval_freq": 2, "data": {"batchsize": 32}, "optim": {"lr": 0.05, "epoch": 4, "momentum": 0.9}},
        "regcls": {"eval_freq": 2, "model": {"inputs": "XZ"}, "data": {"batchsize": 32},
                   "optim": {"lr": 0.05, "epoch": 4, "momentum": 0.9}},
    }
    import yaml

    (d / "cfg.yaml").write_text(yaml.safe_dump(tree))
    res = CliRunner().invoke(main, ["train", str(d / "cfg.yaml"), "--out", str(d / "run")])
    assert res.exit_code == 0, res.output
    return d


def test_image_pipeline_end_to_end(image_run):
    meta = json.loads((image_run / "run" / "meta.json").read_text())
    assert meta["backbone"]["arch"] == "cifar_resnet" and meta["backbone"]["preprocess"]["size"] == [8, 8]
    assert (image_run / "run" / "backbone.safetensors").is_file()
    assert len(list((image_run / "cache").iterdir())) == 1
    # the run's own backbone and data give the same key: reading the run's splits is a cache hit
    from dlsa_prod.run_data import load_run_splits
    from dlsa_prod.run_dir import load_run

    splits = load_run_splits(load_run(image_run / "run"))
    assert len(list((image_run / "cache").iterdir())) == 1
    assert len(splits.test) == 200 and splits.dim == meta["dim"]
    # a run with other backbone weights (epochs=0: untrained) misses the cache and adds an entry
    res = CliRunner().invoke(main, ["train", str(image_run / "cfg.yaml"), "--out", str(image_run / "run2"),
                                    "--set", "backbone.epochs=0"])
    assert res.exit_code == 0, res.output
    assert len(list((image_run / "cache").iterdir())) == 2


def test_image_bundle_round_trip(image_run):
    from dlsa_prod.export.bundle import export_bundle
    from dlsa_prod.runtime import Runtime

    m = export_bundle(image_run / "run", image_run / "bundle")
    assert m["input"]["kind"] == "image" and m["input"]["image"]["size"] == [8, 8]
    samples = np.load(image_run / "bundle" / "samples.npy")
    assert samples.dtype == np.uint8 and samples.shape[1:] == (8, 8, 1)
    staged = Runtime(image_run / "bundle", layout="staged").predict(samples)
    fused = Runtime(image_run / "bundle", layout="fused").predict(samples.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(staged.labels, fused.labels)
    np.testing.assert_array_equal(staged.exit_depth, fused.exit_depth)
    # independent of the export's own gate: the run's PyTorch backbone + cascade give the same answers
    from dlsa_prod.images.stage import load_trained_backbone
    from dlsa_prod.run_dir import load_run

    run = load_run(image_run / "run")
    net, prep = load_trained_backbone(run.path, run.meta)
    with torch.no_grad():
        ref = run.model(net.trunk(torch.from_numpy(prep.to_nchw(samples))))
    np.testing.assert_array_equal(fused.labels, ref.pred.numpy())
    np.testing.assert_array_equal(fused.exit_depth, ref.exit_depth.numpy())
    with pytest.raises(DLSAError, match="8x8 with 1 channel"):
        Runtime(image_run / "bundle").predict(np.zeros((1, 9, 9, 1), np.uint8))
    res = CliRunner().invoke(main, ["bench", str(image_run / "bundle"), "--batch", "1", "--warmup", "0.05",
                                    "--duration", "0.1", "--run", str(image_run / "run")])
    assert res.exit_code == 0, res.output
    assert "onnxruntime backbone only" in res.output and "the DLSA heads add" in res.output


def test_evaluate_features(image_run, tmp_path):
    cache = next((image_run / "cache").iterdir())
    res = CliRunner().invoke(main, ["evaluate-features", str(cache), "--out", str(tmp_path / "fe")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "fe" / "results.json").read_text())
    assert rows[0]["dim"] == 128 and 0 <= rows[0]["train_cluster_purity"] <= 1
    assert (tmp_path / "fe" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "fe" / "notes.md").write_text("mine")  # replaced only with --force, and never a user's file
    for extra in ([], ["--force"]):
        res = CliRunner().invoke(main, ["evaluate-features", str(cache), "--out", str(tmp_path / "fe"), *extra])
        assert res.exit_code == 2 and res.output.count("\n") == 1
        assert ("use --force" if not extra else "notes.md: was not written by dlsa-prod") in res.output
    assert (tmp_path / "fe" / "notes.md").read_text() == "mine"


def test_report_and_eval_on_an_image_run(image_run, tmp_path):
    """report writes its five plots for image runs too, and eval defaults to the run's test split."""
    res = CliRunner().invoke(main, ["report", str(image_run / "run"), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    for png in ("per_class_accuracy.png", "routing_by_class.png", "loglik_hist.png", "confusion_by_frequency.png",
                "cluster_purity.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:4] == b"\x89PNG", png
    assert "200 evaluation samples" in (tmp_path / "rep" / "report.md").read_text()
    res = CliRunner().invoke(main, ["eval", str(image_run / "run"), "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    saved = json.loads((image_run / "run" / "metrics.json").read_text())["test"]
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["dlsa"]["accuracy"] == pytest.approx(saved["dlsa"]["accuracy"])
