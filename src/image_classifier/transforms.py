"""The torchvision transforms and normalisation shared by training and serving."""

from __future__ import annotations

from torchvision import transforms as T

# torchvision's ImageNet statistics (the normalisation its pretrained weights expect).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Resize to image_size / 0.875 before the center crop: 256 → 224, as torchvision's
# ImageNet evaluation (and the pytorch/examples imagenet script) does.
CROP_RATIO = 0.875


def resize_size(image_size: int) -> int:
    """The shorter-side resize before the center crop, in pixels (256 for 224)."""
    return round(image_size / CROP_RATIO)


def eval_view(image_size: int) -> T.Compose:
    """PIL image → the PIL image the model sees at evaluation: Resize, CenterCrop (image_size square)."""
    return T.Compose([T.Resize(resize_size(image_size)), T.CenterCrop(image_size)])


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
