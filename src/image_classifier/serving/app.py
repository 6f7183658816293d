"""The Flask app factory: `/ping`, `/invocations`, `/execution-parameters`, and one error boundary.

gunicorn runs `image_classifier.serving.app:create_app()`; tests pass a config mapping.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from pathlib import Path
from typing import Any, Mapping

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.datastructures import MIMEAccept
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from image_classifier import sagemaker_env
from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.serving import attributes, codec, content_types
from image_classifier.serving.errors import InferenceError, UnsupportedAcceptError
from image_classifier.serving.holder import PredictorHolder

logger = logging.getLogger(__name__)

bp = Blueprint("inference", __name__)


def _holder() -> PredictorHolder:
    return current_app.extensions["predictor"]


def negotiate_accept(header: str | None, explaining: bool = False) -> str:
    """The response type for an Accept header; missing or `*/*` means JSON. With an explanation:
    JSON or PNG (the overlay); without: JSON or NPY.

    Raises:
        UnsupportedAcceptError: nothing in the header can be produced (406).
    """
    if not header or not header.strip():
        return content_types.JSON
    # media-type parameters (`application/json; charset=utf-8`) are ignored, as in Content-Type
    offered = MIMEAccept([(content_types.base_type(value), q) for value, q in request.accept_mimetypes])
    if explaining:
        best = offered.best_match(codec.EXPLANATION_TYPES)
        if best is None:
            raise UnsupportedAcceptError(f"unsupported Accept {header!r}: {codec.EXPLANATION_TYPES_MESSAGE}")
        return best
    best = offered.best_match([content_types.JSON, content_types.NPY])
    if best is None:
        raise UnsupportedAcceptError(f"unsupported Accept {header!r}; supported: {content_types.JSON}, "
                                     f"{content_types.NPY}; {content_types.PNG} with explain=gradcam "
                                     f"in {attributes.HEADER}")
    return best


@bp.get("/ping")
def ping():
    """200 once the model is loaded (in this worker, or in another while this one loads);
    503 while the server loads or if the model failed to load."""
    holder = _holder()
    if holder.server_ready:
        return jsonify(status="ok")
    return jsonify(status="failed" if holder.error else "loading", error=holder.error), HTTPStatus.SERVICE_UNAVAILABLE


def _request_body() -> bytes:
    """The request body. Raises: RequestEntityTooLarge: over MAX_CONTENT_LENGTH (413)."""
    body = request.get_data(cache=False)  # 413 if the Content-Length is over the limit
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if (request.content_length is None and limit is not None and len(body) >= limit
            and request.environ.get("wsgi.input_terminated") and request.environ["wsgi.input"].read(1)):
        raise RequestEntityTooLarge()  # a chunked body: werkzeug stops at the limit without an error
    return body


@bp.post("/invocations")
def invocations():
    """Decode the body by Content-Type, predict (and explain), encode by Accept (see README, HTTP API)."""
    # The body first, whatever the answer: gunicorn closes a keep-alive connection silently when
    # a body over 64 kB is left unread, and the client's next request on it would fail.
    body = _request_body()
    header = request.headers.get(attributes.HEADER)
    accept = negotiate_accept(request.headers.get("Accept"), explaining="explain" in attributes.pairs(header))
    holder = _holder()
    # this worker may still be loading while another already answers /ping 200: wait for it
    predictor = holder.get(current_app.config["LOAD_WAIT"])
    asked = attributes.parse(header, predictor.spec.labels)
    inputs = codec.decode(body, request.headers.get("Content-Type"), current_app.config["MAX_IMAGE_PIXELS"])
    if asked.explain is None:
        # decoded in this request's thread; preprocessed and predicted in a batch with others
        probabilities, explanations = holder.batcher.predict(inputs), None
    else:
        if accept == content_types.PNG:
            codec.check_png(inputs.batched)
        probabilities, explanations = holder.explainer().explain(inputs, asked.explain_class_id)
    body = codec.encode(probabilities, inputs.batched, accept, predictor.spec.labels, asked.top_k, explanations)
    return Response(body, mimetype=accept)


@bp.get("/execution-parameters")
def execution_parameters():
    """What SageMaker Batch Transform should send: one image per request, at most the payload limit,
    as many at once as the server takes (workers × threads), so that they are batched."""
    config = current_app.config
    return jsonify(sagemaker_env.execution_parameters(config["WORKERS"], config["THREADS"], config["MAX_CONTENT_LENGTH"]))


def _inference_error(exc: InferenceError):
    if exc.status_code >= 500:
        logger.error("%s", exc.message)
    return jsonify(error=exc.message), exc.status_code


def _http_error(exc: HTTPException):
    return jsonify(error=exc.description), exc.code


def _unexpected_error(exc: Exception):
    logger.exception("unexpected error on %s %s", request.method, request.path)
    return jsonify(error="internal server error"), HTTPStatus.INTERNAL_SERVER_ERROR


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Create and configure the model server app; the model starts loading at once.

    Config keys: MODEL_DIR (the model artifacts), MAX_CONTENT_LENGTH (bytes), MAX_IMAGE_PIXELS
    (pixels, None = Pillow's), WORKERS and THREADS (for /execution-parameters), LOAD_IN_BACKGROUND,
    TORCHSCRIPT (serve the model optimised with TorchScript), LOAD_WAIT (seconds a request
    waits for a model still loading before its 503; default half the worker timeout),
    MAX_BATCH (images in one batched forward pass).
    Defaults come from the SageMaker environment.
    """
    env = SageMakerEnv.from_environ()
    app = Flask(__name__)
    app.config.from_mapping(
        MODEL_DIR=env.model_dir, MAX_CONTENT_LENGTH=env.max_payload_bytes,
        MAX_IMAGE_PIXELS=env.max_image_pixels, WORKERS=env.model_server_workers,
        THREADS=env.model_server_threads, LOAD_IN_BACKGROUND=True,
        TORCHSCRIPT=env.torchscript, LOAD_WAIT=env.model_server_timeout / 2, MAX_BATCH=env.max_batch)
    app.config.update(config or {})
    app.extensions["predictor"] = PredictorHolder(Path(app.config["MODEL_DIR"]), app.config["LOAD_IN_BACKGROUND"],
                                                  app.config["TORCHSCRIPT"], app.config["MAX_BATCH"])
    app.register_blueprint(bp)
    app.register_error_handler(InferenceError, _inference_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app
