"""Image datasets as (items, labels): split lists (ImageNet-LT / Places-LT / iNaturalist layout),
torchvision ImageFolder trees, IDX files (MNIST / Fashion-MNIST) and scikit-learn's digits.

``items`` is either a uint8 array (N, H, W, C) held in memory or a list of image paths read on
demand; ``load_image`` reads one path with a clear error naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class ImageSet:
    items: object  # np.ndarray (N, H, W, C) uint8, or list[Path]
    labels: np.ndarray
    source: str
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def in_memory(self) -> bool:
        return isinstance(self.items, np.ndarray)

    def subset(self, index: np.ndarray) -> "ImageSet":
        items = self.items[index] if self.in_memory else [self.items[i] for i in index]
        return ImageSet(items, self.labels[index], self.source, self.class_names)


def load_image(path: Path, channels: int) -> np.ndarray:
    """uint8 (H, W, C) image; DataError naming the file when missing or undecodable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_split_list(list_file: str | Path, root: str | Path) -> ImageSet:
    """Lines 'relative/path label' (the ImageNet-LT / Places-LT / iNaturalist split files)."""
    list_file, root = Path(list_file), Path(root)
    if not list_file.is_file():
        raise DataError(f"{list_file}: split list not found")
    paths, labels = [], []
    for n, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{list_file}:{n}: expected 'relative/path label', got {line!r}")
        paths.append(root / parts[0])
        labels.append(int(parts[1]))
    if not paths:
        raise DataError(f"{list_file}: no entries")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.min() < 0:
        raise DataError(f"{list_file}: negative label {int(labels.min())}")
    return ImageSet(paths, labels, str(list_file))


def read_image_folder(root: str | Path) -> ImageSet:
    """torchvision ImageFolder layout: root/<class name>/<image>; classes sorted by name."""
    from torchvision.datasets.folder import find_classes, make_dataset

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    try:
        classes, to_idx = find_classes(str(root))
        samples = make_dataset(str(root), to_idx, extensions=IMAGE_SUFFIXES)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{root}: not an ImageFolder tree ({exc})") from None
    return ImageSet([Path(p) for p, _ in samples], np.asarray([c for _, c in samples], dtype=np.int64), str(root),
                    list(classes))


def read_idx_images(directory: str | Path, split: str) -> ImageSet:
    from ..data.idx import read_idx_split

    images, labels = read_idx_split(directory, split)
    return ImageSet(np.ascontiguousarray(images[..., None]), labels, f"{directory} ({split})")


def read_digits() -> ImageSet:
    from ..data.digits import digits_images

    images, labels = digits_images()
    return ImageSet(images, labels, "sklearn digits")


def draw_longtail_split(train: ImageSet, imbalance_ratio: float, profile: str, seed: int,
                        num_classes: int | None = None) -> ImageSet:
    """A long-tailed subset of a balanced train set; the head class keeps what the smallest class has."""
    from ..data.longtail import draw_longtail, longtail_counts

    c = num_classes or int(train.labels.max()) + 1
    n_max = int(np.bincount(train.labels, minlength=c).min())
    counts = longtail_counts(n_max, c, imbalance_ratio, profile)
    idx = draw_longtail(train.labels, counts, np.random.default_rng(seed))
    return train.subset(idx)
