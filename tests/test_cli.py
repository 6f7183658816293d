"""The `image-classifier` CLI: content types, the predictions table, `predict` against a live app."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from werkzeug.serving import make_server

from image_classifier import cli, client
from image_classifier.datasets import DIGIT_NAMES
from image_classifier.local import free_port
from image_classifier.serving.app import create_app
from tests.serving.images import china_path, encode, npy, payload_file, photo, random_batch


@pytest.mark.parametrize("name, expected", [
    ("photo.jpg", "image/jpeg"), ("PHOTO.JPG", "image/jpeg"), ("a.jpeg", "image/jpeg"), ("b.Jpeg", "image/jpeg"),
    ("c.png", "image/png"), ("d.PNG", "image/png"), ("batch.npy", "application/x-npy"),
    ("req.json", "application/json"), ("e.gif", "application/x-image"), ("f.tiff", "application/x-image"),
    ("g.webp", "application/x-image"), ("noext", "application/x-image"), ("dir.png/file", "application/x-image"),
    ("archive.tar.npy", "application/x-npy"),
])
def test_content_type_for(name, expected):
    assert client.content_type_for(Path(name)) == expected


@pytest.mark.parametrize("predictions", [
    [],
    [{"label": "zero", "class_id": 0, "probability": 0.5}],
    [{"label": "Yorkshire_terrier", "class_id": 132, "probability": 0.987654},
     {"label": "Norwich_terrier", "class_id": 99, "probability": 0.01},
     {"label": "x" * 40, "class_id": 1, "probability": 0.00004}],
])
def test_format_predictions(predictions):
    lines = client.format_predictions(predictions).splitlines()
    assert lines[0].split() == ["rank", "label", "class_id", "probability"]
    assert len(lines) == len(predictions) + 1
    for rank, (line, p) in enumerate(zip(lines[1:], predictions), 1):
        assert line.split() == [str(rank), p["label"], str(p["class_id"]), f"{p['probability']:.4f}"]
    widths = {len(line) for line in lines if len(line.split()[1]) <= 32}
    assert len(widths) == 1  # aligned columns


@pytest.fixture(scope="module")
def url(model_dir):
    """The model server app on a real local HTTP server (werkzeug's, in a thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    app = create_app({"TESTING": True, "MODEL_DIR": model_dir, "LOAD_IN_BACKGROUND": False,
                      "MAX_CONTENT_LENGTH": 6_000_000, "MAX_IMAGE_PIXELS": None})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)
    torch.set_num_threads(threads)


def _probabilities(url: str, path: Path) -> np.ndarray:
    response = requests.post(f"{url}/invocations", data=path.read_bytes(), timeout=30,
                             headers={"Content-Type": client.content_type_for(path), "Accept": "application/x-npy"})
    assert response.status_code == 200
    return np.load(io.BytesIO(response.content))


@pytest.mark.parametrize("top_k", [1, 3, 5, 10])
def test_predict(url, top_k):
    predictions = client.predict(url + "/", china_path(), top_k=top_k)
    row = _probabilities(url, china_path())[0]
    assert [p["class_id"] for p in predictions] == list(np.argsort(-row, kind="stable")[:top_k])
    assert [p["label"] for p in predictions] == [DIGIT_NAMES[p["class_id"]] for p in predictions]
    np.testing.assert_allclose([p["probability"] for p in predictions], row[[p["class_id"] for p in predictions]],
                               rtol=1e-6)


