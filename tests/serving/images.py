"""Real request bodies for the serving tests: scikit-learn's china.jpg and variants made with Pillow."""

from __future__ import annotations

import base64
import functools
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def china_path() -> Path:
    """scikit-learn's bundled photo (640x427 RGB JPEG)."""
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"


@functools.cache
def china_jpeg() -> bytes:
    return china_path().read_bytes()


def photo(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """The china photo, shrunk (width, height) so variants stay small and fast."""
    with Image.open(io.BytesIO(china_jpeg())) as img:
        return img.convert("RGB").resize(size)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def sixteen_bit_png() -> bytes:
    """The photo's grayscale as a 16-bit PNG (Pillow mode I;16), values v * 257."""
    gray = np.asarray(photo().convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(gray), "PNG")


@functools.cache
def variants() -> dict[str, bytes]:
    """Name → encoded image: every kind of image the server must turn into RGB."""
    img = photo()
    rgba = img.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(img.size))
    return {
        "jpeg": encode(img, "JPEG", quality=90),
        "png-rgb": encode(img, "PNG"),
        "png-grayscale": encode(img.convert("L"), "PNG"),
        "png-rgba": encode(rgba, "PNG"),
        "png-palette": encode(img.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "png-16bit": sixteen_bit_png(),
        "png-1bit": encode(img.convert("1"), "PNG"),
        "gif": encode(img, "GIF"),
        "gif-animated": encode(img, "GIF", save_all=True, append_images=[img.rotate(90)]),
        "tiff": encode(img, "TIFF"),
        "tiff-cmyk": encode(img.convert("CMYK"), "TIFF"),
        "jpeg-cmyk": encode(img.convert("CMYK"), "JPEG"),
        "bmp": encode(img, "BMP"),
        "webp": encode(img, "WEBP"),
    }


def exif_rotated_jpeg(img: Image.Image, orientation: int = 6) -> bytes:
    """A JPEG of `img` whose EXIF orientation tag says to rotate it on display."""
    exif = img.getexif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif, quality=95)


def raw_rgb(body: bytes) -> Image.Image:
    """Decode with Pillow alone, ignoring EXIF orientation."""
    with Image.open(io.BytesIO(body)) as img:
        return img.convert("RGB")


def npy(array: np.ndarray, **params) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **params)
    return buffer.getvalue()


def load_npy(body: bytes) -> np.ndarray:
    return np.load(io.BytesIO(body), allow_pickle=False)


def b64(body: bytes) -> str:
    return base64.b64encode(body).decode("ascii")


def instances(*bodies: bytes) -> bytes:
    """The JSON request body for images: `{"instances": [{"b64": ...}, ...]}`."""
    return json.dumps({"instances": [{"b64": b64(body)} for body in bodies]}).encode()


def random_batch(n: int | None, side: int = 32, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """A normalised-looking batch (n, 3, side, side), or one (3, side, side) when n is None."""
    shape = (3, side, side) if n is None else (n, 3, side, side)
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def big_png(width: int, height: int, mode: str = "L") -> bytes:
    """A blank image of many pixels that compresses to a few kB (a decompression bomb)."""
    return encode(Image.new(mode, (width, height)), "PNG")


@functools.cache
def truncated_jpeg() -> bytes:
    body = china_jpeg()
    return body[: len(body) // 2]


def invocation_headers(content_type: str | None = "image/jpeg", accept: str | None = None,
                       top_k: str | None = None) -> dict[str, str]:
    """Request headers for /invocations; None leaves a header out."""
    headers = {"Content-Type": content_type, "Accept": accept, "X-Amzn-SageMaker-Custom-Attributes": top_k}
    return {name: value for name, value in headers.items() if value is not None}


def payload_file(directory: Path, name: str, body: bytes | None) -> Path:
    """`directory/name` holding `body`, or a copy of the china.jpg photo when `body` is None."""
    path = directory / name
    if body is None:
        shutil.copy(china_path(), path)
    else:
        path.write_bytes(body)
    return path
