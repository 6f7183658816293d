"""Image decoding and the evaluation view shared by training and serving: EXIF orientation, RGB,
the decompression-bomb limit, the resize and center crop.

Pillow only (no torch), so the model server can import it before the model loads.
"""

from __future__ import annotations

import contextlib
import io
import threading
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

# Images over this many pixels (a 12-megapixel phone photo is 4032x3024 = 12.2 million) are
# decoded one at a time per process: each takes 3 bytes a pixel or more while it decodes, and
# a server's threads decoding several 50-megapixel images at once would multiply its memory.
LARGE_IMAGE_PIXELS = 16_000_000
_large_images = threading.Lock()


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
            `Image.MAX_IMAGE_PIXELS`: raise that too to allow larger images. Images over
            `LARGE_IMAGE_PIXELS` decode one at a time in a process.

    Raises:
        PIL.Image.DecompressionBombError: the image has more than the limit's pixels.
        PIL.UnidentifiedImageError: not an image Pillow can read.
        OSError: truncated or corrupt image data.
    """
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    with Image.open(source) as img:
        check_pixels(img, max_pixels)
        large = img.width * img.height > LARGE_IMAGE_PIXELS
        with _large_images if large else contextlib.nullcontext():
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grayscale → 8-bit; via "I": Pillow's point() refuses big-endian I;16B
                img = img.convert("I").point(lambda v: v / 256).convert("L")
            return img.convert("RGB")


# Resize to image_size / 0.875 before the center crop: 256 → 224, as torchvision's ImageNet
# evaluation (and the pytorch/examples imagenet script) does.
CROP_RATIO = 0.875


def resize_size(image_size: int) -> int:
    """The shorter-side resize before the center crop, in pixels (256 for 224)."""
    return round(image_size / CROP_RATIO)


def center_view(image: Image.Image, image_size: int) -> Image.Image:
    """What the model sees of `image` at evaluation: its shorter side resized to
    `resize_size(image_size)` (bilinear, with Pillow's antialiasing), then the center
    `image_size` x `image_size` square, in pixels.

    torchvision's `Resize(resize_size(image_size))` then `CenterCrop(image_size)` on a PIL image,
    computed as they compute it (the longer side truncated, the crop's offsets rounded), in Pillow
    alone so that the server predicts without torch; tests/test_transforms.py compares the two.
    """
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize_size(image_size), int(resize_size(image_size) * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = round((size[0] - image_size) / 2.0), round((size[1] - image_size) / 2.0)
    return image.crop((left, top, left + image_size, top + image_size))
