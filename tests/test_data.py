"""Feature files, validation errors naming the file, val carving, long-tail draws."""

import h5py
import numpy as np
import pytest

from dlsa_prod.config import DataConfig
from dlsa_prod.data import FeatureSet, load_splits, read_features, write_features
from dlsa_prod.data.digits import digits_longtail
from dlsa_prod.data.longtail import draw_longtail, longtail_counts
from dlsa_prod.data.splits import carve_val
from dlsa_prod.errors import DataError


def _fs(n=20, d=4, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return FeatureSet(rng.normal(size=(n, d)).astype(np.float32), np.arange(n) % c, "mem")


@pytest.mark.parametrize("suffix", [".h5", ".hdf5", ".npz"])
def test_round_trip(tmp_path, suffix):
    fs = _fs()
    path = write_features(tmp_path / f"f{suffix}", fs)
    back = read_features(path)
    np.testing.assert_array_equal(back.features, fs.features)
    np.testing.assert_array_equal(back.labels, fs.labels)
    assert not list(tmp_path.glob(".*tmp*"))


def _h5(path, features, labels):
    with h5py.File(path, "w") as fh:
        if features is not None:
            fh["features"] = features
        if labels is not None:
            fh["labels"] = labels
    return path


def test_errors_name_the_file(tmp_path):
    cases = {
        "nan.h5": (np.array([[0.0, np.nan]]), np.array([0]), "NaN/inf"),
        "inf.h5": (np.array([[0.0, np.inf], [1, 1]]), np.array([0, 1]), "NaN/inf"),
        "dims.h5": (np.zeros((3, 2, 2)), np.zeros(3, int), "2-D"),
        "count.h5": (np.zeros((3, 2)), np.zeros(2, int), "3 feature rows but 2 labels"),
        "neg.h5": (np.zeros((2, 2)), np.array([0, -1]), "labels must lie in"),
        "empty.h5": (np.zeros((0, 2)), np.zeros(0, int), "no samples"),
        "nolabels.h5": (np.zeros((2, 2)), None, "missing dataset"),
        "floatlab.h5": (np.zeros((2, 2)), np.array([0.5, 1.0]), "labels must be integers"),
    }
    for name, (f, y, msg) in cases.items():
        path = _h5(tmp_path / name, f, y)
        with pytest.raises(DataError) as exc:
            read_features(path)
        assert str(path) in str(exc.value) and msg in str(exc.value), name
    (tmp_path / "zero.h5").write_bytes(b"")
    with pytest.raises(DataError, match="zero.h5: file is empty"):
        read_features(tmp_path / "zero.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="junk.h5: not a readable HDF5"):
        read_features(tmp_path / "junk.h5")
    with pytest.raises(DataError, match="feature file not found"):
        read_features(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="unknown feature file type"):
        read_features(_h5(tmp_path / "x.csv", np.zeros((1, 2)), np.zeros(1, int)))


def test_split_checks_dim_and_label_range(tmp_path):
    train = write_features(tmp_path / "train.npz", _fs(30, 4, 3))
    bad_dim = write_features(tmp_path / "test.npz", _fs(9, 5, 3))
    with pytest.raises(DataError, match="test.npz: features have dim 5, expected 4"):
        load_splits(DataConfig(train=train, test=bad_dim), 0)
    bad_lab = write_features(tmp_path / "test2.npz", FeatureSet(np.zeros((2, 4)), np.array([0, 3])))
    with pytest.raises(DataError, match=r"test2.npz: labels must lie in 0..2 \(data.num_classes = 3\)"):
        load_splits(DataConfig(train=train, test=bad_lab, num_classes=3), 0)
    # without num_classes the train file is blamed: class 3 appears in test but never in train
    with pytest.raises(DataError, match=r"train.npz: classes \[3\] have no training samples but appear in .*test2.npz"):
        load_splits(DataConfig(train=train, test=bad_lab), 0)


def test_research_feat_dir_layout(tmp_path):
    for split in ("train", "val", "test"):
        write_features(tmp_path / f"feature_{split}.h5", _fs(30, 4, 3, seed=len(split)))
    s = load_splits(DataConfig(feat_dir=tmp_path), 0)
    assert len(s.train) == 30 and len(s.val) == 30 and s.num_classes == 3


def test_carve_val_is_balanced_seeded_and_disjoint():
    labels = np.repeat(np.arange(4), [200, 60, 20, 5])
    fs = FeatureSet(np.arange(labels.size, dtype=np.float32)[:, None].repeat(2, 1), labels)
    tr, va = carve_val(fs, 4, per_class=10, max_fraction=0.2, seed=3)
    assert np.bincount(va.labels, minlength=4).tolist() == [10, 10, 4, 1]
    assert len(tr) + len(va) == len(fs)
    assert not set(tr.features[:, 0]) & set(va.features[:, 0])
    tr2, va2 = carve_val(fs, 4, per_class=10, max_fraction=0.2, seed=3)
    np.testing.assert_array_equal(va.features, va2.features)


def test_longtail_profiles():
    exp = longtail_counts(500, 10, 100, "exponential")
    assert exp[0] == 500 and exp[-1] == 5 and np.all(np.diff(exp) <= 0)
    par = longtail_counts(500, 10, 100, "pareto")
    assert par[0] == 500 and par[-1] == 5
    labels = np.repeat(np.arange(3), 50)
    idx = draw_longtail(labels, np.array([50, 10, 2]), np.random.default_rng(0))
    assert np.bincount(labels[idx]).tolist() == [50, 10, 2]


def test_digits_quickstart_split():
    train, test = digits_longtail(10, 40, "exponential", seed=0)
    counts = np.bincount(train.labels, minlength=10)
    assert counts.max() / counts.min() == pytest.approx(10, rel=0.15)
    assert np.bincount(test.labels).tolist() == [40] * 10
    assert train.dim == 64 and 0 <= train.features.min() and train.features.max() <= 1


def test_one_digits_loader_behind_both_digits_sources():
    from dlsa_prod.config import config_from_dict
    from dlsa_prod.images.stage import read_image_sets

    _, test = digits_longtail(10, 40, "exponential", seed=3)
    cfg = config_from_dict({"seed": 3, "data": {"source": "images", "images": {"format": "digits", "test_per_class": 40}},
                            "backbone": {}})
    images = read_image_sets(cfg)["test"]
    np.testing.assert_array_equal(images.labels, test.labels)  # the same balanced test split
    np.testing.assert_allclose(images.items.reshape(len(test), -1) / 255.0, test.features, atol=0.5 / 255 + 1e-6)
