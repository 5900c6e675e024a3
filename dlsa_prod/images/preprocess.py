"""Image preprocessing shared by training, export and the runtime (numpy only, no torch):
uint8 HWC (or NCHW) -> float32 NCHW scaled to [0, 1] and normalised per channel."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import DLSAError
from ..value_range import check_values


@dataclass
class Preprocess:
    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # float images are taken on 0..float_max and divided by it; only the preprocessing (manifest
    # ``input.image.float_max``) can say 255: values outside the range are refused, never guessed
    float_max: float = 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"], d["mean"], d["std"] = list(self.size), list(self.mean), list(self.std)
        if self.float_max == 1.0:
            del d["float_max"]  # the default: manifests (and feature-cache keys) as before
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(tuple(d["size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]),
                   float(d.get("float_max", 1.0)))

    def to_nchw(self, images) -> np.ndarray:
        """uint8 (N, H, W, C) or (N, C, H, W) (or one image without N; or float 0..float_max) -> normalised
        float32 NCHW."""
        x = np.asarray(images)
        h, w = self.size
        c = self.channels
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise DLSAError(f"images must be (N, H, W, C) or (N, C, H, W), got shape {x.shape}")
        if x.shape[1:] == (h, w, c):
            x = x.transpose(0, 3, 1, 2)
        elif x.shape[1:] != (c, h, w):
            raise DLSAError(f"images must be {h}x{w} with {c} channel(s) (HWC or CHW), got shape {x.shape[1:]}")
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255.0
        elif x.dtype.kind == "f":
            check_values(x, "image input", axes=("image", "channel", "row", "column"))  # before the float32 cast
            lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
            if lo < 0.0 or hi > self.float_max:
                raise DLSAError(f"float images must hold values in [0, {self.float_max:g}] (this bundle's "
                                f"preprocessing), got {lo:g}..{hi:g}; pass uint8 0..255 images, or divide by 255 "
                                f"first")
            x = x.astype(np.float32) / np.float32(self.float_max) if self.float_max != 1.0 else x.astype(np.float32)
        else:
            raise DLSAError(f"images must be uint8 (0..255) or float (0..{self.float_max:g}), got dtype {x.dtype}")
        mean = np.asarray(self.mean, np.float32)[None, :, None, None]
        std = np.asarray(self.std, np.float32)[None, :, None, None]
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)
