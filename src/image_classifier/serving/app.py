"""The Flask app factory: `/ping`, `/invocations`, `/execution-parameters`, and one error boundary.

gunicorn runs `image_classifier.serving.app:create_app()`; tests pass a config mapping.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from image_classifier import sagemaker_env
from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.serving import codec
from image_classifier.serving.errors import InferenceError
from image_classifier.serving.holder import PredictorHolder
from image_classifier.serving.parser import discard_body, parse_request

logger = logging.getLogger(__name__)

bp = Blueprint("inference", __name__)


def _holder() -> PredictorHolder:
    return current_app.extensions["predictor"]


@bp.get("/ping")
def ping():
    """200 once the model is loaded (in this worker, or in another while this one loads);
    503 while the server loads or if the model failed to load."""
    holder = _holder()
    if holder.server_ready:
        return jsonify(status="ok")
    return jsonify(status="failed" if holder.error else "loading", error=holder.error), HTTPStatus.SERVICE_UNAVAILABLE


@bp.post("/invocations")
def invocations():
    """Parse the request, decode its body, predict (or explain), encode the answer (see the HTTP API)."""
    holder, config = _holder(), current_app.config
    # this worker may still be loading while another already answers /ping 200: wait for it
    asked = parse_request(request, lambda: holder.labels(config["LOAD_WAIT"]))
    inputs = codec.decode(asked.body, asked.content_type, config["MAX_IMAGE_PIXELS"])
    encode = codec.encoder(asked.accept, asked.explaining, inputs.batched)  # 406 before the work
    if asked.explaining:
        probabilities, explanations = holder.explain(inputs, asked.attributes.explain_class_id)
    else:
        # decoded in this request's thread; preprocessed and predicted in a batch with others
        probabilities, explanations = holder.predict(inputs), None
    return Response(encode(probabilities, holder.labels(), asked.attributes.top_k, explanations),
                    mimetype=asked.accept)


@bp.get("/execution-parameters")
def execution_parameters():
    """What SageMaker Batch Transform should send: one image per request, at most the payload limit,
    as many at once as the server takes (workers × threads), so that they are batched."""
    config = current_app.config
    return jsonify(sagemaker_env.execution_parameters(config["WORKERS"], config["THREADS"],
                                                      config["MAX_CONTENT_LENGTH"]))


def _inference_error(exc: InferenceError):
    if exc.status_code >= 500:
        logger.error("%s", exc.message)
    return jsonify(error=exc.message), exc.status_code


def _http_error(exc: HTTPException):
    """Werkzeug's HTTP errors as JSON, keeping their headers but the type (405's `Allow`,
    which RFC 9110 section 15.5.6 requires)."""
    response = jsonify(error=exc.description)
    response.headers.extend((name, value) for name, value in exc.get_headers()
                            if name.lower() != "content-type")
    return response, exc.code


def _too_large(exc: RequestEntityTooLarge):
    """413, after the rest of the body is read and discarded (within `parser.discard_body`'s
    bounds), so that a client still sending it reads the answer."""
    discard_body(request.environ)
    return _http_error(exc)


def _unexpected_error(exc: Exception):
    logger.exception("unexpected error on %s %s", request.method, request.path)
    return jsonify(error="internal server error"), HTTPStatus.INTERNAL_SERVER_ERROR


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Create and configure the model server app; the model starts loading at once.

    Config keys: MODEL_DIR (the model artifacts), MAX_CONTENT_LENGTH (bytes), MAX_IMAGE_PIXELS
    (pixels, None = Pillow's), WORKERS and THREADS (for /execution-parameters), LOAD_IN_BACKGROUND,
    PRECISION (fp32, bf16 or int8: `runtime.PRECISIONS`), LOAD_WAIT (seconds a request
    waits for a model still loading before its 503; default half the worker timeout),
    MAX_BATCH (images in one batched forward pass), PREDICTOR_LOADER (`PredictorHolder`'s `loader`;
    default `Predictor.load`).
    Defaults come from the SageMaker environment.
    """
    env = SageMakerEnv.from_environ()
    app = Flask(__name__)
    server = env.server
    app.config.from_mapping(
        MODEL_DIR=env.model_dir, MAX_CONTENT_LENGTH=server.max_payload_bytes,
        MAX_IMAGE_PIXELS=server.max_image_pixels, WORKERS=server.model_server_workers,
        THREADS=server.model_server_threads, LOAD_IN_BACKGROUND=True,
        PRECISION=server.precision, LOAD_WAIT=server.model_server_timeout / 2, MAX_BATCH=server.max_batch)
    app.config.update(config or {})
    app.extensions["predictor"] = PredictorHolder(Path(app.config["MODEL_DIR"]), app.config["LOAD_IN_BACKGROUND"],
                                                  app.config["PRECISION"], app.config["MAX_BATCH"],
                                                  loader=app.config.get("PREDICTOR_LOADER"))
    app.register_blueprint(bp)
    app.register_error_handler(InferenceError, _inference_error)
    app.register_error_handler(RequestEntityTooLarge, _too_large)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app