@pytest.mark.parametrize("suffix", [".png", ".gif", ".bmp", ".JPG"])
def test_main_predict_prints_the_table(url, tmp_path, capsys, suffix):
    path = tmp_path / f"photo{suffix}"
    path.write_bytes(encode(photo(), {".png": "PNG", ".gif": "GIF", ".bmp": "BMP", ".JPG": "JPEG"}[suffix]))
    assert cli.main(["predict", str(path), "--url", url, "--top-k", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.rstrip("\n") == client.format_predictions(client.predict(url, path, top_k=4))
    assert len(captured.out.strip().splitlines()) == 5


def test_main_predict_a_batch_prints_a_table_per_image(url, tmp_path, capsys):
    path = tmp_path / "batch.npy"
    path.write_bytes(npy(random_batch(3)))
    assert cli.main(["predict", str(path), "--url", url, "--top-k", "2"]) == 0
    tables = capsys.readouterr().out.strip().split("\n\n")
    assert len(tables) == 3
    for table, predictions in zip(tables, client.predict(url, path, top_k=2)):
        assert table == client.format_predictions(predictions)


@pytest.mark.parametrize("name, body, args, words", [
    ("notes.txt", b"plain text", [], "400 from http://127.0.0.1"),
    ("notes.txt", b"plain text", [], "body is not a readable image"),
    ("empty.png", b"", [], "empty request body"),
    ("bad.npy", npy(np.zeros((3, 32, 32), np.float64)), [], "array dtype must be float32, got float64"),
    ("bad.json", b'{"instances": 1}', [], "instances"),
    ("photo.jpg", None, ["--top-k", "0"], "top_k must be a positive integer"),
    ("photo.jpg", None, ["--top-k", "-3"], "top_k must be a positive integer"),
])
def test_main_predict_prints_the_server_error(url, tmp_path, capsys, name, body, args, words):
    path = payload_file(tmp_path, name, body)
    assert cli.main(["predict", str(path), "--url", url, *args]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and words in captured.err
    assert "Traceback" not in captured.err


def test_predict_raises_with_the_server_message(url, tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(RuntimeError, match=r"^400 from .*: body is not a readable image"):
        client.predict(url, path)


def test_main_predict_without_a_server(tmp_path, capsys):
    port = free_port()  # a port nobody listens on
    assert cli.main(["predict", str(china_path()), "--url", f"http://127.0.0.1:{port}"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ")
    with pytest.raises(requests.ConnectionError):
        client.predict(f"http://127.0.0.1:{port}", china_path())


def test_main_predict_missing_file(url, tmp_path, capsys):
    missing = tmp_path / "nope.jpg"
    assert cli.main(["predict", str(missing), "--url", url]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and "nope.jpg" in captured.err


def test_main_predict_non_json_error_body(tmp_path, capsys, monkeypatch):
    """A proxy in front of the server may answer in HTML: its text is the message."""
    class Response:
        status_code = 502
        text = "<html>Bad Gateway</html>"

        def json(self):
            raise ValueError("not JSON")

    monkeypatch.setattr(client.requests, "post", lambda *args, **kwargs: Response())
    assert cli.main(["predict", str(china_path()), "--url", "http://gateway"]) == 1
    assert capsys.readouterr().err.strip() == "error: 502 from http://gateway: <html>Bad Gateway</html>"


def test_predict_sends_the_content_type_and_top_k(tmp_path, monkeypatch):
    seen = {}

    class Response:
        status_code = 200

        def json(self):
            return {"predictions": [{"label": "a", "class_id": 0, "probability": 1.0}]}

    def fake_post(url, data, timeout, headers):
        seen.update(url=url, data=data, headers=headers)
        return Response()

    monkeypatch.setattr(client.requests, "post", fake_post)
    path = tmp_path / "x.npy"
    path.write_bytes(b"abc")
    assert client.predict("http://host:1/", path, top_k=7) == [{"label": "a", "class_id": 0, "probability": 1.0}]
    assert seen == {"url": "http://host:1/invocations", "data": b"abc",
                    "headers": {"Content-Type": "application/x-npy", "Accept": "application/json",
                                "X-Amzn-SageMaker-Custom-Attributes": "top_k=7"}}


@pytest.mark.parametrize("objective", ["valid_accuracy", "valid_loss", "valid_f1"])
def test_tune_accepts_every_objective(objective):
    args = cli.build_parser().parse_args(["tune", "--data", "data", "--objective", objective])
    assert args.objective == objective


# --- predict --explain -----------------------------------------------------------------

def _png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_main_predict_explain_writes_the_overlay_and_prints_the_table(url, tmp_path, capsys):
    overlay = tmp_path / "overlay.png"
    assert cli.main(["predict", str(china_path()), "--url", url, "--top-k", "3", "--explain", str(overlay)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "\n".join(lines[:4]) == client.format_predictions(client.predict(url, china_path(), top_k=3))
    assert lines[4:] == [f"Grad-CAM overlay written to {overlay}"]
    assert _png_size(overlay) == (32, 32)  # the model's input size: the image as the model saw it


def test_main_predict_explain_a_class_and_a_batch(url, tmp_path, capsys):
    path = tmp_path / "batch.npy"
    path.write_bytes(npy(random_batch(2, side=40)))
    predictions, paths = client.explain(url, path, tmp_path / "heat.png", top_k=2, explain_class="seven")
    assert [p.name for p in paths] == ["heat-0.png", "heat-1.png"] and len(predictions) == 2
    assert all(_png_size(p) == (40, 40) for p in paths)
    assert cli.main(["predict", str(path), "--url", url, "--explain", str(tmp_path / "x.png"),
                     "--explain-class", "nope"]) == 1
    assert "explain_class 'nope' is not one of the model's 10 labels" in capsys.readouterr().err
    assert cli.main(["predict", str(path), "--url", url, "--explain-class", "seven"]) == 2
    assert "--explain-class needs --explain" in capsys.readouterr().err
