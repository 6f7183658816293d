"""Image decoding: every mode to RGB, EXIF orientation, the pixel limit, truncated and garbage data."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from image_classifier.images import open_image

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def pixel(image: Image.Image, xy=(0, 0)) -> tuple[int, ...]:
    return tuple(np.asarray(image)[xy[1], xy[0]].tolist())


def close(actual, expected, tolerance=0) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def _palette_image() -> Image.Image:
    image = Image.new("P", (6, 4), 1)
    image.putpalette([0, 0, 0, *GREEN, *BLUE] + [0] * (256 * 3 - 9))
    return image


def _gif_two_frames() -> bytes:
    frames = [Image.new("RGB", (6, 4), RED).convert("P"), Image.new("RGB", (6, 4), BLUE).convert("P")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def _rgba() -> Image.Image:
    return Image.new("RGBA", (6, 4), (10, 20, 30, 255))


def _sixteen_bit() -> Image.Image:
    image = Image.fromarray(np.array([[0, 32768, 65535, 1000]], dtype=np.uint16))
    assert image.mode == "I;16"
    return image


# (encoded bytes, expected colour of pixel (0, 0), tolerance, expected size)
IMAGES = [
    pytest.param(lambda: encode(Image.new("L", (6, 4), 200), "PNG"), (200, 200, 200), 0, id="L png"),
    pytest.param(lambda: encode(Image.new("1", (6, 4), 1), "PNG"), (255, 255, 255), 0, id="1-bit png"),
    pytest.param(lambda: encode(Image.new("LA", (6, 4), (90, 255)), "PNG"), (90, 90, 90), 0, id="LA png"),
    pytest.param(lambda: encode(_rgba(), "PNG"), (10, 20, 30), 0, id="RGBA png"),
    pytest.param(lambda: encode(_palette_image(), "PNG"), GREEN, 0, id="P png"),
    pytest.param(lambda: encode(_palette_image(), "PNG", transparency=0), GREEN, 0, id="P png transparency"),
    pytest.param(_gif_two_frames, RED, 0, id="GIF first frame"),
    pytest.param(lambda: encode(Image.new("RGB", (6, 4), BLUE), "TIFF"), BLUE, 0, id="RGB tiff"),
    pytest.param(lambda: encode(_rgba(), "TIFF", compression="tiff_lzw"), (10, 20, 30), 0, id="RGBA tiff"),
    pytest.param(lambda: encode(_sixteen_bit(), "PNG"), (0, 0, 0), 0, id="I;16 png"),
    pytest.param(lambda: encode(Image.new("RGB", (16, 16), RED).convert("CMYK"), "JPEG", quality=95),
                 RED, 12, id="CMYK jpeg"),
    pytest.param(lambda: encode(Image.new("RGB", (16, 16), GREEN), "JPEG", quality=95), GREEN, 12,
                 id="RGB jpeg"),
    pytest.param(lambda: encode(Image.new("RGB", (6, 4), BLUE), "BMP"), BLUE, 0, id="BMP"),
]


@pytest.mark.parametrize("make, colour, tolerance", IMAGES)
def test_open_image_gives_rgb(make, colour, tolerance):
    image = open_image(make())
    assert image.mode == "RGB"
    assert close(pixel(image), colour, tolerance), pixel(image)


@pytest.mark.parametrize("mode, dtype, fmt", [
    ("I;16", "<u2", "PNG"),
    ("I;16", "<u2", "TIFF"),
    ("I;16B", ">u2", "TIFF"),   # big-endian (Motorola byte order) 16-bit TIFF
    ("I", "<i4", "TIFF"),
])
def test_sixteen_bit_images_are_scaled_to_eight_bits(mode, dtype, fmt):
    values = np.array([[0, 32768, 65535, 1000]], dtype=dtype)
    data = encode(Image.frombytes(mode, (4, 1), values.tobytes()), fmt)
    assert Image.open(io.BytesIO(data)).mode == mode
    image = open_image(data)
    assert image.mode == "RGB"
    assert [pixel(image, (x, 0)) for x in range(4)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255), (3, 3, 3)]


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "path", "str path", "file object"])
def test_open_image_sources(tmp_path, kind):
    data = encode(Image.new("RGB", (5, 3), BLUE), "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    source = {"bytes": data, "bytearray": bytearray(data), "path": path, "str path": str(path),
              "file object": io.BytesIO(data)}[kind]
    image = open_image(source)
    assert image.size == (5, 3) and pixel(image) == BLUE


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(fmt):
    image = Image.new("RGB", (40, 20), RED)
    image.paste(BLUE, (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    opened = open_image(encode(image, fmt, exif=exif.tobytes()))
    assert opened.size == (20, 40)
    assert close(pixel(opened, (10, 5)), RED, 30)     # the left half is now on top
    assert close(pixel(opened, (10, 35)), BLUE, 30)


def test_no_exif_orientation_keeps_the_size():
    assert open_image(encode(Image.new("RGB", (40, 20)), "JPEG")).size == (40, 20)


@pytest.mark.parametrize("max_pixels, allowed", [(9_999, False), (10_000, True), (1_000_000, True)])
def test_max_pixels(max_pixels, allowed):
    data = encode(Image.new("RGB", (100, 100), GREEN), "PNG")
    if allowed:
        assert open_image(data, max_pixels=max_pixels).size == (100, 100)
    else:
        with pytest.raises(Image.DecompressionBombError, match="10000"):
            open_image(data, max_pixels=max_pixels)


def test_image_over_the_limit_is_refused_before_decoding():
    data = encode(Image.effect_noise((200, 100), 50).convert("RGB"), "PNG")
    truncated = data[:len(data) // 3]  # decoding this would raise a plain OSError
    with pytest.raises(Image.DecompressionBombError):
        open_image(truncated, max_pixels=100)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_default_limit_is_pillows(monkeypatch):
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)  # over 1x (Pillow only warns) but under 2x
    with pytest.raises(Image.DecompressionBombError):
        open_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_data_raises_oserror(fmt):
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), fmt)
    with pytest.raises(OSError) as info:
        open_image(data[:len(data) // 2])
    assert not isinstance(info.value, Image.UnidentifiedImageError)


@pytest.mark.parametrize("data", [random.Random(0).randbytes(2048), b"", b"hello, world\n",
                                  b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"],
                         ids=["random", "empty", "text", "pdf"])
def test_garbage_raises_unidentified_image_error(data):
    with pytest.raises(Image.UnidentifiedImageError):
        open_image(data)
