"""Turns a Flask request to `/invocations` into a frozen `InferenceRequest`, checked.

Its rules are applied in one order, which fixes which error a request with several faults
gets: the body is read (413), the Accept header negotiated against what the answer can be
(406), the model waited for (503), the custom attributes checked against its labels (400).
The body is decoded later, by `codec.decode` (415, 400): the route's next step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Request
from werkzeug.datastructures import MIMEAccept
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_accept_header

from image_classifier.serving import attributes, codec, content_types
from image_classifier.serving.attributes import Attributes
from image_classifier.serving.errors import UnsupportedAcceptError
from image_classifier.serving.front import LINGER_READ_SECONDS, LINGER_SECONDS

logger = logging.getLogger(__name__)

# How much of a refused (413) body is read and discarded before the answer where gunicorn serves
# alone (without nginx in front, serving/front.py): nginx's bounds in seconds (LINGER_SECONDS in
# all, LINGER_READ_SECONDS a read), and one in bytes. A client that writes its whole body before
# it reads (Python's urllib) gets the 413 instead of "Broken pipe".
LINGER_MAX_BYTES = 32 * 2**20   # bytes discarded at most


@dataclass(frozen=True)
class InferenceRequest:
    """What one request asks: its body, how to read it, how to answer it."""

    body: bytes                 # the raw body, not yet decoded
    content_type: str | None    # the Content-Type header as sent: `codec.decode` picks the decoder by it
    accept: str                 # the answer's content type, negotiated: one of `codec.ACCEPT_TYPES`
    attributes: Attributes      # top_k, and the explanation asked for (method and class), checked

    @property
    def explaining(self) -> bool:
        """The request asks for explanations (`explain=gradcam`)."""
        return self.attributes.explain is not None


def _unsupported_plain(header: str) -> str:
    """The 406 message without explanations: the types it can have, and those `explain` adds."""
    plain = codec.answer_types(explaining=False)
    explained_only = [accept for accept in codec.EXPLANATION_TYPES if accept not in plain]
    return "; ".join([f"unsupported Accept {header!r}; supported: {', '.join(plain)}",
                      *(f"{accept} with explain=gradcam in {attributes.HEADER}" for accept in explained_only)])


def negotiate_accept(header: str | None, explaining: bool = False) -> str:
    """The answer's content type for an Accept header: the best of `codec.answer_types(explaining)`.

    A missing or blank header, or `*/*`, means JSON; media-type parameters
    (`application/json; charset=utf-8`) are ignored, as in Content-Type. A blank header lists no
    type at all: RFC 9110 §12.5.1 lets a server disregard an Accept it cannot honour rather than
    answer 406, and this one answers it as it answers a request without Accept (openapi.yaml says so).

    Args:
        header: the Accept header as sent.
        explaining: the request asks for explanations: JSON or PNG (the overlay); else JSON or NPY.

    Returns:
        One of `codec.ACCEPT_TYPES`.

    Raises:
        UnsupportedAcceptError: nothing in the header can carry the answer (406).
    """
    if not header or not header.strip():
        return content_types.JSON
    offered = MIMEAccept([(content_types.base_type(value), q) for value, q in parse_accept_header(header, MIMEAccept)])
    best = offered.best_match(codec.answer_types(explaining))
    if best is None:
        raise UnsupportedAcceptError(f"unsupported Accept {header!r}: {codec.EXPLANATION_TYPES_MESSAGE}"
                                     if explaining else _unsupported_plain(header))
    return best


def _read_body(request: Request) -> bytes:
    """The request's body, read whole, whatever the answer will be: gunicorn closes a keep-alive
    connection silently when a body over 64 kB is left unread, and the client's next request on
    it would fail.

    Raises:
        RequestEntityTooLarge: over `request.max_content_length` (the app's MAX_CONTENT_LENGTH), bytes (413).
    """
    body = request.get_data(cache=False)  # 413 if the Content-Length is over the limit
    limit = request.max_content_length
    if (request.content_length is None and limit is not None and len(body) >= limit
            and request.environ.get("wsgi.input_terminated") and request.environ["wsgi.input"].read(1)):
        raise RequestEntityTooLarge()  # a chunked body: werkzeug stops at the limit without an error
    return body


def discard_body(environ: Mapping[str, Any]) -> int:
    """Read and discard what is left of a refused request's body, within LINGER_MAX_BYTES,
    LINGER_SECONDS and LINGER_READ_SECONDS a read (gunicorn's socket, `gunicorn.socket`, gets
    that timeout); the bytes discarded. A body left partly unread closes the connection after
    the answer (gunicorn_config.pre_request, or gunicorn itself)."""
    stream, sock = environ.get("wsgi.input"), environ.get("gunicorn.socket")
    if stream is None:
        return 0
    if sock is not None:
        sock.settimeout(LINGER_READ_SECONDS)
    deadline, discarded = time.monotonic() + LINGER_SECONDS, 0
    try:
        while discarded < LINGER_MAX_BYTES and time.monotonic() < deadline:
            chunk = stream.read(min(2**16, LINGER_MAX_BYTES - discarded))
            if not chunk:
                break
            discarded += len(chunk)
    except Exception as exc:  # a stalled or vanished client, a bad chunk: the answer goes out anyway
        logger.info("stopped discarding a refused body after %d bytes: %r", discarded, exc)
    return discarded


def parse_request(request: Request, labels: Callable[[], Sequence[str]]) -> InferenceRequest:
    """The request's body and headers, checked, in the order of this module's docstring.

    Args:
        request: a POST to `/invocations`.
        labels: the model's class labels (class_id = index), called once the Accept is
            negotiated; it may wait for the model to load.

    Raises:
        RequestEntityTooLarge: the body is over the limit (413).
        UnsupportedAcceptError: no answer type in Accept can carry the answer (406).
        ModelNotReadyError: from `labels`: the model is not loaded (503).
        BadRequestError: a bad custom attribute (400; see `attributes.parse`).
    """
    body = _read_body(request)
    header = request.headers.get(attributes.HEADER)
    # any `explain` key asks for an explanation's answer type, even with a value refused below
    accept = negotiate_accept(request.headers.get("Accept"), explaining="explain" in attributes.pairs(header))
    asked = attributes.parse(header, labels())
    return InferenceRequest(body, request.headers.get("Content-Type"), accept, asked)
