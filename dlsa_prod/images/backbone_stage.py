"""Stage 1: train (or freeze) a backbone on long-tailed images, then extract features to the
research HDF5 layout, cached by a hash of the backbone weights, preprocessing and data list."""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import FeatureSet, read_features, write_features
from ..distributed import current as current_dist
from ..errors import DataError
from ..progress import progress
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


def crop_flip_draws(n: int, pad: int, hflip: bool, g: torch.Generator) -> dict:
    """The random crop offsets and flips of n images (drawn for a whole global batch, so that every
    data-parallel rank consumes the same random stream)."""
    draws = {}
    if pad:
        draws["oy"] = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        draws["ox"] = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    if hflip:
        draws["flip"] = torch.rand(n, generator=g) < 0.5
    return draws


def apply_crop_flip(x: torch.Tensor, pad: int, draws: dict) -> torch.Tensor:
    n, _, h, w = x.shape
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        rows = (draws["oy"][:, None] + torch.arange(h))[:, :, None]
        cols = (draws["ox"][:, None] + torch.arange(w))[:, None, :]
        x = xp.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if "flip" in draws:
        x = torch.where(draws["flip"][:, None, None, None], x.flip(3), x)
    return x.contiguous()


def _data_parallel(model: ImageClassifier, cfg, device: torch.device, dist):
    """DDP wrapper (optionally with SyncBatchNorm on CUDA) for torchrun runs; the model itself otherwise."""
    if not dist.enabled:
        return model, model
    if getattr(cfg, "sync_bn", False):
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.warning("backbone.sync_bn needs CUDA (NCCL); on CPU each rank uses its own batch statistics")
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    # 1x1 convolution weights' gradients come with other strides than DDP's buckets: harmless, not worth a warning
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return model, torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def train_backbone(model: ImageClassifier, train: ImageSet, prep: Preprocess, cfg, num_classes: int,
                   device: torch.device, generator: torch.Generator) -> ImageClassifier:
    """Stage 1.  Under torchrun every rank draws the same epoch order and augmentations and trains
    on its contiguous share of each batch (DistributedDataParallel: gradients averaged, the loss
    scaled so the update is that of the global batch); batch norm is per rank unless sync_bn."""
    dist = current_dist()
    model.to(device).train()
    model, net = _data_parallel(model, cfg, device, dist)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batchsize)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs * steps_per_epoch, 1))
    counts = torch.bincount(torch.from_numpy(train.labels), minlength=num_classes).clamp(min=1).float()
    log_prior = torch.log(counts / counts.sum()).to(device)
    labels = torch.from_numpy(train.labels)
    # per batch: a backbone epoch can take minutes (Fashion-MNIST on 2 CPU cores: ~75 s)
    bar = progress(total=cfg.epochs * steps_per_epoch, desc=f"backbone ({cfg.loss})", unit="batch")
    mean_loss = float("nan")
    for epoch in range(cfg.epochs):
        last = {} if epoch == 0 else {"last epoch loss": f"{mean_loss:.3f}"}
        bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", **last)
        total = torch.zeros((), device=device)
        for idx in torch.randperm(len(train), generator=generator).split(cfg.batchsize):
            draws = crop_flip_draws(len(idx), cfg.augment.crop_padding, cfg.augment.hflip, generator)
            a, b = dist.shard_bounds(len(idx))
            local = idx[a:b]
            x = apply_crop_flip(load_batch(train, local.numpy(), prep), cfg.augment.crop_padding,
                                {k: v[a:b] for k, v in draws.items()}).to(device, non_blocking=True)
            logits = net(x)
            y = labels[local].to(device, non_blocking=True)
            logits = logits + log_prior if cfg.loss == "BSM" else logits
            if dist.enabled:  # DDP averages over ranks: scale to the global batch mean
                loss = F.cross_entropy(logits, y, reduction="sum") * (dist.world_size / len(idx))
            else:
                loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() / dist.world_size
            bar.update(1)
        mean_loss = float(dist.all_reduce_(total)) / steps_per_epoch  # one host read per epoch
    bar.close()
    dist.sync_module_(model)  # rank 0's batch-norm running statistics everywhere
    log.info("backbone %s trained %d epochs with %s (last epoch loss %.3f)", type(model.trunk).__name__,
             cfg.epochs, cfg.loss, mean_loss)
    return model.eval()


@torch.no_grad()
def extract_features(model: ImageClassifier, images: ImageSet, prep: Preprocess, device, batch_size: int = 256,
                     skip_bad: bool = False, desc: str = "features") -> tuple[FeatureSet, list[str]]:
    """Features of every image.  Under torchrun each rank extracts its contiguous share and the
    shares are gathered, so every rank returns all rows."""
    dist = current_dist()
    model.eval()
    start, end = dist.shard_bounds(len(images))
    feats, bad = [], []
    for s in progress(range(start, end, batch_size), desc=desc, unit="batch"):
        idx = np.arange(s, min(s + batch_size, end))
        feats.append(model.trunk(load_batch(images, idx, prep, skip_bad, bad).to(device)))
    local = torch.cat(feats) if feats else torch.zeros(0, model.dim, device=device)
    keep = torch.ones(end - start, dtype=torch.uint8, device=local.device)
    if bad:
        index = {str(p): i for i, p in enumerate(images.items)}
        keep[[index[b] - start for b in bad]] = 0
    if dist.enabled:
        local, keep = dist.all_gather_rows(local), dist.all_gather_rows(keep)
        bad = [str(images.items[i]) for i in torch.nonzero(keep == 0).flatten().tolist()]
    keep = keep.cpu().bool().numpy()
    x = local.cpu().numpy()[keep]
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
    """Read the cache, or extract and write it.  Under torchrun the cache is used only when every
    rank finds it; extraction is sharded over the ranks and only rank 0 writes the files."""
    dist = current_dist()
    d = Path(cache_dir) / key
    files = {name: d / f"feature_{name}.h5" for name in sets}
    missing = torch.tensor([0 if all(f.is_file() for f in files.values()) else 1], device=device)
    if int(dist.all_reduce_(missing)) == 0:
        log.info("features: cache hit %s", d)
        return {name: read_features(f) for name, f in files.items()}
    out = {}
    for name, s in sets.items():
        fs, bad = extract_features(model, s, prep, device, skip_bad=skip_bad, desc=f"features ({name})")
        if bad:
            log.warning("%s: skipped %d unreadable image(s), e.g. %s", name, len(bad), bad[0])
        out[name] = fs
        if dist.is_main:
            write_features(files[name], fs)
    log.info("features: extracted %s into %s", ", ".join(f"{k} {len(v)}" for k, v in out.items()), d)
    return out
