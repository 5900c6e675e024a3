"""Backbone registry: torchvision ResNets and a small CIFAR-style ResNet for 28-32 px images.

Each entry builds an ``ImageClassifier``: ``trunk`` maps images (N, C, H, W) to features
(N, dim); ``head`` is the stage-1 linear classifier.  Weights load from a local file (state
dict in .safetensors or .pt) or, for users with internet, a torchvision weight enum name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DLSAError


class ImageClassifier(nn.Module):
    def __init__(self, trunk: nn.Module, dim: int, num_classes: int):
        super().__init__()
        self.trunk = trunk
        self.dim = dim
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.head(self.trunk(x))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class CifarResNet(nn.Module):
    """3 stages (widths w, 2w, 4w), `blocks` basic blocks each, global average pool."""

    def __init__(self, in_channels: int = 3, width: int = 32, blocks: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, w in enumerate((width, 2 * width, 4 * width)):
            for j in range(blocks):
                layers.append(_Block(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.dim = cin

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)


def _cifar_resnet(in_channels: int):
    net = CifarResNet(in_channels)
    return net, net.dim


def _torchvision_resnet(name: str):
    def build(in_channels: int):
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        dim = net.fc.in_features
        net.fc = nn.Identity()
        return net, dim

    return build


BACKBONES: dict[str, Callable[[int], tuple[nn.Module, int]]] = {
    "cifar_resnet": _cifar_resnet,
    "resnet18": _torchvision_resnet("resnet18"),
    "resnet34": _torchvision_resnet("resnet34"),
    "resnet50": _torchvision_resnet("resnet50"),
}


def build_backbone(arch: str, in_channels: int, num_classes: int, weights: str | None = None) -> ImageClassifier:
    if arch not in BACKBONES:
        raise DLSAError(f"backbone.arch: unknown architecture {arch!r} (choose from {', '.join(BACKBONES)})")
    trunk, dim = BACKBONES[arch](in_channels)
    model = ImageClassifier(trunk, dim, num_classes)
    if weights:
        load_backbone_weights(model, arch, weights)
    return model


def load_backbone_weights(model: ImageClassifier, arch: str, weights: str) -> None:
    path = Path(weights)
    if path.suffix in (".safetensors", ".pt", ".pth"):
        if not path.is_file():
            raise DLSAError(f"{path}: backbone weights file not found")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    else:  # a torchvision weights enum name, e.g. IMAGENET1K_V1 (downloads; needs internet)
        import torchvision

        enum = torchvision.models.get_model_weights(arch)
        try:
            state = {f"trunk.{k}": v for k, v in enum[weights].get_state_dict(progress=True).items()
                     if not k.startswith("fc.")}
        except KeyError:
            raise DLSAError(f"backbone.weights: {weights!r} is neither a file nor a {arch} weight name "
                            f"({', '.join(w.name for w in enum)})") from None
    if not any(k.startswith(("trunk.", "head.")) for k in state):
        state = {f"trunk.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise DLSAError(f"{weights}: does not fit backbone {arch} (missing {missing[:3]}, unexpected {unexpected[:3]})")
