"""schemathesis's hooks for the contract test (tests/serving/schemathesis.toml loads this file).

The description can say that a body is `type: string, format: binary` sent as application/x-npy
or application/x-image, but not that it must be an image Pillow reads or an array of the model's
layout; schemathesis generates such bodies itself only for the image/* types. These strategies
give it valid bodies of the other types (media types and the JSON's base64 `format: byte`), so
that a valid request is really valid and the server must answer it (positive_data_acceptance).
Invalid ones schemathesis still draws from the description (negative_data_rejection).

One check of this project's own: a 406 never answers an Accept of JSON, `*/*`, an empty one or
none; only image/png and application/x-npy depend on the custom attributes (openapi.yaml,
the Accept header).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

# The image sizes drawn (width, height): the model resizes any of them; 1x1 as schemathesis's own samples
SIZES = st.sampled_from([(1, 1), (32, 32), (40, 27), (64, 96)])
FORMATS = st.sampled_from(["JPEG", "PNG", "GIF", "WEBP", "BMP"])
MIN_SIDE = 32  # openapi.yaml's application/x-npy: H and W >= 32
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)


@st.composite
def images(draw) -> bytes:
    """An encoded RGB image with one colour, of a drawn size and format."""
    colour = draw(st.tuples(*[st.integers(0, 255)] * 3))
    buffer = io.BytesIO()
    Image.new("RGB", draw(SIZES), colour).save(buffer, draw(FORMATS))
    return buffer.getvalue()


@st.composite
def arrays(draw) -> bytes:
    """An npy file: float32 (3, H, W) or (N, 3, H, W) pixels in [0, 1], normalised as the description says."""
    side = st.integers(MIN_SIDE, MIN_SIDE + 8)
    shape = (3, draw(side), draw(side))
    batch = draw(st.one_of(st.none(), st.integers(1, 3)))
    pixels = np.full(shape, draw(st.floats(0, 1, width=32)), np.float32)
    array = (pixels - IMAGENET_MEAN) / IMAGENET_STD
    if batch is not None:
        array = np.stack([array] * batch)
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


schemathesis.openapi.media_type("application/x-image", images(), aliases=["application/octet-stream"])
schemathesis.openapi.media_type("application/x-npy", arrays())
# `b64` in the JSON body (openapi.yaml: format byte) is an image's bytes; the answers' png_b64 too
schemathesis.openapi.format("byte", images().map(lambda body: base64.b64encode(body).decode()))


# The Accept values of the description's enum that no custom attribute makes unanswerable (and none at all)
ALWAYS_ANSWERED = ("", "application/json", "*/*")


@schemathesis.check
def not_acceptable_only_for_conditional_types(ctx, response, case) -> None:
    """A 406 never answers an Accept of JSON, `*/*`, an empty one or none (valid or invalid request)."""
    accept = {name.lower(): value for name, value in (case.headers or {}).items()}.get("accept")
    if response.status_code == 406 and (accept is None or accept.strip() in ALWAYS_ANSWERED):
        raise AssertionError(f"406 to Accept {accept!r}: only image/png or application/x-npy depend on the "
                             "custom attributes (openapi.yaml, the Accept header)")
