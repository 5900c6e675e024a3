"""The feature splits of a trained run, for commands that need them after training (eval, report).

A feature run reloads its data files (stored as absolute paths); an image run reads its images
again and passes them through the run's own trained backbone (``backbone.safetensors``), reusing
the run's feature cache when it is still there.
"""

from __future__ import annotations

import logging

from .data import Splits, load_splits
from .run_dir import LoadedRun
from .user_cache import feature_cache_dir

log = logging.getLogger("dlsa_prod")


def load_run_splits(run: LoadedRun) -> Splits:
    """The run's train / val / test feature splits, drawn exactly as at training time."""
    if not run.meta.get("backbone"):
        return load_splits(run.cfg.data, run.cfg.seed)
    from .images.backbone_stage import cache_key, cached_features
    from .images.stage import load_trained_backbone, read_image_sets

    cfg = run.cfg
    sets = read_image_sets(cfg)
    net, prep = load_trained_backbone(run.path, run.meta)
    key = cache_key(net, prep, sets, run.meta["backbone"]["arch"])
    feats = cached_features(feature_cache_dir(cfg.backbone.cache_dir), key, net, sets, prep, "cpu",
                            cfg.data.images.skip_bad_images)
    c = int(run.meta["num_classes"])
    return Splits(feats["train"].validate(c), feats["val"].validate(c), feats["test"].validate(c), c)
