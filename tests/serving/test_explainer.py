"""Explanations through the Flask app (`serving.explainer`): answers, classes, errors, the plain path untouched."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
from dataclasses import replace

import matplotlib
import numpy as np
import pytest
from PIL import Image

from image_classifier import artifacts, explain
from image_classifier.datasets import DIGIT_NAMES
from image_classifier.images import open_image
from image_classifier.serving.batcher import Batcher
from image_classifier.serving.codec import Inputs
from image_classifier.serving.explainer import Explainer
from image_classifier.serving.predictor import Predictor
from image_classifier.transforms import eval_transform
from tests.serving.images import instances, load_npy, npy, random_batch, variants

ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
SIDE = 32  # the digits model's input size (tests/conftest.py model_dir)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/serving/conftest.py, with `client`


def post(client, body: bytes, content_type: str, attributes: str | None = None, accept: str | None = None):
    headers = {"Content-Type": content_type, ATTRIBUTES: attributes, "Accept": accept}
    return client.post("/invocations", data=body, headers={k: v for k, v in headers.items() if v is not None})


def png_image(body: bytes) -> Image.Image:
    assert body.startswith(explain.PNG_SIGNATURE)
    with Image.open(io.BytesIO(body)) as image:
        assert image.format == "PNG"
        return image.convert("RGB")


def same_predictions(first: list, second: list) -> bool:
    """Equal classes, probabilities equal to float32 rounding (TorchScript's executor may still
    re-optimise in a worker's first requests, which moves the last bit)."""
    lists = [x if x and isinstance(x[0], list) else [x] for x in (first, second)]
    classes = [[[(p["class_id"], p["label"]) for p in top] for top in x] for x in lists]
    values = [[p["probability"] for top in x for p in top] for x in lists]
    return classes[0] == classes[1] and np.allclose(values[0], values[1], rtol=1e-5)


BODIES = {  # name → (body, content type, images, the overlay's size)
    "jpeg": (variants()["jpeg"], "image/jpeg", 1, (SIDE, SIDE)),
    "png": (variants()["png-rgb"], "image/png", 1, (SIDE, SIDE)),
    "x-image": (variants()["gif"], "application/x-image", 1, (SIDE, SIDE)),
    "npy": (npy(random_batch(None, side=40)), "application/x-npy", 1, (40, 40)),
    "npy-batch": (npy(random_batch(3, side=36)), "application/x-npy", 3, (36, 36)),
    "instances": (instances(variants()["jpeg"], variants()["tiff"]), "application/json", 2, (SIDE, SIDE)),
}


@pytest.mark.parametrize("name", BODIES)
def test_explanations_beside_the_unchanged_predictions(client, name):
    body, content_type, n, size = BODIES[name]
    plain = post(client, body, content_type, "top_k=3")
    explained = post(client, body, content_type, "top_k=3,explain=gradcam")
    assert explained.status_code == 200 and explained.mimetype == "application/json"
    document = explained.get_json()
    assert list(document) == ["predictions", "explanations"]
    assert same_predictions(document["predictions"], plain.get_json()["predictions"])
    lists = document["predictions"] if n > 1 or name == "instances" else [document["predictions"]]
    assert len(document["explanations"]) == len(lists) == n
    for predictions, explanation in zip(lists, document["explanations"]):
        assert set(explanation) == {"class_id", "label", "probability", "width", "height", "png_b64"}
        assert explanation["class_id"] == predictions[0]["class_id"]  # the top class by default
        assert explanation["label"] == predictions[0]["label"] == DIGIT_NAMES[explanation["class_id"]]
        assert explanation["probability"] == predictions[0]["probability"]
        assert (explanation["width"], explanation["height"]) == size
        assert png_image(base64.b64decode(explanation["png_b64"])).size == size


def test_the_overlay_is_drawn_on_what_the_model_saw(client):
    """The image resized and centre-cropped, de-normalised; at 32 px the feature map is 1x1, so
    the heat-map is flat (0: blue) and the overlay is the crop blended with jet(0)."""
    body = variants()["png-rgb"]  # 96 x 64
    answer = post(client, body, "image/png", "explain=gradcam").get_json()
    drawn = np.asarray(png_image(base64.b64decode(answer["explanations"][0]["png_b64"])), np.float32)
    seen = np.asarray(explain.input_image(eval_transform(SIDE)(open_image(body))), np.float32)
    blue = np.round(np.asarray(matplotlib.colormaps["jet"](0.0)[:3]) * 255)
    np.testing.assert_allclose(drawn, 0.5 * seen + 0.5 * blue, atol=1)


@pytest.mark.parametrize("name, size", [("png", (SIDE, SIDE)), ("npy", (40, 40))])
def test_accept_png_answers_the_overlay(client, name, size):
    body, content_type, _, _ = BODIES[name]
    response = post(client, body, content_type, "explain=gradcam", accept="image/png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    overlay = png_image(response.get_data())
    assert overlay.size == size
    document = post(client, body, content_type, "explain=gradcam").get_json()
    assert response.get_data() == base64.b64decode(document["explanations"][0]["png_b64"])


@pytest.mark.parametrize("attributes, class_id", [("explain=gradcam,explain_class=seven", 7),
                                                  ("explain=gradcam;explain_class_id=2", 2)])
def test_the_class_named_is_explained(client, attributes, class_id):
    body = variants()["jpeg"]
    row = load_npy(post(client, body, "image/jpeg", accept="application/x-npy").get_data())[0]
    explanation = post(client, body, "image/jpeg", attributes).get_json()["explanations"][0]
    assert explanation["class_id"] == class_id and explanation["label"] == DIGIT_NAMES[class_id]
    assert np.float32(explanation["probability"]) == row[class_id]


@pytest.mark.parametrize("body, content_type, attributes, accept, status, words", [
    (variants()["jpeg"], "image/jpeg", "explain=gradcam,explain_class=dog", None, 400,
     "explain_class 'dog' is not one of the model's 10 labels"),
    (variants()["jpeg"], "image/jpeg", "explain=gradcam,explain_class_id=10", None, 400, "0 to 9, got '10'"),
    (variants()["jpeg"], "image/jpeg", "explain=shap", None, 400, "explain must be one of gradcam"),
    (variants()["jpeg"], "image/jpeg", "explain_class=one", None, 400, "need explain=gradcam"),
    (BODIES["instances"][0], "application/json", "explain=gradcam", "image/png", 406, "holds a batch"),
    (BODIES["npy-batch"][0], "application/x-npy", "explain=gradcam", "image/png", 406, "holds a batch"),
    (npy(random_batch(1)), "application/x-npy", "explain=gradcam", "image/png", 406, "holds a batch"),
    (variants()["jpeg"], "image/jpeg", "explain=gradcam", "application/x-npy", 406, "application/json or image/png"),
    (variants()["jpeg"], "image/jpeg", None, "image/png", 406, "image/png with explain=gradcam"),
    (b"not an image", "image/jpeg", "explain=gradcam", None, 400, "not a readable image"),
    (npy(np.zeros((2, 32, 32), np.float32)), "application/x-npy", "explain=gradcam", None, 400, "shape"),
])
def test_bad_explanation_requests_are_client_errors(client, body, content_type, attributes, accept, status, words):
    response = post(client, body, content_type, attributes, accept)
    assert response.status_code == status and response.mimetype == "application/json"
    assert list(response.get_json()) == ["error"] and words in response.get_json()["error"]
    assert post(client, variants()["jpeg"], "image/jpeg").status_code == 200  # and the next is served


def test_a_batch_is_refused_as_png_before_it_is_explained(app, client, monkeypatch):
    """The answer type is checked once, before the work: a batch's overlays are never drawn to be refused."""
    def explain(*args, **kwargs):
        raise AssertionError("explained a request that is refused")

    monkeypatch.setattr(app.extensions["predictor"], "explain", explain)
    response = post(client, BODIES["npy-batch"][0], "application/x-npy", "explain=gradcam", "image/png")
    assert response.status_code == 406 and "holds a batch" in response.get_json()["error"]


def test_explanations_and_plain_requests_at_once(client):
    """Explanations take turns with the plain requests' batches: every answer is what it is alone
    (a batched forward pass moves the probabilities' last bits)."""
    plain_body, explained_body = variants()["jpeg"], variants()["png-rgb"]
    plain = post(client, plain_body, "image/jpeg").get_json()
    explained = post(client, explained_body, "image/png", "explain=gradcam").get_json()
    answers, errors = [], []

    def run(body, content_type, attributes):
        try:
            answers.extend(post(client, body, content_type, attributes).get_json() for _ in range(3))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(plain_body, "image/jpeg", None)) for _ in range(4)]
    threads += [threading.Thread(target=run, args=(explained_body, "image/png", "explain=gradcam")) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(answers) == 18
    assert sum("explanations" in answer for answer in answers) == 6
    for answer in answers:
        expected = explained if "explanations" in answer else plain
        assert same_predictions(answer["predictions"], expected["predictions"])
        assert answer.get("explanations") == expected.get("explanations")


PLAIN_PATH = """
import base64, io, json, sys
import numpy as np
from PIL import Image
from image_classifier.serving.app import create_app

app = create_app({"TESTING": True, "MODEL_DIR": sys.argv[1], "LOAD_IN_BACKGROUND": False, "TORCHSCRIPT": False})
client, holder = app.test_client(), app.extensions["predictor"]
jpeg, array = io.BytesIO(), io.BytesIO()
Image.linear_gradient("L").convert("RGB").save(jpeg, "JPEG")
np.save(array, np.zeros((2, 3, 32, 32), np.float32))
requests = [(jpeg.getvalue(), "image/jpeg"), (array.getvalue(), "application/x-npy"),
            (json.dumps({"instances": [{"b64": base64.b64encode(jpeg.getvalue()).decode()}]}), "application/json")]

def state():
    return {"captum": "captum" in sys.modules, "explain": "image_classifier.explain" in sys.modules,
            "matplotlib": "matplotlib" in sys.modules, "explainer": holder._explainer is not None,
            "grad": any(p.requires_grad for p in holder.predictor.model.parameters())}

statuses = [client.post("/invocations", data=body, headers={"Content-Type": kind}).status_code
            for body, kind in requests]
before = state()
explained = client.post("/invocations", data=jpeg.getvalue(),
                        headers={"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "explain=gradcam"})
print(json.dumps({"statuses": statuses + [explained.status_code], "before": before, "after": state()}))
"""


def test_plain_requests_pay_nothing_for_explanations(model_dir):
    """In a fresh process: plain requests import neither Captum nor matplotlib nor the Grad-CAM
    code, and make no explainer; the first explanation request does."""
    result = subprocess.run([sys.executable, "-c", PLAIN_PATH, str(model_dir)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": ":".join(sys.path)})
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["statuses"] == [200] * 4
    assert state["before"] == {"captum": False, "explain": False, "matplotlib": False, "explainer": False,
                               "grad": False}
    assert state["after"] == {"captum": True, "explain": True, "matplotlib": True, "explainer": True, "grad": False}


def test_the_overlay_is_de_normalised_with_the_models_own_statistics(model_dir):
    """A model trained with another mean and std: its arrays are drawn back with those."""
    state_dict, spec = artifacts.load_model(model_dir)
    spec = replace(spec, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    model = spec.create_model()
    model.load_state_dict(state_dict)
    explainer = Explainer(Predictor.from_model(model, spec), Batcher(lambda batch: None))
    array = random_batch(None, side=SIDE, seed=4)
    _, (explanation,) = explainer.explain(Inputs(array=array[None]))
    blue = np.round(np.asarray(matplotlib.colormaps["jet"](0.0)[:3]) * 255)  # a 1x1 feature map: no heat
    seen = np.asarray(explain.input_image(array, spec.mean, spec.std), np.float32)
    np.testing.assert_allclose(np.asarray(png_image(explanation.png), np.float32), 0.5 * seen + 0.5 * blue, atol=1)
