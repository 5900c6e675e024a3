"""Images -> validated feature splits for DLSA: read the image source, draw the long tail, carve
a class-balanced val split, train or load the backbone, extract (cached) features."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..data import FeatureSet, Splits
from ..data.classes import check_train_classes, num_classes_of
from ..data.splits import carve_val
from ..errors import DataError
from ..run_dir import save_module
from ..user_cache import feature_cache_dir
from .backbone_stage import cache_key, cached_features, channel_stats, train_backbone
from .backbones import build_backbone
from .preprocess import Preprocess
from .sources import (ImageSet, draw_longtail_split, read_digits, read_idx_images, read_image_folder,
                      read_split_list)

log = logging.getLogger("dlsa_prod")


def read_image_sets(cfg: RunConfig) -> dict[str, ImageSet]:
    ic = cfg.data.images
    if ic.format == "idx":
        sets = {"train": read_idx_images(ic.root, "train"), "test": read_idx_images(ic.root, "t10k")}
    elif ic.format == "split_list":
        sets = {"train": read_split_list(ic.train_list, ic.root), "test": read_split_list(ic.test_list, ic.root)}
        if ic.val_list:
            sets["val"] = read_split_list(ic.val_list, ic.root)
    elif ic.format == "image_folder":
        sets = {"train": read_image_folder(ic.train), "test": read_image_folder(ic.test)}
        if ic.val:
            sets["val"] = read_image_folder(ic.val)
    else:  # digits: balanced test split, the rest is train
        from ..data.digits import balanced_test_split

        allset = read_digits()
        test_idx, rest = balanced_test_split(allset.labels, ic.test_per_class, np.random.default_rng(cfg.seed))
        sets = {"train": allset.subset(rest), "test": allset.subset(test_idx)}
    c = num_classes_of(sets["train"], [s for k, s in sets.items() if k != "train"], cfg.data.num_classes)
    check_train_classes(np.bincount(sets["train"].labels, minlength=c), sets["train"].source,
                        [s for k, s in sets.items() if k != "train"])
    if ic.longtail is not None:
        sets["train"] = draw_longtail_split(sets["train"], ic.longtail.imbalance_ratio, ic.longtail.profile, cfg.seed, c)
    if "val" not in sets:
        ids = FeatureSet(np.arange(len(sets["train"]), dtype=np.float32)[:, None], sets["train"].labels)
        rest, val = carve_val(ids, c, cfg.data.val_per_class, cfg.data.val_max_fraction, cfg.seed)
        train = sets["train"]
        sets["train"] = train.subset(rest.features[:, 0].astype(np.int64))
        sets["val"] = train.subset(val.features[:, 0].astype(np.int64))
    return sets


def preprocess_for(cfg: RunConfig, train: ImageSet) -> Preprocess:
    ic, bc = cfg.data.images, cfg.backbone
    if train.in_memory:
        size, channels = tuple(train.items.shape[1:3]), int(train.items.shape[3])
    else:
        size, channels = (224, 224), 3
    if ic.image_size:
        if train.in_memory and tuple(ic.image_size) != size:
            raise DataError(f"data.images.image_size {ic.image_size} differs from the images' size {list(size)}")
        size = tuple(ic.image_size)
    mean, std = channel_stats(train, channels)
    return Preprocess(size, channels, tuple(bc.mean or mean), tuple(bc.std or std))


def image_splits(cfg: RunConfig, workdir: Path, device: torch.device, generator: torch.Generator) -> tuple[Splits, dict]:
    sets = read_image_sets(cfg)
    c = num_classes_of(sets["train"], [s for k, s in sets.items() if k != "train"], cfg.data.num_classes)
    log.info("images: %s", ", ".join(f"{k} {len(v)}" for k, v in sets.items()))
    prep = preprocess_for(cfg, sets["train"])
    bc = cfg.backbone
    model = build_backbone(bc.arch, prep.channels, c, bc.weights)
    if not bc.freeze and bc.epochs > 0:
        model = train_backbone(model, sets["train"], prep, bc, c, device, generator)
    model = model.cpu().eval()
    save_module(model, workdir / "backbone.safetensors")
    key = cache_key(model, prep, sets, bc.arch)
    cache = feature_cache_dir(bc.cache_dir)
    feats = cached_features(cache, key, model.to(device), sets, prep, device, cfg.data.images.skip_bad_images)
    model.cpu()
    splits = Splits(feats["train"].validate(c), feats["val"].validate(c), feats["test"].validate(c), c)
    info = {"arch": bc.arch, "dim": model.dim, "preprocess": prep.to_dict(), "feature_cache": str(cache / key),
            "class_names": sets["train"].class_names}
    return splits, info


def load_trained_backbone(run_path: Path, meta: dict):
    """(ImageClassifier in eval mode, Preprocess) of an image run, from its backbone.safetensors."""
    from ..run_dir import load_state, weights_sha256
    from .backbones import build_backbone

    info = meta["backbone"]
    prep = Preprocess.from_dict(info["preprocess"])
    net = build_backbone(info["arch"], prep.channels, meta["num_classes"])
    load_state(net, Path(run_path) / "backbone.safetensors", weights_sha256(meta, "backbone.safetensors"))
    return net.eval(), prep
