"""A registry resnet18 trained in seconds to tell a bright patch from none, for the Grad-CAM tests.

An untrained network's Grad-CAM is arbitrary: this one's evidence for "patch" has a place, the
patch, so a heat-map that moves with the patch shows that Grad-CAM is computed and drawn right.
Images are 64 px: resnet18's last feature map is then 2x2, one cell per quadrant.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from image_classifier import artifacts, models
from image_classifier.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_size

SIZE = 64
LABELS = ["patch", "plain"]  # class 0: a bright square somewhere; class 1: noise only
PATCH = 14                   # side of the square, pixels
# patch centres (x, y) to explain: the middle of each quadrant, and two in corners (a patch near
# the midlines would straddle two cells of the 2x2 map)
CENTRES = [(16, 16), (48, 16), (16, 48), (48, 48), (10, 50), (52, 12)]


def patch_image(centre: tuple[int, int] | None, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """uint8 (size, size, 3): grey noise (0 to 120), with a white PATCH-pixel square at `centre` (x, y)."""
    rng = np.random.default_rng(seed)
    image = np.repeat(rng.integers(0, 121, (size, size, 1), dtype=np.uint8), 3, axis=2)
    if centre is not None:
        x, y = centre
        image[max(y - PATCH // 2, 0):y + PATCH // 2, max(x - PATCH // 2, 0):x + PATCH // 2] = 255
    return image


def quadrant(x: float, y: float, size: int = SIZE) -> tuple[int, int]:
    """(column, row) of the quadrant holding pixel (x, y): 0 left/top, 1 right/bottom."""
    return int(x >= size / 2), int(y >= size / 2)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float32 (N, 3, H, W) normalised as the eval transform does."""
    array = images.astype(np.float32) / 255.0
    array = (array - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(array.transpose(0, 3, 1, 2).copy())


def batch(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images, half with a patch at a random place (entirely inside), and their labels."""
    labels = rng.integers(0, 2, n)
    centres = rng.integers(PATCH // 2, SIZE - PATCH // 2, (n, 2))
    images = np.stack([patch_image(tuple(c) if label == 0 else None, int(rng.integers(2**31)))
                       for c, label in zip(centres, labels)])
    return to_input(images), torch.from_numpy(labels)


def train(steps: int = 40, batch_size: int = 16, seed: int = 0) -> nn.Module:
    """resnet18 from `models.create_model`, random init, trained with Adam; in eval mode.

    40 steps of 16 images: 100 % accuracy, and the heat-map in the patch's quadrant for all of
    CENTRES, with seeds 0 to 3 (20 steps missed some with seed 1).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = models.create_model("resnet18", len(LABELS))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        inputs, labels = batch(rng, batch_size)
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def accuracy(model: nn.Module, seed: int = 99, n: int = 128) -> float:
    inputs, labels = batch(np.random.default_rng(seed), n)
    with torch.inference_mode():
        return float((model(inputs).argmax(1) == labels).float().mean())


def save(model: nn.Module, directory: Path) -> Path:
    """The model's artifacts in `directory`, as a training job writes them (what the server loads)."""
    spec = artifacts.ModelSpec(arch="resnet18", num_classes=len(LABELS),
                               class_names=[f"{i + 1:03d}.{label}" for i, label in enumerate(LABELS)],
                               labels=list(LABELS), image_size=SIZE, resize_size=resize_size(SIZE),
                               mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    artifacts.save_model(directory, model.state_dict(), spec)
    return directory
