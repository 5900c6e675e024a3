"""Stage 1: train (or freeze) a backbone on long-tailed images, then extract features to the
research HDF5 layout, cached by a hash of the backbone weights, preprocessing and data list."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import FeatureSet, read_features, write_features
from ..errors import DataError
from .backbones import ImageClassifier
from .preprocess import Preprocess
from .sources import ImageSet, load_image

log = logging.getLogger("dlsa_prod")


def load_uint8(images: ImageSet, index, prep: Preprocess, skip_bad: bool = False, bad: list | None = None) -> np.ndarray:
    """uint8 (n, H, W, C) images for the given indices (paths are read and resized to prep.size)."""
    if images.in_memory:
        return images.items[index]
    from PIL import Image

    rows = []
    for i in index:
        path = images.items[i]
        try:
            img = load_image(path, prep.channels)
        except DataError:
            if not skip_bad:
                raise
            if bad is not None:
                bad.append(str(path))
            img = np.zeros((*prep.size, prep.channels), np.uint8)
        if img.shape[:2] != tuple(prep.size):
            mode = "L" if prep.channels == 1 else "RGB"
            pil = Image.fromarray(img[..., 0] if prep.channels == 1 else img, mode)
            img = np.asarray(pil.resize((prep.size[1], prep.size[0]), Image.BILINEAR), np.uint8)
            img = img[..., None] if img.ndim == 2 else img
        rows.append(img)
    return np.stack(rows)


def load_batch(images: ImageSet, index, prep: Preprocess, skip_bad: bool = False, bad: list | None = None) -> torch.Tensor:
    """Normalised float tensor (n, C, H, W) for the given indices."""
    return torch.from_numpy(prep.to_nchw(load_uint8(images, index, prep, skip_bad, bad)))


def channel_stats(images: ImageSet, channels: int, limit: int = 5000) -> tuple[tuple, tuple]:
    """Per-channel mean/std (0..1 units) of up to `limit` training images held in memory."""
    if not images.in_memory:
        return tuple([0.485, 0.456, 0.406][:channels]), tuple([0.229, 0.224, 0.225][:channels])
    x = images.items[:limit].astype(np.float32) / 255.0
    return tuple(float(v) for v in x.mean((0, 1, 2))), tuple(float(v) + 1e-6 for v in x.std((0, 1, 2)))


def _random_crop_flip(x: torch.Tensor, pad: int, hflip: bool, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        rows = (oy[:, None] + torch.arange(h))[:, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, :]
        x = xp.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if hflip:
        flip = torch.rand(n, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous()


def train_backbone(model: ImageClassifier, train: ImageSet, prep: Preprocess, cfg, num_classes: int,
                   device: torch.device, generator: torch.Generator) -> ImageClassifier:
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batchsize)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs * steps_per_epoch, 1))
    counts = torch.bincount(torch.from_numpy(train.labels), minlength=num_classes).clamp(min=1).float()
    log_prior = torch.log(counts / counts.sum()).to(device)
    labels = torch.from_numpy(train.labels)
    bar = tqdm(range(cfg.epochs), desc=f"backbone ({cfg.loss})", unit="ep", leave=False, dynamic_ncols=True,
               disable=None)
    for _ in bar:
        total = 0.0
        for idx in torch.randperm(len(train), generator=generator).split(cfg.batchsize):
            x = _random_crop_flip(load_batch(train, idx.numpy(), prep), cfg.augment.crop_padding,
                                  cfg.augment.hflip, generator).to(device)
            logits = model(x)
            y = labels[idx].to(device)
            loss = F.cross_entropy(logits + log_prior if cfg.loss == "BSM" else logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        bar.set_postfix(loss=f"{total / steps_per_epoch:.3f}")
    log.info("backbone %s trained %d epochs with %s (last epoch loss %.3f)", type(model.trunk).__name__,
             cfg.epochs, cfg.loss, total / steps_per_epoch)
    return model.eval()


@torch.no_grad()
def extract_features(model: ImageClassifier, images: ImageSet, prep: Preprocess, device, batch_size: int = 256,
                     skip_bad: bool = False, desc: str = "features") -> tuple[FeatureSet, list[str]]:
    model.eval()
    feats, bad = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, disable=None):
        idx = np.arange(start, min(start + batch_size, len(images)))
        feats.append(model.trunk(load_batch(images, idx, prep, skip_bad, bad).to(device)).cpu().numpy())
    keep = np.ones(len(images), bool)
    if bad:
        index = {str(p): i for i, p in enumerate(images.items)}
        keep[[index[b] for b in bad]] = False
    x = np.concatenate(feats)[keep]
    return FeatureSet(x, images.labels[keep], images.source), bad


def cache_key(model: ImageClassifier, prep: Preprocess, sets: dict[str, ImageSet], arch: str) -> str:
    """sha256 of the backbone weights, preprocessing and each split's images and labels."""
    h = hashlib.sha256(arch.encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(prep.to_dict()).encode())
    for name, s in sorted(sets.items()):
        h.update(name.encode())
        h.update(s.labels.tobytes())
        if s.in_memory:
            h.update(np.ascontiguousarray(s.items).tobytes())
        else:
            for p in s.items:
                st = Path(p).stat() if Path(p).exists() else None
                h.update(f"{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}".encode())
    return h.hexdigest()[:24]


def cached_features(cache_dir: Path, key: str, model, sets: dict[str, ImageSet], prep, device,
                    skip_bad: bool) -> dict[str, FeatureSet]:
    d = Path(cache_dir) / key
    files = {name: d / f"feature_{name}.h5" for name in sets}
    if all(f.is_file() for f in files.values()):
        log.info("features: cache hit %s", d)
        return {name: read_features(f) for name, f in files.items()}
    out = {}
    for name, s in sets.items():
        fs, bad = extract_features(model, s, prep, device, skip_bad=skip_bad, desc=f"features ({name})")
        if bad:
            log.warning("%s: skipped %d unreadable image(s), e.g. %s", name, len(bad), bad[0])
        out[name] = fs
        write_features(files[name], fs)
    log.info("features: extracted %s into %s", ", ".join(f"{k} {len(v)}" for k, v in out.items()), d)
    return out
