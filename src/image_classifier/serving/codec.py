"""Decode request bodies into model inputs and encode predictions (and explanations), by content type."""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from image_classifier.images import open_image
from image_classifier.serving import attributes, content_types
from image_classifier.serving.errors import (
    BadRequestError,
    InvalidImageError,
    UnsupportedAcceptError,
    UnsupportedContentTypeError,
)

# The smallest input side every registry model accepts: their backbones downsample 32 times.
MIN_ARRAY_SIDE = 32
NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file (numpy.lib.format)


@dataclass
class Inputs:
    """A decoded request: RGB images to preprocess, or an already normalised float32 batch."""

    images: list[Image.Image] | None = None   # from image bodies and JSON "b64" instances
    array: np.ndarray | None = None           # (N, 3, H, W) float32, from application/x-npy
    batched: bool = False                     # the client sent a batch: answer one list per input

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.array)

    def split(self) -> list[Inputs]:
        """One unbatched `Inputs` per image, in order."""
        if self.images is not None:
            return [Inputs(images=[image]) for image in self.images]
        return [Inputs(array=self.array[i:i + 1]) for i in range(len(self.array))]


@dataclass(frozen=True)
class Explanation:
    """One image's explanation: a heat-map of the evidence for a class, over the image, as PNG."""

    class_id: int
    label: str
    probability: float     # of `class_id` for this image
    png: bytes             # the overlay, `width` x `height` pixels: the image as the model saw it
    width: int
    height: int

    def to_json(self) -> dict:
        return {"class_id": self.class_id, "label": self.label, "probability": self.probability,
                "width": self.width, "height": self.height, "png_b64": base64.b64encode(self.png).decode("ascii")}


def _decode_image(body: bytes, max_pixels: int | None) -> Image.Image:
    try:
        return open_image(body, max_pixels)
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"image refused: {exc}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        # UnidentifiedImageError and truncated data are OSErrors
        raise InvalidImageError(f"body is not a readable image: {exc}") from None


def _image_to_inputs(body: bytes, max_pixels: int | None) -> Inputs:
    return Inputs(images=[_decode_image(body, max_pixels)])


def _npy_to_inputs(body: bytes, max_pixels: int | None) -> Inputs:
    if not body.startswith(NPY_MAGIC):  # np.load would take it for a pickle
        raise BadRequestError("body is not a .npy array: it lacks the NPY format's header")
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise BadRequestError("pickled (object) arrays are not accepted: send a float32 array") from None
        raise BadRequestError(f"body is not a .npy array: {exc}") from None
    except (OSError, EOFError) as exc:
        raise BadRequestError(f"body is not a .npy array: {exc}") from None
    if array.dtype != np.float32:
        raise BadRequestError(f"array dtype must be float32, got {array.dtype}")
    if array.ndim not in (3, 4) or array.shape[-3] != 3:
        raise BadRequestError(f"array shape must be (3, H, W) or (N, 3, H, W), got {array.shape}")
    if min(array.shape[-2:]) < MIN_ARRAY_SIDE or array.size == 0:
        raise BadRequestError(f"array height and width must be at least {MIN_ARRAY_SIDE}, got {array.shape}")
    if not np.isfinite(array).all():
        raise BadRequestError("array holds NaN or infinite values")
    batched = array.ndim == 4
    return Inputs(array=array if batched else array[None], batched=batched)


def _json_to_inputs(body: bytes, max_pixels: int | None) -> Inputs:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise BadRequestError(f"body is not JSON: {exc}") from None
    instances = document.get("instances") if isinstance(document, dict) else None
    if not isinstance(instances, list) or not instances:
        raise BadRequestError('JSON body must be {"instances": [{"b64": "<base64 image>"}, ...]}')
    images = []
    for i, instance in enumerate(instances):
        encoded = instance.get("b64") if isinstance(instance, dict) else None
        if not isinstance(encoded, str):
            raise BadRequestError(f'instances[{i}] must be {{"b64": "<base64 image>"}}')
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequestError(f"instances[{i}].b64 is not valid base64") from None
        try:
            images.append(_decode_image(raw, max_pixels))
        except InvalidImageError as exc:
            raise InvalidImageError(f"instances[{i}]: {exc.message}") from None
    return Inputs(images=images, batched=True)


_DECODERS: dict[str, Callable[[bytes, int | None], Inputs]] = {
    content_types.JPEG: _image_to_inputs,
    content_types.PNG: _image_to_inputs,
    content_types.X_IMAGE: _image_to_inputs,
    content_types.OCTET_STREAM: _image_to_inputs,  # the SDK's default serializer: bytes of an image
    content_types.NPY: _npy_to_inputs,
    content_types.JSON: _json_to_inputs,
}


def decode(body: bytes, content_type: str | None, max_pixels: int | None = None) -> Inputs:
    """Decode a request body.

    Args:
        body: the raw request body.
        content_type: the request's Content-Type header (parameters are ignored).
        max_pixels: decompression-bomb limit per image, pixels; None = Pillow's.

    Raises:
        UnsupportedContentTypeError: no decoder for the content type (415).
        BadRequestError: empty body, or one that does not decode (400).
    """
    try:
        decoder = _DECODERS[content_types.base_type(content_type)]
    except KeyError:
        raise UnsupportedContentTypeError(
            f"unsupported Content-Type {content_type!r}; supported: {', '.join(_DECODERS)}") from None
    if not body:
        raise BadRequestError("empty request body")
    return decoder(body, max_pixels)


