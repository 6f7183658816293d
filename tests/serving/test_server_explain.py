"""Explanations from a real gunicorn server, serving a model trained to find a bright patch (tests/patches.py)."""

from __future__ import annotations

import base64
import io
import json
import shutil

import matplotlib
import numpy as np
import pytest
import requests
from PIL import Image

from image_classifier import explain
from image_classifier.transforms import eval_transform
from tests import patches
from tests.serving.images import encode, instances, npy
from tests.serving.servers import Server, children, start, stop, wait_for_answer

pytestmark = pytest.mark.slow

EXPLAIN = "explain=gradcam"
SIDE = patches.SIZE  # the model's input size: the overlay's, for images


@pytest.fixture(scope="module")
def server(patch_model_dir, tmp_path_factory):
    """One worker, TorchScript (the default): explanations load the eager model on first use."""
    base_dir = tmp_path_factory.mktemp("opt_ml_explain")
    shutil.copytree(patch_model_dir, base_dir / "model")
    process, url, log = start(base_dir, 1)
    try:
        yield Server(url, process, log, wait_for_answer(url, process, log, want=200, workers=1))
    finally:
        if process.poll() is None:
            assert stop(process) < 30


def post(server: Server, body: bytes, content_type: str, attributes: str | None = EXPLAIN,
         accept: str | None = None) -> requests.Response:
    headers = {"Content-Type": content_type, "X-Amzn-SageMaker-Custom-Attributes": attributes, "Accept": accept}
    return requests.post(f"{server.url}/invocations", data=body, timeout=60,
                         headers={k: v for k, v in headers.items() if v is not None})


def png(centre) -> bytes:
    return encode(Image.fromarray(patches.patch_image(centre, seed=7)), "PNG")


def decoded(body: bytes) -> np.ndarray:
    assert body.startswith(explain.PNG_SIGNATURE)
    with Image.open(io.BytesIO(body)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), np.float32)


def heat_of(overlay: np.ndarray, seen: Image.Image) -> np.ndarray:
    """The heat-map an overlay was drawn with: its colours (overlay = image / 2 + colour / 2)
    matched to the nearest of jet's 256; (H, W) in [0, 1]."""
    colours = 2 * overlay - np.asarray(seen, np.float32)
    jet = np.round(matplotlib.colormaps["jet"](np.arange(256))[:, :3] * 255)
    return ((colours[:, :, None, :] - jet) ** 2).sum(-1).argmin(-1) / 255


def peak_quadrant(heat: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(int(heat.argmax()), heat.shape)
    return patches.quadrant(x, y)


def seen_image(centre) -> Image.Image:
    """The PNG of `centre` as the model sees it: resized and centre-cropped, de-normalised."""
    return explain.input_image(eval_transform(SIDE)(Image.fromarray(patches.patch_image(centre, seed=7))))


def test_the_peak_moves_with_the_patch_through_the_server(server):
    for centre in patches.CENTRES:
        response = post(server, png(centre), "image/png", accept="image/png")
        assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"
        overlay = decoded(response.content)
        assert overlay.shape == (SIDE, SIDE, 3)
        assert peak_quadrant(heat_of(overlay, seen_image(centre))) == patches.quadrant(*centre), centre


def test_a_batch_of_json_instances(server):
    answer = post(server, instances(*(png(c) for c in patches.CENTRES)), "application/json").json()
    assert len(answer["predictions"]) == len(answer["explanations"]) == len(patches.CENTRES)
    for centre, predictions, explanation in zip(patches.CENTRES, answer["predictions"], answer["explanations"]):
        assert predictions[0]["label"] == explanation["label"] == "patch"
        assert (explanation["width"], explanation["height"]) == (SIDE, SIDE)
        heat = heat_of(decoded(base64.b64decode(explanation["png_b64"])), seen_image(centre))
        assert peak_quadrant(heat) == patches.quadrant(*centre), centre


@pytest.mark.parametrize("batched", [False, True])
def test_npy_input_is_drawn_as_sent(server, batched):
    """No image was sent: the overlay is on the de-normalised array, at its own size."""
    images = np.stack([patches.patch_image(c, seed=9) for c in patches.CENTRES[:3]])
    arrays = patches.to_input(images).numpy()
    body = npy(arrays if batched else arrays[0])
    answer = post(server, body, "application/x-npy").json()
    assert len(answer["explanations"]) == (3 if batched else 1)
    for array, centre, explanation in zip(arrays, patches.CENTRES, answer["explanations"]):
        assert (explanation["width"], explanation["height"]) == (SIDE, SIDE)
        heat = heat_of(decoded(base64.b64decode(explanation["png_b64"])), explain.input_image(array))
        assert peak_quadrant(heat) == patches.quadrant(*centre), centre
    wide = npy(patches.to_input(patches.patch_image((20, 20), size=96)[None, :64]).numpy()[0])  # 96 x 64
    response = post(server, wide, "application/x-npy", accept="image/png")
    assert response.status_code == 200 and decoded(response.content).shape == (64, 96, 3)


def test_jpeg_and_the_class_asked_for(server):
    body = encode(Image.fromarray(patches.patch_image((48, 16), seed=3)), "JPEG", quality=95)
    top = post(server, body, "image/jpeg").json()["explanations"][0]
    assert top["label"] == "patch" and top["class_id"] == 0
    other = post(server, body, "image/jpeg", EXPLAIN + ";explain_class=plain").json()
    assert other["explanations"][0]["class_id"] == 1 and other["predictions"][0]["label"] == "patch"
    assert other["explanations"][0]["probability"] == pytest.approx(other["predictions"][1]["probability"])


def test_plain_requests_have_no_explanation(server):
    answer = post(server, png((16, 16)), "image/png", attributes="top_k=2").json()
    assert list(answer) == ["predictions"] and len(answer["predictions"]) == 2


@pytest.mark.parametrize("attributes, accept, body, status, words", [
    (EXPLAIN + ",explain_class=dog", None, None, 400, "explain_class 'dog' is not one of the model's 2 labels"),
    (EXPLAIN + ",explain_class_id=2", None, None, 400, "explain_class_id must be a class index, 0 to 1"),
    (EXPLAIN, "image/png", "batch", 406, "holds a batch"),
    (EXPLAIN, "application/x-npy", None, 406, "application/json or image/png"),
    (EXPLAIN, None, b"\xff\xd8 not a jpeg", 400, "not a readable image"),
])
def test_bad_requests_are_refused_and_the_worker_serves_on(server, attributes, accept, body, status, words):
    body = instances(png((16, 16)), png((48, 48))) if body == "batch" else body or png((16, 16))
    content_type = "application/json" if body.startswith(b"{") else "image/png"
    response = post(server, body, content_type, attributes, accept)
    assert response.status_code == status and response.headers["Content-Type"] == "application/json"
    assert words in response.json()["error"] and "Traceback" not in response.text
    assert post(server, png((16, 16)), "image/png", attributes=None).status_code == 200


def test_the_worker_survived(server):
    """Last in this module: the same worker as at start-up, no traceback in the log."""
    assert server.process.poll() is None and children(server.process.pid) == server.workers
    log = server.log_text()
    assert "Traceback" not in log and "WORKER TIMEOUT" not in log
    assert json.loads(requests.get(f"{server.url}/ping", timeout=5).text) == {"status": "ok"}
