"""Image decoding and the torchvision transforms shared by training and serving."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps
from torchvision import transforms as T

# torchvision's ImageNet statistics (the normalisation its pretrained weights expect).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Resize to image_size / 0.875 before the center crop: 256 → 224, as torchvision's
# ImageNet evaluation (and the pytorch/examples imagenet script) does.
CROP_RATIO = 0.875


def resize_size(image_size: int) -> int:
    """The shorter-side resize before the center crop, in pixels (256 for 224)."""
    return int(round(image_size / CROP_RATIO))


def check_pixels(img: Image.Image, max_pixels: int | None = None) -> None:
    """Refuse an opened (not yet decoded) image over the decompression-bomb limit.

    Args:
        max_pixels: the limit in pixels (width × height); None = Pillow's `Image.MAX_IMAGE_PIXELS`
            (about 89.5 million). Unlike Pillow, which only warns between one and two times its
            limit, anything over the limit is refused.

    Raises:
        PIL.Image.DecompressionBombError: over the limit.
    """
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if limit and img.width * img.height > limit:
        raise Image.DecompressionBombError(
            f"image of {img.width}x{img.height} = {img.width * img.height} pixels is over "
            f"the limit of {limit} pixels")


def open_image(source: str | Path | bytes | BinaryIO, max_pixels: int | None = None) -> Image.Image:
    """Decode an image fully into an RGB PIL image, honouring EXIF orientation.

    Grayscale, RGBA, palette, 16-bit, GIF (first frame) and TIFF all become 8-bit RGB;
    an alpha channel is dropped (Pillow's `convert("RGB")`).

    Args:
        source: a path, the encoded bytes, or a binary file object.
        max_pixels: decompression-bomb limit, see `check_pixels`; checked before the pixel
            data is decoded. Pillow itself refuses, on open, images over twice its own
            `Image.MAX_IMAGE_PIXELS`: raise that too to allow larger images.

    Raises:
        PIL.Image.DecompressionBombError: the image has more than the limit's pixels.
        PIL.UnidentifiedImageError: not an image Pillow can read.
        OSError: truncated or corrupt image data.
    """
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    with Image.open(source) as img:
        check_pixels(img, max_pixels)
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grayscale → 8-bit; via "I": Pillow's point() refuses big-endian I;16B
            img = img.convert("I").point(lambda v: v / 256).convert("L")
        return img.convert("RGB")


def eval_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """PIL RGB image → float32 tensor (3, image_size, image_size): Resize, CenterCrop, Normalize."""
    return T.Compose([
        T.Resize(resize_size(image_size)),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def train_transform(image_size: int, crop_scale_min: float = 0.08, hflip_prob: float = 0.5,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """PIL RGB image → float32 tensor (3, image_size, image_size) with random augmentation.

    RandomResizedCrop (area fraction in [crop_scale_min, 1], aspect ratio 3/4–4/3, torchvision's
    defaults) then a horizontal flip with probability `hflip_prob`.
    """
    steps = [T.RandomResizedCrop(image_size, scale=(crop_scale_min, 1.0))]
    if hflip_prob > 0:
        steps.append(T.RandomHorizontalFlip(hflip_prob))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)