def _top_k(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[dict]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": labels[i], "class_id": int(i), "probability": float(probabilities[i])} for i in order]


def _to_json(probabilities: np.ndarray, batched: bool, labels: Sequence[str], top_k: int,
             explanations: Sequence[Explanation] | None) -> bytes:
    lists = [_top_k(row, labels, top_k) for row in probabilities]
    document: dict = {"predictions": lists if batched else lists[0]}
    if explanations is not None:
        document["explanations"] = [explanation.to_json() for explanation in explanations]
    return json.dumps(document).encode()


def _to_npy(probabilities: np.ndarray, batched: bool, labels: Sequence[str], top_k: int,
            explanations: Sequence[Explanation] | None) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, probabilities.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def _to_png(probabilities: np.ndarray, batched: bool, labels: Sequence[str], top_k: int,
            explanations: Sequence[Explanation] | None) -> bytes:
    return explanations[0].png  # `encoder` refused a batch, or no explanation


Encoder = Callable[..., bytes]  # (probabilities, labels, top_k, explanations=None) -> the body: `encoder`


@dataclass(frozen=True)
class _Answer:
    """An answer type: its encoder, and what it can carry."""

    encode: Callable[[np.ndarray, bool, Sequence[str], int, Sequence[Explanation] | None], bytes]
    plain: bool = True       # predictions alone
    explained: bool = True   # predictions with explanations
    batch: bool = True       # the answer to a batch (one per input)


# The one table of what each Accept type answers: `negotiate_accept` (serving/parser.py) picks
# from it, `encoder` checks a request's combination against it.
_ENCODERS: dict[str, _Answer] = {
    content_types.JSON: _Answer(_to_json),
    content_types.NPY: _Answer(_to_npy, explained=False),
    content_types.PNG: _Answer(_to_png, plain=False, batch=False),
}
ACCEPT_TYPES: tuple[str, ...] = tuple(_ENCODERS)


def answer_types(explaining: bool) -> tuple[str, ...]:
    """The Accept types that answer a request with (or without) explanations, preferred first."""
    return tuple(accept for accept, answer in _ENCODERS.items() if (answer.explained if explaining else answer.plain))


EXPLANATION_TYPES = answer_types(explaining=True)  # what can carry an explanation
EXPLANATION_TYPES_MESSAGE = f"an explanation is answered as {' or '.join(EXPLANATION_TYPES)}"


def encoder(accept: str, explaining: bool, batched: bool) -> Encoder:
    """The encoder of an answer as `accept`, checked before the work: see `encode`.

    Args:
        accept: the answer's content type, one of ACCEPT_TYPES.
        explaining: the answer carries explanations.
        batched: the request holds a batch (one answer per input).

    Returns:
        `(probabilities, labels, top_k, explanations) -> bytes`, `encode`'s arguments.

    Raises:
        UnsupportedAcceptError: no encoder for `accept`; explanations as NPY; PNG without
            an explanation or for a batch (406).
    """
    try:
        answer = _ENCODERS[accept]
    except KeyError:
        raise UnsupportedAcceptError(f"unsupported Accept {accept!r}; supported: {', '.join(_ENCODERS)}") from None
    if batched and not answer.batch:
        raise UnsupportedAcceptError(f"{accept} answers one image and this request holds a batch: send one image, "
                                     f"or ask for {content_types.JSON} (one overlay per image in explanations)")
    if not explaining and not answer.plain:
        raise UnsupportedAcceptError(f"{accept} answers an explanation: add explain=gradcam to {attributes.HEADER}")
    if explaining and not answer.explained:
        raise UnsupportedAcceptError(EXPLANATION_TYPES_MESSAGE)

    def encode_answer(probabilities: np.ndarray, labels: Sequence[str], top_k: int,
                      explanations: Sequence[Explanation] | None = None) -> bytes:
        return answer.encode(probabilities, batched, labels, top_k, explanations)

    return encode_answer


def encode(probabilities: np.ndarray, batched: bool, accept: str, labels: Sequence[str],
           top_k: int, explanations: Sequence[Explanation] | None = None) -> bytes:
    """Encode class probabilities (N, num_classes) float32, and explanations, as `accept`.

    JSON: `{"predictions": [{"label", "class_id", "probability"}, ...]}`, the `top_k` most
    probable classes, most probable first (a batch: one such list per input), and with
    `explanations`, `"explanations": [{"class_id", "label", "probability", "width", "height",
    "png_b64"}, ...]`, one per input image in order (a list of one for a single image).
    NPY: the whole (N, num_classes) float32 array. PNG: the one image's explanation overlay.

    Raises:
        UnsupportedAcceptError: no encoder for `accept`; explanations as NPY; PNG without
            an explanation or for a batch (406).
    """
    return encoder(accept, explanations is not None, batched)(probabilities, labels, top_k, explanations)
