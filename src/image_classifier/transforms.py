"""The torchvision transforms and normalisation shared by training and serving."""

from __future__ import annotations

import functools

from torchvision import transforms as T

from image_classifier.images import CROP_RATIO, center_view, resize_size

# torchvision's ImageNet statistics (the normalisation its pretrained weights expect).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
__all__ = ["CROP_RATIO", "IMAGENET_MEAN", "IMAGENET_STD", "eval_transform", "eval_view", "network_input",
           "resize_size", "train_transform"]


def eval_view(image_size: int) -> T.Compose:
    """PIL image → the PIL image the model sees at evaluation: resize, center crop (an image_size
    square): `images.center_view`, the server's too."""
    return T.Compose([functools.partial(center_view, image_size=image_size)])


def network_input(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """PIL RGB image (W x H) → float32 tensor (3, H, W): ToTensor (to [0, 1]), then Normalize by `mean`, `std`."""
    return T.Compose([T.ToTensor(), T.Normalize(mean, std)])


def eval_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """PIL RGB image → float32 tensor (3, image_size, image_size): `eval_view`, then `network_input`."""
    return T.Compose([*eval_view(image_size).transforms, *network_input(mean, std).transforms])


def train_transform(image_size: int, crop_scale_min: float = 0.08, hflip_prob: float = 0.5,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """PIL RGB image → float32 tensor (3, image_size, image_size) with random augmentation.

    RandomResizedCrop (area fraction in [crop_scale_min, 1], aspect ratio 3/4–4/3, torchvision's
    defaults) then a horizontal flip with probability `hflip_prob`.
    """
    steps = [T.RandomResizedCrop(image_size, scale=(crop_scale_min, 1.0))]
    if hflip_prob > 0:
        steps.append(T.RandomHorizontalFlip(hflip_prob))
    steps += network_input(mean, std).transforms
    return T.Compose(steps)
