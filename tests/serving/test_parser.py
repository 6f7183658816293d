"""The request parser (`serving.parser`): Accept negotiation, and the order of a request's checks."""

from __future__ import annotations

import dataclasses
from importlib import resources

import pytest
import yaml
from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge

from image_classifier.serving import parser
from image_classifier.serving.attributes import HEADER, Attributes
from image_classifier.serving.errors import BadRequestError, ModelNotReadyError, UnsupportedAcceptError

LABELS = ["zero", "one", "two"]


@pytest.mark.parametrize("header, explaining, expected", [
    (None, False, "application/json"),
    ("", False, "application/json"),    # an empty Accept: JSON, as none (openapi.yaml, RFC 9110 §12.5.1)
    ("", True, "application/json"),
    ("  ", True, "application/json"),
    ("*/*", False, "application/json"),
    ("*/*", True, "application/json"),
    ("application/x-npy", False, "application/x-npy"),
    ("APPLICATION/X-NPY; q=1", False, "application/x-npy"),
    ("image/png", True, "image/png"),
    ("image/*", True, "image/png"),
    ("application/x-npy;q=0.5, image/png", True, "image/png"),
    ("application/x-npy;q=0.5, image/png", False, "application/x-npy"),
    ("image/png;q=0.1, application/json;q=0.2", True, "application/json"),
    ("application/json; charset=utf-8", True, "application/json"),
])
def test_negotiate_accept(header, explaining, expected):
    assert parser.negotiate_accept(header, explaining) == expected


@pytest.mark.parametrize("header, explaining, message", [
    ("text/csv", False, ("unsupported Accept 'text/csv'; supported: application/json, application/x-npy; "
                         f"image/png with explain=gradcam in {HEADER}")),
    ("image/png", False, ("unsupported Accept 'image/png'; supported: application/json, application/x-npy; "
                          f"image/png with explain=gradcam in {HEADER}")),
    ("application/x-npy", True, ("unsupported Accept 'application/x-npy': "
                                 "an explanation is answered as application/json or image/png")),
])
def test_negotiate_accept_refuses(header, explaining, message):
    with pytest.raises(UnsupportedAcceptError) as info:
        parser.negotiate_accept(header, explaining)
    assert info.value.status_code == 406 and info.value.message == message


def test_every_accept_the_description_lists_is_answered():
    """openapi.yaml's Accept values: each one answered with or without explanations, as it says."""
    description = yaml.safe_load(resources.files("image_classifier.serving").joinpath("openapi.yaml").read_text())
    accept, = [parameter for parameter in description["paths"]["/invocations"]["post"]["parameters"]
               if parameter["name"] == "Accept"]
    answered = {value: [explaining for explaining in (False, True) if _answers(value, explaining)]
                for value in accept["schema"]["enum"]}
    assert answered == {"application/json": [False, True], "*/*": [False, True], "": [False, True],
                        "application/x-npy": [False], "image/png": [True]}


def _answers(header: str, explaining: bool) -> bool:
    try:
        parser.negotiate_accept(header, explaining)
    except UnsupportedAcceptError:
        return False
    return True


def _parse(headers: dict[str, str], body: bytes = b"body", labels=lambda: LABELS, limit: int | None = None):
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = limit
    with app.test_request_context("/invocations", method="POST", data=body, headers=headers):
        return parser.parse_request(request, labels)


def test_parse_request():
    asked = _parse({"Content-Type": "image/jpeg", "Accept": "image/png", HEADER: "explain=gradcam,top_k=9"})
    assert asked == parser.InferenceRequest(b"body", "image/jpeg", "image/png", Attributes(3, "gradcam", None))
    assert asked.explaining
    assert not _parse({}).explaining
    with pytest.raises(dataclasses.FrozenInstanceError):
        asked.accept = "application/json"


def _not_loaded():
    raise ModelNotReadyError("model is loading")


@pytest.mark.parametrize("headers, body, limit, error", [
    # the body over the limit first, then the Accept, then the model, then the attributes
    ({"Accept": "text/csv", HEADER: "top_k=0"}, b"x" * 11, 10, RequestEntityTooLarge),
    ({"Accept": "text/csv", HEADER: "top_k=0"}, b"x", 10, UnsupportedAcceptError),
    ({"Accept": "application/x-npy", HEADER: "explain=nope"}, b"x", None, UnsupportedAcceptError),
    ({HEADER: "top_k=0"}, b"x", None, ModelNotReadyError),
])
def test_parse_request_checks_in_order(headers, body, limit, error):
    with pytest.raises(error):
        _parse(headers, body, _not_loaded, limit)


def test_parse_request_checks_the_attributes_against_the_labels_once():
    calls = []
    with pytest.raises(BadRequestError, match="explain_class_id"):
        _parse({HEADER: "explain=gradcam,explain_class_id=3"}, labels=lambda: calls.append(1) or LABELS)
    assert calls == [1]
