"""Errors a request can cause, each with its HTTP status; `app.py` turns them into JSON."""

from http import HTTPStatus


class InferenceError(Exception):
    """A request the server cannot serve, answered with `status_code` and `message`."""

    status_code = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequestError(InferenceError):
    """400: an empty, undecodable or ill-shaped body, or a bad request attribute."""

    status_code = HTTPStatus.BAD_REQUEST


class InvalidImageError(BadRequestError):
    """400: the body is not an image Pillow can decode, or is over the pixel limit."""


class UnsupportedContentTypeError(InferenceError):
    """415: no decoder for the request's Content-Type."""

    status_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class UnsupportedAcceptError(InferenceError):
    """406: no encoder for any type in the request's Accept."""

    status_code = HTTPStatus.NOT_ACCEPTABLE


class ModelNotReadyError(InferenceError):
    """503: the model has not finished loading (or failed to load)."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
