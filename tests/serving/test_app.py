"""The Flask model server through its test client: routes, content types, Accept, errors."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from image_classifier.datasets import DIGIT_NAMES
from image_classifier.images import open_image
from image_classifier.serving.app import create_app
from image_classifier.serving.codec import Inputs
from image_classifier.serving.predictor import Predictor
from image_classifier.transforms import eval_transform
from tests.serving.images import (
    big_png,
    china_jpeg,
    encode,
    exif_rotated_jpeg,
    instances,
    invocation_headers,
    load_npy,
    npy,
    photo,
    random_batch,
    raw_rgb,
    truncated_jpeg,
    variants,
)

NUM_CLASSES = len(DIGIT_NAMES)
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/serving/conftest.py, with `app` and `client`


def post(client, body: bytes, content_type: str | None = "image/jpeg", accept: str | None = None,
         top_k: str | None = None, **kwargs):
    return client.post("/invocations", data=body, headers=invocation_headers(content_type, accept, top_k), **kwargs)


def probabilities(client, body: bytes, content_type: str = "image/jpeg") -> np.ndarray:
    response = post(client, body, content_type, accept="application/x-npy")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/x-npy"
    return load_npy(response.get_data())


def check_top_k(predictions: list[dict], k: int):
    assert len(predictions) == k
    for p in predictions:
        assert set(p) == {"label", "class_id", "probability"}
        assert 0 <= p["class_id"] < NUM_CLASSES and p["label"] == DIGIT_NAMES[p["class_id"]]
        assert 0.0 < p["probability"] < 1.0
    assert len({p["class_id"] for p in predictions}) == k
    values = [p["probability"] for p in predictions]
    assert values == sorted(values, reverse=True)


def check_json_matches_npy(predictions: list[dict], row: np.ndarray):
    """The JSON top-k are the largest entries of the npy row, with the same values."""
    assert [p["class_id"] for p in predictions] == list(np.argsort(-row, kind="stable")[:len(predictions)])
    for p in predictions:
        assert np.float32(p["probability"]) == row[p["class_id"]]


def check_error(response, status: int, words: str = "") -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_data(as_text=True)
    assert "Traceback" not in body and 'File "' not in body
    document = json.loads(body)
    assert list(document) == ["error"] and isinstance(document["error"], str) and document["error"]
    assert words in document["error"]
    return document["error"]


# --- /ping -----------------------------------------------------------------------------

def test_ping_ok_once_loaded(client):
    response = client.get("/ping")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_ping_503_when_the_model_dir_is_empty(tmp_path):
    client = create_app({"TESTING": True, "MODEL_DIR": tmp_path, "LOAD_IN_BACKGROUND": False}).test_client()
    started = time.monotonic()
    response = client.get("/ping")
    assert time.monotonic() - started < 2
    assert response.status_code == 503
    assert response.get_json()["status"] == "failed" and "model_config.json" in response.get_json()["error"]
    check_error(post(client, china_jpeg()), 503, "model failed to load")


@pytest.fixture
def slow_loading(monkeypatch) -> threading.Event:
    """Predictor.load blocks until the returned event is set."""
    release = threading.Event()
    load = Predictor.load

    def slow_load(model_dir, *args):
        assert release.wait(30)
        return load(model_dir, *args)

    monkeypatch.setattr(Predictor, "load", slow_load)
    return release


def test_ping_503_while_loading_then_200(model_dir, slow_loading):
    release = slow_loading
    app = create_app({"TESTING": True, "MODEL_DIR": model_dir, "LOAD_IN_BACKGROUND": True, "LOAD_WAIT": 0.2})
    client = app.test_client()
    try:
        for _ in range(3):
            started = time.monotonic()
            response = client.get("/ping")
            assert time.monotonic() - started < 2
            assert response.status_code == 503 and response.get_json()["status"] == "loading"
        check_error(post(client, china_jpeg()), 503, "loading")
    finally:
        release.set()
    assert app.extensions["predictor"].wait(30)
    assert client.get("/ping").status_code == 200
    assert post(client, china_jpeg()).status_code == 200


def test_a_request_to_a_loading_worker_waits_for_its_model(model_dir, slow_loading):
    """Another worker may already answer /ping 200: a request this one gets while it loads waits (LOAD_WAIT)."""
    release = slow_loading
    app = create_app({"TESTING": True, "MODEL_DIR": model_dir, "LOAD_IN_BACKGROUND": True, "LOAD_WAIT": 30})
    threading.Timer(0.5, release.set).start()
    started = time.monotonic()
    response = post(app.test_client(), china_jpeg())
    assert response.status_code == 200 and time.monotonic() - started >= 0.5


# --- /invocations: inputs --------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(variants()))
def test_every_image_kind(client, name):
    content_type = {"jpeg": "image/jpeg", "png-rgb": "image/png"}.get(name, "application/x-image")
    response = post(client, variants()[name], content_type)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    check_top_k(response.get_json()["predictions"], 5)


def test_image_prediction_is_the_model_on_the_preprocessed_image(app, client):
    predictor = app.extensions["predictor"].predictor
    tensor = eval_transform(32)(raw_rgb(china_jpeg()))
    with torch.inference_mode():
        expected = torch.softmax(predictor.model(tensor[None]), dim=1).numpy()
    np.testing.assert_allclose(probabilities(client, china_jpeg()), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("content_type", ["Image/JPEG", "image/jpeg; charset=x", "application/x-image",
                                          "APPLICATION/X-IMAGE; foo=bar", "image/png",
                                          "application/octet-stream"])
def test_content_type_parameters_and_case_are_ignored(client, content_type):
    """(application/octet-stream: what the SageMaker SDK's default Predictor sends bytes as.)"""
    expected = probabilities(client, china_jpeg(), "image/jpeg")
    np.testing.assert_array_equal(probabilities(client, china_jpeg(), content_type), expected)


def test_npy_input_equals_the_image_it_was_made_from(client):
    tensor = eval_transform(32)(open_image(china_jpeg())).numpy()
    from_npy = probabilities(client, npy(tensor), "application/x-npy")
    np.testing.assert_allclose(from_npy, probabilities(client, china_jpeg()), rtol=1e-5, atol=1e-7)
    batch = probabilities(client, npy(np.stack([tensor, tensor])), "application/x-npy")
    assert batch.shape == (2, NUM_CLASSES)
    np.testing.assert_allclose(batch, np.concatenate([from_npy, from_npy]), rtol=1e-5, atol=1e-7)


def test_json_instances_equal_single_images(client):
    bodies = [china_jpeg(), variants()["png-rgb"], variants()["gif"]]
    response = post(client, instances(*bodies), "application/json", accept="application/x-npy")
    assert response.status_code == 200
    batch = load_npy(response.get_data())
    assert batch.shape == (3, NUM_CLASSES)
    content_types = ["image/jpeg", "image/png", "application/x-image"]
    for row, body, content_type in zip(batch, bodies, content_types):
        np.testing.assert_allclose(row, probabilities(client, body, content_type)[0], rtol=1e-5, atol=1e-7)
    assert not np.allclose(batch[0], batch[1])


def test_exif_rotated_jpeg_predicts_as_the_physically_rotated_image(client):
    img = photo((120, 60))
    body = exif_rotated_jpeg(img, 6)
    rotated = raw_rgb(body).transpose(Image.Transpose.ROTATE_270)  # the same pixels, turned by hand
    as_sent = probabilities(client, body)
    np.testing.assert_allclose(as_sent, probabilities(client, encode(rotated, "PNG"), "image/png"),
                               rtol=1e-5, atol=1e-7)
    unrotated = probabilities(client, encode(raw_rgb(body), "PNG"), "image/png")
    assert not np.allclose(as_sent, unrotated, rtol=1e-4, atol=1e-6)


def test_predictor_honours_exif_orientation_exactly(app):
    predictor = app.extensions["predictor"].predictor
    body = exif_rotated_jpeg(photo((120, 60)), 6)
    rotated = raw_rgb(body).transpose(Image.Transpose.ROTATE_270)
    got = predictor.predict(Inputs(images=[open_image(body)]))
    np.testing.assert_array_equal(got, predictor.predict(Inputs(images=[rotated])))
    assert not np.array_equal(got, predictor.predict(Inputs(images=[raw_rgb(body)])))


# --- /invocations: outputs -------------------------------------------------------------

@pytest.mark.parametrize("accept", [None, "", "*/*", "application/json", "application/json; charset=utf-8",
                                    "Application/JSON", "text/html, */*;q=0.5",
                                    "application/x-npy;q=0.2, application/json"])
def test_accept_json(client, accept):
    response = post(client, china_jpeg(), accept=accept)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    predictions = response.get_json()["predictions"]
    check_top_k(predictions, 5)
    check_json_matches_npy(predictions, probabilities(client, china_jpeg())[0])


@pytest.mark.parametrize("accept", ["application/x-npy", "application/x-npy; q=1", "APPLICATION/X-NPY",
                                    "application/json;q=0.1, application/x-npy"])
def test_accept_npy(client, accept):
    response = post(client, china_jpeg(), accept=accept)
    assert response.status_code == 200 and response.mimetype == "application/x-npy"
    array = load_npy(response.get_data())
    assert array.dtype == np.float32 and array.shape == (1, NUM_CLASSES)
    np.testing.assert_allclose(array.sum(axis=1), 1.0, rtol=1e-5)
    assert (array > 0).all()


@pytest.mark.parametrize("n", [1, 3])
def test_npy_batch(client, n):
    batch = random_batch(n, seed=n)
    response = post(client, npy(batch), "application/x-npy")
    assert response.status_code == 200
    lists = response.get_json()["predictions"]
    assert len(lists) == n and all(isinstance(predictions, list) for predictions in lists)
    array = probabilities(client, npy(batch), "application/x-npy")
    assert array.shape == (n, NUM_CLASSES)
    np.testing.assert_allclose(array.sum(axis=1), 1.0, rtol=1e-5)
    for predictions, row in zip(lists, array):
        check_top_k(predictions, 5)
        check_json_matches_npy(predictions, row)


def test_npy_single_array_answers_one_list(client):
    response = post(client, npy(random_batch(None)), "application/x-npy")
    assert response.status_code == 200
    predictions = response.get_json()["predictions"]
    check_top_k(predictions, 5)


def test_json_instances_answer_one_list_per_image(client):
    response = post(client, instances(china_jpeg(), variants()["tiff"]), "application/json", top_k="top_k=2")
    assert response.status_code == 200
    lists = response.get_json()["predictions"]
    assert len(lists) == 2
    for predictions in lists:
        check_top_k(predictions, 2)
    single = post(client, instances(china_jpeg()), "application/json").get_json()["predictions"]
    assert len(single) == 1
    assert [p["class_id"] for p in single[0][:2]] == [p["class_id"] for p in lists[0]]
    np.testing.assert_allclose([p["probability"] for p in single[0][:2]], [p["probability"] for p in lists[0]],
                               rtol=1e-5)


@pytest.mark.parametrize("header, k", [(None, 5), ("top_k=3", 3), ("top_k=1", 1), ("top_k=10", 10),
                                       ("top_k=100", 10), ("TOP_K = 4", 4), ("foo=bar,top_k=2", 2),
                                       ("a=1;top_k=6;b=2", 6), ("foo=bar", 5), ("", 5)])
def test_top_k(client, header, k):
    response = post(client, china_jpeg(), top_k=header)
    assert response.status_code == 200
    predictions = response.get_json()["predictions"]
    check_top_k(predictions, k)
    check_json_matches_npy(predictions, probabilities(client, china_jpeg())[0])


def test_top_k_does_not_cut_npy(client):
    response = post(client, china_jpeg(), accept="application/x-npy", top_k="top_k=2")
    assert load_npy(response.get_data()).shape == (1, NUM_CLASSES)


# --- /execution-parameters -------------------------------------------------------------

def test_execution_parameters(client, app):
    response = client.get("/execution-parameters")
    assert response.status_code == 200
    assert app.config["WORKERS"] * app.config["THREADS"] > 1
    assert response.get_json() == {"MaxConcurrentTransforms": app.config["WORKERS"] * app.config["THREADS"],
                                   "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 6}


def test_environment_sets_the_limits(model_dir, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "2.5")
    monkeypatch.setenv("MODEL_SERVER_WORKERS", "3")
    monkeypatch.setenv("MODEL_SERVER_THREADS", "4")
    monkeypatch.setenv("MODEL_SERVER_MAX_IMAGE_PIXELS", "5000")
    app = create_app({"TESTING": True, "MODEL_DIR": model_dir, "LOAD_IN_BACKGROUND": False})
    assert app.config["MAX_CONTENT_LENGTH"] == 2_500_000 and app.config["MAX_IMAGE_PIXELS"] == 5000
    client = app.test_client()
    assert client.get("/execution-parameters").get_json() == {
        "MaxConcurrentTransforms": 12, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 2}
    check_error(post(client, b"\0" * 2_500_001, "application/x-npy"), 413)
    check_error(post(client, b"\0" * 2_499_999, "application/x-npy"), 400)
    check_error(post(client, big_png(100, 51), "image/png"), 400, "limit")
    assert post(client, big_png(100, 50), "image/png").status_code == 200


# --- errors ----------------------------------------------------------------------------

ERRORS = [
    # content type, accept, top_k header, body, status, words of the message
    ("text/csv", None, None, b"1,2,3", 415, "Content-Type"),
    ("image/gif", None, None, variants()["gif"], 415, "image/gif"),
    (None, None, None, china_jpeg(), 415, "Content-Type"),
    ("image/jpeg", "text/csv", None, china_jpeg(), 406, "Accept"),
    ("image/jpeg", "image/jpeg", None, china_jpeg(), 406, "Accept"),
    ("image/jpeg", "application/xml, text/*", None, china_jpeg(), 406, "Accept"),
    ("image/jpeg", None, None, b"", 400, "empty"),
    ("application/x-npy", None, None, b"", 400, "empty"),
    ("application/json", None, None, b"", 400, "empty"),
    ("image/jpeg", None, None, b"GIF89a but not really", 400, "image"),
    ("application/x-image", None, None, b"\x00" * 1000, 400, "image"),
    ("image/jpeg", None, None, truncated_jpeg(), 400, "truncated"),
    ("application/x-npy", None, None, npy(random_batch(None, dtype=np.float64)), 400, "float64"),
    ("application/x-npy", None, None, npy(np.zeros((4, 32, 32), np.float32)), 400, "shape"),
    ("application/x-npy", None, None, npy(np.zeros((32, 32), np.float32)), 400, "shape"),
    ("application/x-npy", None, None, npy(np.zeros((3, 16, 16), np.float32)), 400, "at least"),
    ("application/x-npy", None, None, npy(np.array([None], dtype=object), allow_pickle=True), 400, "pickled"),
    ("application/x-npy", None, None, npy(np.full((3, 32, 32), np.nan, np.float32)), 400, "NaN"),
    ("application/x-npy", None, None, b"\x93NUMPY garbage", 400, ""),
    ("application/json", None, None, b'{"instances": [{"b64": "%%%"}]}', 400, "base64"),
    ("application/json", None, None, b"{'instances': []}", 400, "JSON"),
    ("application/json", None, None, b"[" * 50_000 + b"]" * 50_000, 400, "JSON"),
    ("application/json", None, None, b'{"instances": [{"url": "http://x"}]}', 400, "instances[0]"),
    ("application/json", None, None, instances(china_jpeg(), b"junk"), 400, "instances[1]"),
    ("image/jpeg", None, "top_k=0", china_jpeg(), 400, "top_k"),
    ("image/jpeg", None, "top_k=-1", china_jpeg(), 400, "top_k"),
    ("image/jpeg", None, "top_k=abc", china_jpeg(), 400, "top_k"),
    ("image/jpeg", None, "top_k=2.5", china_jpeg(), 400, "top_k"),
    ("image/jpeg", None, "top_k=", china_jpeg(), 400, "top_k"),
    ("application/x-npy", "application/x-npy", "top_k=0", npy(random_batch(1)), 400, "top_k"),
]


@pytest.mark.parametrize("content_type, accept, top_k, body, status, words", ERRORS,
                         ids=[f"{i}-{row[4]}" for i, row in enumerate(ERRORS)])
def test_client_errors(client, content_type, accept, top_k, body, status, words):
    check_error(post(client, body, content_type, accept=accept, top_k=top_k), status, words)
    assert post(client, china_jpeg()).status_code == 200  # the app serves on


def test_pixel_limit_from_config(app, client, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_IMAGE_PIXELS", 10_000)
    check_error(post(client, big_png(200, 200), "image/png"), 400, "limit")
    check_error(post(client, instances(big_png(101, 100)), "application/json"), 400, "limit")
    assert post(client, big_png(100, 100), "image/png").status_code == 200


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_limit_default_is_pillows(client):
    check_error(post(client, big_png(10_000, 10_000, mode="1"), "application/x-image"), 400, "limit")


def test_payload_limit_default_is_6_mb(client):
    check_error(post(client, b"\0" * 6_000_001, "application/x-npy"), 413)
    check_error(post(client, b"\0" * 6_000_000, "application/x-npy"), 400)  # at the limit: read, not 413
    check_error(post(client, china_jpeg() + b"\0" * 6_000_000, "image/jpeg", top_k="top_k=3"), 413)


@pytest.mark.parametrize("megabytes, size, status", [("0.5", 500_001, 413), ("0.5", 499_000, 400),
                                                     ("1.25", 1_250_001, 413), ("1.25", 1_249_999, 400)])
def test_payload_limit_from_env_may_be_fractional(model_dir, monkeypatch, megabytes, size, status):
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", megabytes)
    client = create_app({"TESTING": True, "MODEL_DIR": model_dir, "LOAD_IN_BACKGROUND": False}).test_client()
    check_error(post(client, b"\xff" * size, "image/jpeg"), status)


@pytest.mark.parametrize("extra, status", [(1, 413), (0, 200)])
def test_payload_limit_holds_for_chunked_bodies(app, client, monkeypatch, extra, status):
    """A body without Content-Length (chunked) is refused too once it passes the limit."""
    body = npy(random_batch(1))
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", len(body))
    response = client.post("/invocations", input_stream=io.BytesIO(body + b"\0" * extra),
                           headers={"Content-Type": "application/x-npy", "Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == status, response.get_data(as_text=True)
    if status != 200:
        check_error(response, status)


@pytest.mark.parametrize("method, path, status", [("GET", "/nope", 404), ("POST", "/ping", 405),
                                                  ("GET", "/invocations", 405), ("GET", "/", 404),
                                                  ("PUT", "/execution-parameters", 405)])
def test_unknown_routes_answer_json(client, method, path, status):
    check_error(client.open(path, method=method), status)


@pytest.mark.parametrize("method, path, allowed", [("POST", "/ping", {"GET", "HEAD", "OPTIONS"}),
                                                   ("GET", "/invocations", {"POST", "OPTIONS"})])
def test_405_says_which_methods_are_allowed(client, method, path, allowed):
    """RFC 9110 section 15.5.6: a 405 carries `Allow`; the body stays the JSON error."""
    response = client.open(path, method=method)
    check_error(response, 405)
    assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed
    assert response.mimetype == "application/json"


def test_real_fault_is_500_without_details(app, client, monkeypatch):
    """A fault in the (batched) forward pass is a bare 500, and the batcher goes on."""
    batcher = app.extensions["predictor"].batcher

    def broken(batch):
        raise RuntimeError("secret internals /opt/ml/model")

    monkeypatch.setattr(batcher, "forward", broken)
    message = check_error(post(client, china_jpeg()), 500)
    assert "secret" not in message and "RuntimeError" not in message
    monkeypatch.undo()
    assert post(client, china_jpeg()).status_code == 200
