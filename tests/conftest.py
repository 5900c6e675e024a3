import logging

import numpy as np
import pytest

from dlsa_prod.config import config_from_dict
from dlsa_prod.data import FeatureSet


def blobs(counts, dim=8, seed=0, spread=0.6):
    """Gaussian class blobs with the given per-class counts."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), dim)) * 2.0
    x = np.concatenate([centres[c] + spread * rng.normal(size=(n, dim)) for c, n in enumerate(counts)])
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return FeatureSet(x.astype(np.float32), y.astype(np.int64), "blobs")


@pytest.fixture
def tiny_files(tmp_path):
    """Long-tailed train / balanced test .npz files with 6 classes, dim 8."""
    from dlsa_prod.data import write_features

    train = blobs([120, 80, 50, 30, 18, 10], seed=1)
    test = blobs([20] * 6, seed=1)  # same centres (same seed), fresh noise would need another draw
    rng = np.random.default_rng(7)
    test.features = test.features + 0.3 * rng.normal(size=test.features.shape).astype(np.float32)
    return write_features(tmp_path / "train.npz", train), write_features(tmp_path / "test.npz", test)


def tiny_config_dict(train, test, **over):
    tree = {
        "seed": 0, "device": "cpu", "max_depth": 2, "baselines": ["BSM", "CE"],
        "data": {"train": str(train), "test": str(test), "val_per_class": 3},
        "gmflow": {"model": {"num_cluster": 12}, "data": {"batchsize": 64},
                   "optim": {"lr": 0.05, "epoch": 4}},
        "filter": {"llh_proportion": 0.3, "min_size": 2},
        "cacls": {"eval_freq": 2, "data": {"batchsize": 32}, "optim": {"lr": 0.05, "epoch": 6, "momentum": 0.9}},
        "regcls": {"eval_freq": 2, "model": {"inputs": "XZ"}, "data": {"batchsize": 32},
                   "optim": {"lr": 0.05, "epoch": 6, "momentum": 0.9}},
    }
    for k, v in over.items():
        tree[k] = v
    return tree


@pytest.fixture
def tiny_config(tiny_files, tmp_path):
    train, test = tiny_files
    cfg = config_from_dict(tiny_config_dict(train, test))
    cfg.output.dir = tmp_path / "run"
    return cfg


@pytest.fixture(autouse=True)
def package_logger_propagates():
    """Each test starts with the "dlsa_prod" logger propagating, as in a fresh process: setup_logging
    (train, tune, the CLI) turns propagation off so a run's lines are not printed twice, and a later
    test's caplog would otherwise see nothing, depending on which tests ran before it."""
    log = logging.getLogger("dlsa_prod")
    saved = log.propagate
    log.propagate = True
    yield
    log.propagate = saved


@pytest.fixture(scope="session", autouse=True)
def private_user_cache(tmp_path_factory):
    """Feature and engine caches of the tests go to a temporary directory, never ~/.cache."""
    import os

    if "DLSA_PROD_CACHE" not in os.environ:
        os.environ["DLSA_PROD_CACHE"] = str(tmp_path_factory.mktemp("user_cache"))
        yield
        del os.environ["DLSA_PROD_CACHE"]
    else:
        yield


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The deployment tests' trained tiny run, its test features and its bundle with fake-TensorRT engines
    (trained and exported once per session: tests/fakes/deploy_run.py)."""
    from fakes.deploy_run import tiny_run, trt_bundle

    return {**tiny_run(tmp_path_factory), "bundle": trt_bundle(tmp_path_factory)}


@pytest.fixture
def trt():
    """``import tensorrt`` gives the strict fake for the test (tests/fakes/tensorrt)."""
    from fakes.deploy_run import fake_tensorrt

    with fake_tensorrt() as mod:
        yield mod


def run_in_threads(worker, n: int) -> None:
    """Run ``worker(k)`` for k in 0..N-1 on N threads and wait for all."""
    import threading

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
