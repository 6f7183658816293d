"""The model server's HTTP client: an image to `POST /invocations`, the top-k back, printed as a table.

`image-classifier predict` and the demo send with it; `launch.invoke` prints an endpoint's
answers with its tables.
"""

from __future__ import annotations

import base64
from pathlib import Path

import requests

from image_classifier.serving import attributes as attributes_header
from image_classifier.serving import content_types
from image_classifier.transform import error_message

_SUFFIX_TYPES = {".jpg": content_types.JPEG, ".jpeg": content_types.JPEG, ".png": content_types.PNG,
                 ".npy": content_types.NPY, ".json": content_types.JSON}


def content_type_for(path: Path) -> str:
    """The Content-Type to send a file as: by suffix, `application/x-image` for other images."""
    return _SUFFIX_TYPES.get(path.suffix.lower(), content_types.X_IMAGE)


def _invoke(url: str, image: Path, attributes: str, timeout: float) -> dict:
    """POST `image` to `<url>/invocations` with these custom attributes; the JSON answer.

    Raises:
        RuntimeError: the server answered with an error (its message included).
        requests.ConnectionError: no server at `url`.
    """
    response = requests.post(
        f"{url.rstrip('/')}/invocations", data=image.read_bytes(), timeout=timeout,
        headers={"Content-Type": content_type_for(image), "Accept": content_types.JSON,
                 attributes_header.HEADER: attributes})
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code} from {url}: {error_message(response)}")
    return response.json()


def predict(url: str, image: Path, top_k: int = 5, timeout: float = 60.0) -> list[dict]:
    """POST `image` to `<url>/invocations` and return the top-k predictions.

    Raises:
        RuntimeError: the server answered with an error (its message included).
        requests.ConnectionError: no server at `url`.
    """
    return _invoke(url, image, f"top_k={top_k}", timeout)["predictions"]


def overlay_paths(output: Path, count: int) -> list[Path]:
    """Where `count` overlays go: `output` for one image, `<stem>-<i><suffix>` for each of a batch."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def explain(url: str, image: Path, output: Path, top_k: int = 5, explain_class: str | None = None,
            timeout: float = 60.0) -> tuple[list, list[Path]]:
    """POST `image` asking for Grad-CAM explanations, write each overlay PNG (`overlay_paths`);
    the top-k predictions and the paths written.

    Args:
        explain_class: the label to explain; None: each image's most probable class.

    Raises:
        RuntimeError: the server answered with an error (its message included).
        requests.ConnectionError: no server at `url`.
        OSError: an overlay could not be written (none is left half-written).
    """
    from image_classifier.artifacts import atomic_write_bytes  # imports torch(vision): only for --explain

    attributes = f"top_k={top_k},explain=gradcam" + (f",explain_class={explain_class}" if explain_class else "")
    answer = _invoke(url, image, attributes, timeout)
    paths = overlay_paths(output, len(answer["explanations"]))
    for path, explanation in zip(paths, answer["explanations"]):
        atomic_write_bytes(path, base64.b64decode(explanation["png_b64"]))
    return answer["predictions"], paths


def format_predictions(predictions: list[dict]) -> str:
    """A text table: rank, label, class_id, probability."""
    rows = [f"{'rank':>4}  {'label':<32} {'class_id':>8}  {'probability':>11}"]
    rows += [f"{rank:>4}  {p['label']:<32} {p['class_id']:>8}  {p['probability']:>11.4f}"
             for rank, p in enumerate(predictions, 1)]
    return "\n".join(rows)


def format_answer(predictions: list) -> str:
    """The server's `predictions` as tables: one, or one per image for a batch (.npy, .json)."""
    batches = predictions if predictions and isinstance(predictions[0], list) else [predictions]
    return "\n\n".join(format_predictions(batch) for batch in batches)
