"""Unit tests of the request decoders and response encoders (`serving.codec`), no server."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from image_classifier.serving import codec, content_types
from image_classifier.serving.errors import (
    BadRequestError,
    InvalidImageError,
    UnsupportedAcceptError,
    UnsupportedContentTypeError,
)
from tests.serving.images import (
    b64,
    big_png,
    china_jpeg,
    exif_rotated_jpeg,
    instances,
    npy,
    photo,
    random_batch,
    raw_rgb,
    sixteen_bit_png,
    truncated_jpeg,
    variants,
)

LABELS = [f"class-{i}" for i in range(10)]


# --- content types ---------------------------------------------------------------------

@pytest.mark.parametrize("header, expected", [
    ("image/jpeg", "image/jpeg"),
    ("Image/JPEG", "image/jpeg"),
    ("image/jpeg; charset=x", "image/jpeg"),
    ("  application/X-NPY ;q=1", "application/x-npy"),
    ("application/json;charset=utf-8", "application/json"),
    ("", ""),
    (None, ""),
])
def test_base_type_drops_parameters_and_case(header, expected):
    assert content_types.base_type(header) == expected


# --- decode: images --------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(variants()))
@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "application/x-image"])
def test_decode_any_pillow_image_becomes_one_rgb_image(name, content_type):
    inputs = codec.decode(variants()[name], content_type)
    assert inputs.array is None and not inputs.batched and len(inputs) == 1
    (image,) = inputs.images
    assert image.mode == "RGB"
    assert image.size == photo().size


@pytest.mark.parametrize("content_type", ["Image/JPEG", "image/jpeg; charset=x", "APPLICATION/X-IMAGE;a=b",
                                          " image/png "])
def test_decode_ignores_content_type_parameters_and_case(content_type):
    expected = np.asarray(codec.decode(china_jpeg(), "image/jpeg").images[0])
    image = codec.decode(china_jpeg(), content_type).images[0]
    np.testing.assert_array_equal(np.asarray(image), expected)


def test_decode_keeps_the_pixels():
    png = variants()["png-rgb"]
    np.testing.assert_array_equal(np.asarray(codec.decode(png, "image/png").images[0]), np.asarray(raw_rgb(png)))


def test_decode_16bit_grayscale_scales_to_8bit():
    gray = np.asarray(photo().convert("L")).astype(int)
    rgb = np.asarray(codec.decode(sixteen_bit_png(), "image/png").images[0]).astype(int)
    assert np.abs(rgb - gray[..., None]).max() <= 1  # not saturated to white


def test_decode_grayscale_repeats_the_channel():
    rgb = np.asarray(codec.decode(variants()["png-grayscale"], "image/png").images[0])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    np.testing.assert_array_equal(rgb[..., 0], np.asarray(photo().convert("L")))


def test_decode_animated_gif_takes_the_first_frame():
    first = codec.decode(variants()["gif"], "application/x-image").images[0]
    animated = codec.decode(variants()["gif-animated"], "application/x-image").images[0]
    assert np.abs(np.asarray(first, dtype=int) - np.asarray(animated, dtype=int)).mean() < 8


@pytest.mark.parametrize("orientation, transpose", [
    (3, Image.Transpose.ROTATE_180),
    (6, Image.Transpose.ROTATE_270),
    (8, Image.Transpose.ROTATE_90),
    (2, Image.Transpose.FLIP_LEFT_RIGHT),
])
def test_decode_applies_exif_orientation(orientation, transpose):
    body = exif_rotated_jpeg(photo(), orientation)
    expected = raw_rgb(body).transpose(transpose)  # the same decoded pixels, turned by hand
    image = codec.decode(body, "image/jpeg").images[0]
    assert image.size == expected.size
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))


def test_decode_exif_rotation_changes_the_image():
    body = exif_rotated_jpeg(photo(), 6)
    assert codec.decode(body, "image/jpeg").images[0].size == photo().size[::-1]


# --- decode: npy -----------------------------------------------------------------------

@pytest.mark.parametrize("shape, batched, n", [
    ((3, 32, 32), False, 1),
    ((3, 40, 56), False, 1),
    ((1, 3, 32, 32), True, 1),
    ((4, 3, 32, 48), True, 4),
])
def test_decode_npy(shape, batched, n):
    array = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    inputs = codec.decode(npy(array), "application/x-npy")
    assert inputs.images is None and inputs.batched is batched and len(inputs) == n
    assert inputs.array.dtype == np.float32 and inputs.array.shape == (n, *shape[-3:])
    np.testing.assert_array_equal(inputs.array.reshape(shape), array)


def test_decode_npy_fortran_order():
    array = np.asfortranarray(random_batch(2))
    np.testing.assert_array_equal(codec.decode(npy(array), "application/x-npy").array, array)


# --- decode: JSON ----------------------------------------------------------------------

@pytest.mark.parametrize("names", [["jpeg"], ["png-rgb", "gif", "tiff"]])
def test_decode_json_instances(names):
    bodies = [variants()[name] for name in names]
    inputs = codec.decode(instances(*bodies), "application/json; charset=utf-8")
    assert inputs.batched and len(inputs) == len(names) and inputs.array is None
    for image, body in zip(inputs.images, bodies):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(codec.decode(body, "image/png").images[0]))


# --- decode: errors --------------------------------------------------------------------

def _object_npy() -> bytes:
    return npy(np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def _npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=random_batch(None))
    return buffer.getvalue()


def _with(array: np.ndarray, index, value) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


DECODE_ERRORS = [
    # content type, body, error, HTTP status, words of the message
    ("text/csv", b"1,2,3", UnsupportedContentTypeError, 415, "unsupported Content-Type"),
    ("image/gif", variants()["gif"], UnsupportedContentTypeError, 415, "image/gif"),
    (None, china_jpeg(), UnsupportedContentTypeError, 415, "unsupported Content-Type"),
    ("", china_jpeg(), UnsupportedContentTypeError, 415, "unsupported Content-Type"),
    ("image/jpeg", b"", BadRequestError, 400, "empty"),
    ("application/x-npy", b"", BadRequestError, 400, "empty"),
    ("application/json", b"", BadRequestError, 400, "empty"),
    ("image/jpeg", b"this is not an image", InvalidImageError, 400, "not a readable image"),
    ("image/png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, InvalidImageError, 400, "not a readable image"),
    ("image/jpeg", truncated_jpeg(), InvalidImageError, 400, "truncated"),
    ("application/x-npy", npy(random_batch(None, dtype=np.float64)), BadRequestError, 400, "float64"),
    ("application/x-npy", npy(random_batch(2, dtype=np.float16)), BadRequestError, 400, "float16"),
    ("application/x-npy", npy(np.zeros((3, 32, 32), np.int32)), BadRequestError, 400, "int32"),
    ("application/x-npy", npy(np.zeros((4, 32, 32), np.float32)), BadRequestError, 400, "shape"),
    ("application/x-npy", npy(np.zeros((32, 32), np.float32)), BadRequestError, 400, "shape"),
    ("application/x-npy", npy(np.zeros((32, 32, 3), np.float32)), BadRequestError, 400, "shape"),
    ("application/x-npy", npy(np.zeros((2, 4, 32, 32), np.float32)), BadRequestError, 400, "shape"),
    ("application/x-npy", npy(np.zeros((1, 1, 3, 32, 32), np.float32)), BadRequestError, 400, "shape"),
    ("application/x-npy", npy(np.zeros(3, np.float32)), BadRequestError, 400, "shape"),
    ("application/x-npy", npy(np.float32(1.0)), BadRequestError, 400, "shape"),
    ("application/x-npy", npy(np.zeros((3, 8, 8), np.float32)), BadRequestError, 400, "at least 32"),
    ("application/x-npy", npy(np.zeros((0, 3, 32, 32), np.float32)), BadRequestError, 400, "(0, 3, 32, 32)"),
    ("application/x-npy", _object_npy(), BadRequestError, 400, "pickled"),
    ("application/x-npy", pickle.dumps(random_batch(1)), BadRequestError, 400, "NPY format's header"),
    ("application/x-npy", b"definitely not numpy", BadRequestError, 400, "NPY format's header"),
    ("application/x-npy", npy(random_batch(1))[:100], BadRequestError, 400, "npy"),
    ("application/x-npy", _npz(), BadRequestError, 400, "NPY format's header"),
    ("application/x-npy", npy(_with(random_batch(2), (1, 0, 3, 3), np.nan)), BadRequestError, 400, "NaN"),
    ("application/x-npy", npy(_with(random_batch(None), (2, 0, 0), np.inf)), BadRequestError, 400, "infinite"),
    ("application/x-npy", china_jpeg(), BadRequestError, 400, "NPY format's header"),
    ("application/json", b"{not json", BadRequestError, 400, "not JSON"),
    ("application/json", b"\xff\xfe\xfa", BadRequestError, 400, "not JSON"),
    ("application/json", b"[" * 100_000, BadRequestError, 400, "not JSON"),
    ("application/json", b"[]", BadRequestError, 400, "instances"),
    ("application/json", b'{"instances": []}', BadRequestError, 400, "instances"),
    ("application/json", b'{"instances": {"b64": ""}}', BadRequestError, 400, "instances"),
    ("application/json", b'{"images": ["x"]}', BadRequestError, 400, "instances"),
    ("application/json", b'{"instances": ["abc"]}', BadRequestError, 400, "instances[0]"),
    ("application/json", b'{"instances": [{"b64": 12}]}', BadRequestError, 400, "instances[0]"),
    ("application/json", b'{"instances": [{"b64": "not base64!"}]}', BadRequestError, 400, "base64"),
    ("application/json", b'{"instances": [{"b64": "abc"}]}', BadRequestError, 400, "base64"),
    ("application/json", json.dumps({"instances": [{"b64": b64(china_jpeg())}, {"b64": b64(b"nope")}]}).encode(),
     InvalidImageError, 400, "instances[1]"),
    ("application/json", instances(truncated_jpeg()), InvalidImageError, 400, "instances[0]"),
    ("image/jpeg", china_jpeg(), None, None, None),  # control: the same decoder accepts a good body
]


@pytest.mark.parametrize("content_type, body, error, status, words", DECODE_ERRORS,
                         ids=[f"{i}-{row[0]}" for i, row in enumerate(DECODE_ERRORS)])
def test_decode_errors(content_type, body, error, status, words):
    if error is None:
        assert len(codec.decode(body, content_type)) == 1
        return
    with pytest.raises(error) as info:
        codec.decode(body, content_type)
    assert info.value.status_code == status
    assert words in info.value.message
    assert "Traceback" not in info.value.message


@pytest.mark.parametrize("size, limit, refused", [
    ((200, 100), 19_999, True),
    ((200, 100), 20_000, False),
    ((64, 64), 1_000, True),
    ((64, 64), None, False),
])
def test_decode_pixel_limit(size, limit, refused):
    body = big_png(*size)
    if refused:
        with pytest.raises(InvalidImageError, match="limit") as info:
            codec.decode(body, "image/png", limit)
        assert info.value.status_code == 400
    else:
        assert codec.decode(body, "image/png", limit).images[0].size == size


def test_decode_pixel_limit_applies_to_json_instances():
    body = instances(variants()["png-rgb"], big_png(300, 300))
    with pytest.raises(InvalidImageError, match=r"instances\[1\].*limit"):
        codec.decode(body, "application/json", 50_000)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decode_refuses_a_decompression_bomb_by_default():
    assert Image.MAX_IMAGE_PIXELS < 100_000_000
    body = big_png(10_000, 10_000, mode="1")  # 100 M pixels in 12 kB
    with pytest.raises(InvalidImageError, match="limit"):
        codec.decode(body, "application/x-image")


# --- encode ----------------------------------------------------------------------------

def _probabilities(n: int, classes: int = 10, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).standard_normal((n, classes)) * 3
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def _check_top_k(predictions: list[dict], row: np.ndarray, k: int):
    assert len(predictions) == k
    assert [p["class_id"] for p in predictions] == sorted(range(len(row)), key=lambda i: -row[i])[:k]
    for p in predictions:
        assert set(p) == {"label", "class_id", "probability"}
        assert isinstance(p["class_id"], int) and isinstance(p["probability"], float)
        assert p["label"] == LABELS[p["class_id"]]
        assert p["probability"] == float(row[p["class_id"]])
    assert [p["probability"] for p in predictions] == sorted((p["probability"] for p in predictions), reverse=True)


@pytest.mark.parametrize("n, batched, k", [(1, False, 5), (1, False, 1), (1, False, 10), (1, True, 3),
                                           (3, True, 5), (2, True, 10)])
def test_encode_json_top_k(n, batched, k):
    probabilities = _probabilities(n, seed=n + k)
    document = json.loads(codec.encode(probabilities, batched, "application/json", LABELS, k))
    assert list(document) == ["predictions"]
    lists = document["predictions"] if batched else [document["predictions"]]
    assert len(lists) == n
    for predictions, row in zip(lists, probabilities):
        _check_top_k(predictions, row, k)


def test_encode_json_ties_keep_class_order():
    probabilities = np.full((1, 4), 0.25, np.float32)
    document = json.loads(codec.encode(probabilities, False, "application/json", LABELS[:4], 4))
    assert [p["class_id"] for p in document["predictions"]] == [0, 1, 2, 3]


@pytest.mark.parametrize("n, batched, dtype", [(1, False, np.float32), (4, True, np.float32),
                                               (2, True, np.float64)])
def test_encode_npy_is_the_whole_float32_array(n, batched, dtype):
    probabilities = _probabilities(n, seed=7).astype(dtype)
    body = codec.encode(probabilities, batched, "application/x-npy", LABELS, 1)
    array = np.load(io.BytesIO(body), allow_pickle=False)
    assert array.dtype == np.float32 and array.shape == (n, 10)
    np.testing.assert_array_equal(array, probabilities.astype(np.float32))


def test_encode_json_equals_npy():
    probabilities = _probabilities(3, seed=11)
    as_json = json.loads(codec.encode(probabilities, True, "application/json", LABELS, 10))["predictions"]
    as_npy = np.load(io.BytesIO(codec.encode(probabilities, True, "application/x-npy", LABELS, 10)))
    for predictions, row in zip(as_json, as_npy):
        for p in predictions:
            assert np.float32(p["probability"]) == row[p["class_id"]]


@pytest.mark.parametrize("accept", ["text/csv", "*/*", "application/json; charset=utf-8", "image/jpeg", ""])
def test_encode_unsupported_accept(accept):
    with pytest.raises(UnsupportedAcceptError) as info:
        codec.encode(_probabilities(1), False, accept, LABELS, 5)
    assert info.value.status_code == 406 and "unsupported Accept" in info.value.message


def test_accept_types():
    assert set(codec.ACCEPT_TYPES) == {"application/json", "application/x-npy", "image/png"}


# --- encode: explanations --------------------------------------------------------------

def _explanation(class_id: int, png: bytes = b"\x89PNG\r\n\x1a\nfake") -> codec.Explanation:
    return codec.Explanation(class_id, LABELS[class_id], 0.25, png, 12, 8)


@pytest.mark.parametrize("n, batched", [(1, False), (1, True), (3, True)])
def test_encode_json_explanations_beside_the_predictions(n, batched):
    probabilities = _probabilities(n, seed=3)
    explanations = [_explanation(i, bytes([i]) * 5) for i in range(n)]
    document = json.loads(codec.encode(probabilities, batched, "application/json", LABELS, 2, explanations))
    assert list(document) == ["predictions", "explanations"]
    assert document["predictions"] == json.loads(codec.encode(probabilities, batched, "application/json", LABELS, 2))[
        "predictions"]  # the answer without explanations, unchanged
    assert document["explanations"] == [
        {"class_id": i, "label": LABELS[i], "probability": 0.25, "width": 12, "height": 8,
         "png_b64": b64(bytes([i]) * 5)} for i in range(n)]


def test_encode_png_is_the_overlay():
    assert codec.encode(_probabilities(1), False, "image/png", LABELS, 5, [_explanation(2, b"png!")]) == b"png!"


@pytest.mark.parametrize("accept, batched, explanations, words", [
    ("image/png", True, [_explanation(0)], "holds a batch"),
    ("image/png", False, None, "add explain=gradcam"),
    ("application/x-npy", False, [_explanation(0)], "application/json or image/png"),
])
def test_encode_refuses_what_cannot_carry_the_answer(accept, batched, explanations, words):
    with pytest.raises(UnsupportedAcceptError) as info:
        codec.encode(_probabilities(1), batched, accept, LABELS, 5, explanations)
    assert info.value.status_code == 406 and words in info.value.message


def test_split_inputs():
    images = [photo((8, 8)), photo((9, 9))]
    parts = codec.Inputs(images=images, batched=True).split()
    assert [(p.images, p.array, p.batched) for p in parts] == [([images[0]], None, False), ([images[1]], None, False)]
    array = random_batch(3)
    parts = codec.Inputs(array=array, batched=True).split()
    assert len(parts) == 3 and all(p.images is None and p.array.shape == (1, 3, 32, 32) for p in parts)
    np.testing.assert_array_equal(np.concatenate([p.array for p in parts]), array)


@pytest.mark.parametrize("explaining, expected", [(False, ("application/json", "application/x-npy")),
                                                  (True, ("application/json", "image/png"))])
def test_answer_types(explaining, expected):
    assert codec.answer_types(explaining) == expected


@pytest.mark.parametrize("accept, explaining, batched, words", [
    ("application/json", False, True, None),
    ("application/json", True, True, None),
    ("application/x-npy", False, True, None),
    ("application/x-npy", True, False, "application/json or image/png"),
    ("image/png", True, False, None),
    ("image/png", True, True, "holds a batch"),
    ("image/png", False, False, "add explain=gradcam"),
    ("text/csv", False, False, "unsupported Accept"),
])
def test_encoder_checks_the_combination_before_the_work(accept, explaining, batched, words):
    """`encoder` refuses what `encode` would, before any prediction is made; what it returns encodes."""
    if words is not None:
        with pytest.raises(UnsupportedAcceptError) as info:
            codec.encoder(accept, explaining, batched)
        assert info.value.status_code == 406 and words in info.value.message
        return
    explanations = [_explanation(0)] if explaining else None
    probabilities = _probabilities(1)
    assert (codec.encoder(accept, explaining, batched)(probabilities, LABELS, 5, explanations)
            == codec.encode(probabilities, batched, accept, LABELS, 5, explanations))
