"""A real gunicorn model server (`python -m image_classifier.serve`) in a subprocess, over HTTP."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from image_classifier import cli, client
from image_classifier.datasets import DIGIT_NAMES
from image_classifier.images import open_image
from image_classifier.transforms import eval_transform
from tests.serving.images import (
    big_png,
    china_jpeg,
    china_path,
    encode,
    exif_rotated_jpeg,
    instances,
    invocation_headers,
    load_npy,
    npy,
    payload_file,
    photo,
    random_batch,
    raw_rgb,
    truncated_jpeg,
    variants,
)
from tests.serving.servers import STARTUP_TIMEOUT, Server, children, start, stop, wait_for_answer

pytestmark = pytest.mark.slow

NUM_CLASSES = len(DIGIT_NAMES)
WORKERS = 2
MAX_PAYLOAD_MB = 2.5          # fractional on purpose
MAX_PAYLOAD = 2_500_000
MAX_PIXELS = 1_000_000        # china.jpg has 273,280


@pytest.fixture(scope="module")
def empty_started(tmp_path_factory):
    """A server whose model dir is empty, started early so that it boots while `server` does."""
    base_dir = tmp_path_factory.mktemp("opt_ml_empty")
    (base_dir / "model").mkdir()
    process, url, log = start(base_dir, 1)
    try:
        yield process, url, log
    finally:
        if process.poll() is None:
            assert stop(process) < 30


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory, empty_started):
    base_dir = tmp_path_factory.mktemp("opt_ml")
    shutil.copytree(model_dir, base_dir / "model")
    process, url, log = start(base_dir, WORKERS, SAGEMAKER_MAX_PAYLOAD_IN_MB=str(MAX_PAYLOAD_MB),
                              MODEL_SERVER_MAX_IMAGE_PIXELS=str(MAX_PIXELS))
    try:
        workers = wait_for_answer(url, process, log, want=200, workers=WORKERS)
        yield Server(url, process, log, workers)
    finally:
        if process.poll() is None:
            seconds = stop(process)
            assert process.returncode == 0, log.read_text(errors="replace")[-3000:]
            assert seconds < 30


@pytest.fixture(scope="module")
def empty_server(empty_started):
    process, url, log = empty_started
    return Server(url, process, log, wait_for_answer(url, process, log, want=503, workers=1))


def post(server: Server, body, content_type: str | None = "image/jpeg", accept: str | None = None,
         top_k: str | None = None) -> requests.Response:
    return requests.post(f"{server.url}/invocations", data=body,
                         headers=invocation_headers(content_type, accept, top_k), timeout=30)


def media_type(response: requests.Response) -> str:
    return response.headers["Content-Type"].split(";")[0].strip()


def probabilities(server: Server, body: bytes, content_type: str = "image/jpeg") -> np.ndarray:
    response = post(server, body, content_type, accept="application/x-npy")
    assert response.status_code == 200, response.text
    assert media_type(response) == "application/x-npy"
    return load_npy(response.content)


def check_top_k(predictions: list[dict], k: int, row: np.ndarray | None = None):
    assert len(predictions) == k
    for p in predictions:
        assert set(p) == {"label", "class_id", "probability"}
        assert p["label"] == DIGIT_NAMES[p["class_id"]]
    values = [p["probability"] for p in predictions]
    assert values == sorted(values, reverse=True) and len({p["class_id"] for p in predictions}) == k
    if row is not None:
        np.testing.assert_allclose(values, np.sort(row)[::-1][:k], rtol=1e-5)
        np.testing.assert_allclose(values, row[[p["class_id"] for p in predictions]], rtol=1e-5)


def check_error(response: requests.Response, status: int, words: str = "") -> str:
    assert response.status_code == status, response.text
    assert media_type(response) == "application/json"
    assert "Traceback" not in response.text and 'File "' not in response.text
    document = response.json()
    assert list(document) == ["error"] and isinstance(document["error"], str) and document["error"]
    assert words in document["error"]
    return document["error"]


# --- the server up ---------------------------------------------------------------------

def test_ping(server):
    for _ in range(4):
        started = time.monotonic()
        response = requests.get(f"{server.url}/ping", timeout=5)
        assert time.monotonic() - started < 2
        assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_runs_the_configured_workers(server):
    assert len(server.workers) == WORKERS
    for pid in server.workers:
        assert "gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


def test_execution_parameters(server):
    response = requests.get(f"{server.url}/execution-parameters", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"MaxConcurrentTransforms": WORKERS * 8, "BatchStrategy": "SINGLE_RECORD",
                               "MaxPayloadInMB": int(MAX_PAYLOAD_MB)}


# --- inputs ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, content_type", [
    ("jpeg", "image/jpeg"), ("png-rgb", "image/png"), ("png-grayscale", "image/png"),
    ("png-rgba", "image/png"), ("png-palette", "application/x-image"), ("png-16bit", "image/png"),
    ("gif", "application/x-image"), ("tiff", "application/x-image"), ("jpeg-cmyk", "image/jpeg"),
    ("webp", "application/x-image"),
])
def test_image_kinds(server, name, content_type):
    response = post(server, variants()[name], content_type)
    assert response.status_code == 200, response.text
    assert media_type(response) == "application/json"
    check_top_k(response.json()["predictions"], 5)


def test_full_photo_matches_local_preprocessing(server):
    """The real photo through HTTP gives what the model gives on the locally preprocessed tensor."""
    tensor = eval_transform(32)(open_image(china_jpeg())).numpy()
    from_image = probabilities(server, china_jpeg())
    np.testing.assert_allclose(from_image, probabilities(server, npy(tensor), "application/x-npy"),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("content_type", ["Image/JPEG", "image/jpeg; charset=x", "application/x-image",
                                          "image/png"])
def test_content_type_parameters_and_case_are_ignored(server, content_type):
    np.testing.assert_allclose(probabilities(server, variants()["jpeg"], content_type),
                               probabilities(server, variants()["jpeg"]), rtol=1e-6)


def test_exif_rotated_jpeg(server):
    body = exif_rotated_jpeg(photo((120, 60)), 6)
    rotated = raw_rgb(body).transpose(Image.Transpose.ROTATE_270)
    as_sent = probabilities(server, body)
    np.testing.assert_allclose(as_sent, probabilities(server, encode(rotated, "PNG"), "image/png"),
                               rtol=1e-5, atol=1e-7)
    assert not np.allclose(as_sent, probabilities(server, encode(raw_rgb(body), "PNG"), "image/png"),
                           rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n", [None, 1, 3])
def test_npy(server, n):
    batch = random_batch(n, seed=5)
    array = probabilities(server, npy(batch), "application/x-npy")
    rows = 1 if n is None else n
    assert array.dtype == np.float32 and array.shape == (rows, NUM_CLASSES)
    np.testing.assert_allclose(array.sum(axis=1), 1.0, rtol=1e-5)
    response = post(server, npy(batch), "application/x-npy", top_k="top_k=4")
    assert response.status_code == 200
    lists = [response.json()["predictions"]] if n is None else response.json()["predictions"]
    assert len(lists) == rows
    for predictions, row in zip(lists, array):
        check_top_k(predictions, 4, row)


def test_json_instances(server):
    bodies = [variants()["jpeg"], variants()["png-rgb"], variants()["tiff"]]
    response = post(server, instances(*bodies), "application/json")
    assert response.status_code == 200
    lists = response.json()["predictions"]
    assert len(lists) == 3
    array = probabilities(server, instances(*bodies), "application/json; charset=utf-8")
    assert array.shape == (3, NUM_CLASSES)
    for predictions, row, body in zip(lists, array, bodies):
        check_top_k(predictions, 5, row)
        np.testing.assert_allclose(row, probabilities(server, body, "application/x-image")[0], rtol=1e-5)


# --- outputs ---------------------------------------------------------------------------

@pytest.mark.parametrize("accept, expected", [
    (None, "application/json"), ("*/*", "application/json"), ("application/json", "application/json"),
    ("application/json; charset=utf-8", "application/json"), ("application/x-npy", "application/x-npy"),
    ("application/json;q=0.5, application/x-npy", "application/x-npy"),
])
def test_accept(server, accept, expected):
    response = post(server, variants()["jpeg"], accept=accept)
    assert response.status_code == 200 and media_type(response) == expected
    row = probabilities(server, variants()["jpeg"])[0]
    if expected == "application/json":
        check_top_k(response.json()["predictions"], 5, row)
    else:
        np.testing.assert_allclose(load_npy(response.content)[0], row, rtol=1e-6)


@pytest.mark.parametrize("header, k", [(None, 5), ("top_k=3", 3), ("top_k=1", 1), ("top_k=99", NUM_CLASSES)])
def test_top_k(server, header, k):
    response = post(server, variants()["png-rgb"], "image/png", top_k=header)
    assert response.status_code == 200
    check_top_k(response.json()["predictions"], k, probabilities(server, variants()["png-rgb"], "image/png")[0])


def test_json_probabilities_equal_npy(server):
    body = variants()["png-rgb"]
    predictions = post(server, body, "image/png", top_k=f"top_k={NUM_CLASSES}").json()["predictions"]
    row = probabilities(server, body, "image/png")[0]
    for p in predictions:
        assert np.float32(p["probability"]) == row[p["class_id"]]


# --- errors ----------------------------------------------------------------------------

def _chunks(total: int, size: int = 64 * 1024):
    sent = 0
    while sent < total:
        chunk = b"\0" * min(size, total - sent)
        sent += len(chunk)
        yield chunk


ERRORS = [
    # content type, accept, top_k header, body, status, words of the message
    ("text/csv", None, None, b"1,2,3", 415, "Content-Type"),
    (None, None, None, b"\xff\xd8", 415, "Content-Type"),
    ("image/jpeg", "text/csv", None, variants()["jpeg"], 406, "Accept"),
    ("image/jpeg", "image/*", None, variants()["jpeg"], 406, "Accept"),
    ("image/jpeg", None, None, b"", 400, "empty"),
    ("image/jpeg", None, None, b"not an image at all", 400, "image"),
    ("image/jpeg", None, None, truncated_jpeg(), 400, "truncated"),
    ("application/x-npy", None, None, npy(random_batch(None, dtype=np.float64)), 400, "float64"),
    ("application/x-npy", None, None, npy(np.zeros((4, 32, 32), np.float32)), 400, "shape"),
    ("application/x-npy", None, None, npy(np.zeros((32, 32), np.float32)), 400, "shape"),
    ("application/x-npy", None, None, npy(np.array([{"x": 1}], dtype=object), allow_pickle=True), 400, "pickled"),
    ("application/x-npy", None, None, npy(np.full((1, 3, 32, 32), np.nan, np.float32)), 400, "NaN"),
    ("application/json", None, None, b'{"instances": [{"b64": "@@@"}]}', 400, "base64"),
    ("application/json", None, None, b"{nope", 400, "JSON"),
    ("application/json", None, None, b"[" * 100_000, 400, "JSON"),
    ("application/json", None, None, instances(variants()["jpeg"], b"junk"), 400, "instances[1]"),
    ("image/png", None, None, big_png(1001, 1000), 400, "limit"),
    ("application/json", None, None, instances(big_png(1000, 1001)), 400, "limit"),
    ("image/jpeg", None, "top_k=0", variants()["jpeg"], 400, "top_k"),
    ("image/jpeg", None, "top_k=-1", variants()["jpeg"], 400, "top_k"),
    ("image/jpeg", None, "top_k=abc", variants()["jpeg"], 400, "top_k"),
    ("application/x-npy", None, None, b"\0" * (MAX_PAYLOAD + 1), 413, ""),
    ("image/jpeg", None, None, china_jpeg() + b"\0" * MAX_PAYLOAD, 413, ""),
    ("image/jpeg", None, None, "chunked-over", 413, ""),
]


@pytest.mark.parametrize("content_type, accept, top_k, body, status, words", ERRORS,
                         ids=[f"{i}-{row[4]}" for i, row in enumerate(ERRORS)])
def test_client_errors(server, content_type, accept, top_k, body, status, words):
    if body == "chunked-over":  # no Content-Length: requests sends a generator chunked
        body = _chunks(MAX_PAYLOAD + 100_000)
    check_error(post(server, body, content_type, accept=accept, top_k=top_k), status, words)


@pytest.mark.parametrize("size", [MAX_PAYLOAD + 1, 3 * MAX_PAYLOAD])
def test_a_client_that_sends_all_before_reading_gets_the_413(server, size):
    """Python's urllib writes the whole body before it reads: the server reads and discards the
    rest of a body over the limit (up to its bounds) before it answers, so the 413 and its JSON
    arrive instead of "Broken pipe"; the connection is then closed."""
    request = urllib.request.Request(f"{server.url}/invocations", data=b"\0" * size, method="POST",
                                     headers={"Content-Type": "application/x-npy"})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=60)
    assert raised.value.code == 413
    assert raised.value.headers["Connection"] == "close"
    assert list(json.loads(raised.value.read())) == ["error"]


def test_payload_at_the_limit_is_read(server):
    check_error(post(server, b"\0" * MAX_PAYLOAD, "application/x-npy"), 400)
    check_error(post(server, _chunks(MAX_PAYLOAD), "application/x-npy"), 400)


def test_big_image_under_the_limits(server):
    body = encode(Image.open(china_path()).resize((1000, 1000)), "PNG")  # a megapixel, ~1.5 MB
    assert 1_000_000 < len(body) < MAX_PAYLOAD
    response = post(server, body, "image/png")
    assert response.status_code == 200, response.text
    check_top_k(response.json()["predictions"], 5)


@pytest.mark.parametrize("method, path, status", [("GET", "/nope", 404), ("GET", "/invocations", 405),
                                                  ("POST", "/ping", 405)])
def test_unknown_routes(server, method, path, status):
    check_error(requests.request(method, f"{server.url}{path}", timeout=10), status)


# --- the CLI against the server --------------------------------------------------------

def test_cli_predict(server, capsys):
    assert cli.main(["predict", str(china_path()), "--url", server.url, "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split() == ["rank", "label", "class_id", "probability"]
    predictions = client.predict(server.url, china_path(), top_k=3)
    assert lines[1:] == client.format_predictions(predictions).splitlines()[1:]
    assert [line.split()[1] for line in lines[1:]] == [p["label"] for p in predictions]


def test_cli_predict_a_batch_file(server, tmp_path, capsys):
    path = tmp_path / "batch.npy"
    path.write_bytes(npy(random_batch(2)))
    assert cli.main(["predict", str(path), "--url", server.url, "--top-k", "2"]) == 0
    tables = capsys.readouterr().out.strip().split("\n\n")
    assert len(tables) == 2 and all(len(table.splitlines()) == 3 for table in tables)


@pytest.mark.parametrize("name, body, args, words", [
    ("notes.txt", b"just text", [], "body is not a readable image"),
    ("bad.npy", npy(np.zeros((4, 32, 32), np.float32)), [], "array shape must be"),
    ("photo.jpg", None, ["--top-k", "0"], "top_k must be a positive integer"),
])
def test_cli_predict_reports_the_server_error(server, tmp_path, capsys, name, body, args, words):
    path = payload_file(tmp_path, name, body)
    assert cli.main(["predict", str(path), "--url", server.url, *args]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: 400 from ") and words in captured.err
    with pytest.raises(RuntimeError, match=words):
        client.predict(server.url, path, top_k=int(args[1]) if args else 5)


# --- after all of the above ------------------------------------------------------------

def test_workers_survived_every_error(server):
    """Same worker pids as at start-up (no crash, no restart), all answering, no traceback logged."""
    assert server.process.poll() is None
    for _ in range(8):
        response = requests.get(f"{server.url}/ping", timeout=5)
        assert response.status_code == 200
    assert post(server, variants()["jpeg"]).status_code == 200
    assert children(server.process.pid) == server.workers
    log = server.log_text()
    assert "Traceback" not in log and "WORKER TIMEOUT" not in log and "Worker exiting" not in log
    assert log.count("POST /invocations") > 50


# --- a server whose model cannot load --------------------------------------------------

def test_empty_model_dir_ping_503_quickly(empty_server):
    for _ in range(5):
        started = time.monotonic()
        response = requests.get(f"{empty_server.url}/ping", timeout=5)
        assert time.monotonic() - started < 2
        assert response.status_code == 503
        assert response.json()["status"] == "failed"


def test_empty_model_dir_invocations_503_json(empty_server):
    message = check_error(post(empty_server, variants()["jpeg"]), 503, "model failed to load")
    assert "model_config.json" in message
    assert requests.get(f"{empty_server.url}/execution-parameters", timeout=5).json()["MaxConcurrentTransforms"] == 8
    assert empty_server.process.poll() is None and children(empty_server.process.pid) == empty_server.workers


def test_sigterm_stops_the_server(empty_server):
    seconds = stop(empty_server.process)
    assert empty_server.process.returncode == 0 and seconds < 30
    assert "Shutting down" in empty_server.log_text()


def test_ping_answers_within_2_s_from_boot(model_dir, tmp_path):
    """While a worker boots and loads the model, every /ping gets 503 or 200 within 2 s."""
    shutil.copytree(model_dir, tmp_path / "model")
    process, url, log = start(tmp_path, 1)
    statuses = []
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not statuses or statuses[-1] != 200:
            assert time.monotonic() < deadline and process.poll() is None, log.read_text(errors="replace")
            try:
                statuses.append(requests.get(f"{url}/ping", timeout=2).status_code)
            except requests.ConnectionError:  # not listening yet (a timeout is a failure)
                assert not statuses, "refused after it had answered"
                time.sleep(0.05)
    finally:
        stop(process)
    assert set(statuses) <= {503, 200}
