"""Read SageMaker's data-capture files (JSON Lines, from a folder or S3) into one row per image.

An endpoint with data capture writes, under its DestinationS3Uri,
`{endpoint}/{variant}/yyyy/mm/dd/hh/{file}.jsonl`: one JSON record per line and invocation,

    {"captureData": {"endpointInput": {"observedContentType": "image/jpeg", "mode": "INPUT",
                                       "data": "<the request body>", "encoding": "BASE64"},
                     "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                        "data": "<the response body>", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "<uuid>", "inferenceId": "<the caller's InferenceId, if given>",
                       "inferenceTime": "2026-12-03T10:00:00Z"},
     "eventVersion": "0"}

`encoding` is BASE64 unless the endpoint config's CaptureContentTypeHeader names the content
type as JSON or CSV (then `data` is the body as text); either side is absent when CaptureOptions
left it out. The request body is decoded as the model server decodes it (serving.codec), and
the response is this server's (docs/serving/http-api.md): JSON `predictions` (a list of the
top-k, most probable first; one list per image for a batch) or the x-npy probabilities.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from image_classifier.artifacts import label_of
from image_classifier.evaluation.baseline import image_figures
from image_classifier.serving import codec, content_types
from image_classifier.serving.errors import InferenceError

CAPTURE_SUFFIX = ".jsonl"
ENCODINGS = ("BASE64", "JSON", "CSV")  # CaptureContentTypeHeader's choices; BASE64 by default


class CaptureError(ValueError):
    """A capture file (or a line of one) that is not SageMaker's data-capture format, or whose
    bodies do not decode; the message names the file and line."""


@dataclass(frozen=True)
class Observation:
    """One image an endpoint was sent: its prediction and figures (None where not captured)."""

    event_id: str
    inference_time: str
    index: int                       # the image's place in its request (0 for a single image)
    class_id: int | None = None      # the top-1 class the endpoint answered
    confidence: float | None = None  # its probability, 0-1
    width: int | None = None         # pixels, as decoded (EXIF orientation applied)
    height: int | None = None
    brightness: float | None = None  # mean luma, 0-255 (evaluation.baseline.brightness)
    inference_id: str | None = None  # the InferenceId the caller gave (eventMetadata.inferenceId), if any

    @property
    def ground_truth_id(self) -> str:
        """The id Model Monitor merges ground truth on: the inferenceId where the capture has one, else the eventId."""
        return self.inference_id or self.event_id


@dataclass
class Capture:
    """Everything read: the observations, how many records and files, and what was left out."""

    observations: list[Observation] = field(default_factory=list)
    files: int = 0
    records: int = 0
    refused: int = 0  # records whose response was the server's {"error": ...}


def _payload(part: dict, where: str, side: str) -> bytes:
    """The body of one side of a record, as the endpoint received or sent it."""
    encoding, data = part.get("encoding"), part.get("data")
    if encoding not in ENCODINGS or not isinstance(data, str):
        raise CaptureError(f"{where}: captureData.{side} needs a string `data` and an `encoding` of "
                           f"{', '.join(ENCODINGS)}; got encoding {encoding!r}")
    if encoding != "BASE64":
        return data.encode()
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise CaptureError(f"{where}: captureData.{side}.data is not valid base64") from None


def _images(part: dict, where: str) -> list[dict | None]:
    """Per image of the request: `image_figures`, or None for an x-npy array (no pixels to measure)."""
    body = _payload(part, where, "endpointInput")
    try:
        inputs = codec.decode(body, part.get("observedContentType"))
    except InferenceError as exc:
        raise CaptureError(f"{where}: the captured request does not decode as the server decodes it: "
                           f"{exc.message}") from None
    if inputs.images is None:
        return [None] * len(inputs)
    return [image_figures(image) for image in inputs.images]


def _check_classes(predictions: list[tuple[int, float]], labels: list[str], where: str, width: int | None = None,
                   answered: list | None = None) -> None:
    """Refuse another model's answer: a class id out of `labels`' range, an x-npy row `width` other
    than their number, or a JSON answer's top-1 label (`answered`) other than `labels[class_id]`."""
    another = "is it another model's endpoint?"
    if width is not None and width != len(labels):
        raise CaptureError(f"{where}: the captured x-npy answer has {width} probabilities per image, the report's "
                           f"model {len(labels)} classes: {another}")
    for (class_id, _), label in zip(predictions, answered or [None] * len(predictions)):
        if not 0 <= class_id < len(labels):
            raise CaptureError(f"{where}: captured class id {class_id} is none of the report's {len(labels)} "
                               f"classes (0 to {len(labels) - 1}): {another}")
        if answered is not None and label != labels[class_id]:
            raise CaptureError(f"{where}: captured class id {class_id} is labelled {label!r}, the report's class "
                               f"{class_id} is {labels[class_id]!r}: {another}")


def _predictions(part: dict, where: str, labels: list[str] | None = None) -> list[tuple[int, float]] | None:
    """Per image of the response: (top-1 class id, its probability); [] for a Grad-CAM overlay, None
    for the server's error answer. With `labels` (the model's, `label_of` its class names), each
    answer is checked against them (`_check_classes`)."""
    body, kind = _payload(part, where, "endpointOutput"), content_types.base_type(part.get("observedContentType"))
    if kind == content_types.PNG:
        return []  # an explanation's overlay (Accept: image/png): no probabilities in it
    try:
        if kind == content_types.NPY:
            rows = np.atleast_2d(np.load(io.BytesIO(body), allow_pickle=False))
            found = [(int(row.argmax()), float(row.max())) for row in rows]
            if labels is not None:
                _check_classes(found, labels, where, width=rows.shape[-1])
            return found
        document = json.loads(body)
    except (ValueError, OSError, EOFError) as exc:
        raise CaptureError(f"{where}: the captured response is not this server's {kind or 'answer'}: {exc}") from None
    if isinstance(document, dict) and "error" in document:
        return None
    predictions = document.get("predictions") if isinstance(document, dict) else None
    if not isinstance(predictions, list) or not predictions:
        raise CaptureError(f'{where}: the captured response has no "predictions" list (docs/serving/http-api.md)')
    lists = predictions if isinstance(predictions[0], list) else [predictions]
    try:
        found = [(int(top[0]["class_id"]), float(top[0]["probability"])) for top in lists]
        answered = [top[0].get("label") for top in lists]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise CaptureError(f"{where}: a captured prediction lacks class_id or probability") from None
    if labels is not None:
        _check_classes(found, labels, where, answered=answered)
    return found


def parse_record(line: str, where: str, class_names: list[str] | None = None) -> list[Observation] | None:
    """The observations of one capture line (one per image); None when the server refused the request.

    Args:
        class_names: the report's model's classes, to refuse another model's answers; None: unchecked.

    Raises:
        CaptureError: not JSON, not a data-capture record (its captureData, endpointInput,
            endpointOutput or eventMetadata not an object), a body that does not decode, a
            response with another number of predictions than the request had images, or (with
            `class_names`) another model's answer: a class id below 0 or beyond them, an x-npy
            row of another width, a JSON top-1 label other than `label_of` the class's name.
    """
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise CaptureError(f"{where}: not JSON ({exc}): not a SageMaker data-capture file") from None
    data = record.get("captureData") if isinstance(record, dict) else None
    if not isinstance(data, dict) or not ({"endpointInput", "endpointOutput"} & data.keys()):
        raise CaptureError(f"{where}: not a SageMaker data-capture record (no captureData.endpointInput "
                           f"or endpointOutput)")
    meta = record.get("eventMetadata") or {}
    for name, part in (("captureData.endpointInput", data.get("endpointInput", {})),
                       ("captureData.endpointOutput", data.get("endpointOutput", {})), ("eventMetadata", meta)):
        if not isinstance(part, dict):
            raise CaptureError(f"{where}: {name} is {json.dumps(part)[:40]}, not a JSON object: not a SageMaker "
                               f"data-capture record")
    labels = None if class_names is None else [label_of(name) for name in class_names]
    predictions = _predictions(data["endpointOutput"], where, labels) if "endpointOutput" in data else []
    if predictions is None:
        return None
    images = _images(data["endpointInput"], where) if "endpointInput" in data else []
    if images and predictions and len(images) != len(predictions):
        raise CaptureError(f"{where}: {len(images)} images in the request but {len(predictions)} predictions")
    rows = []
    for i in range(max(len(images), len(predictions))):
        predicted = dict(zip(("class_id", "confidence"), predictions[i])) if predictions else {}
        inference_id = str(meta["inferenceId"]) if meta.get("inferenceId") else None
        rows.append(Observation(str(meta.get("eventId", where)), str(meta.get("inferenceTime", "")), i,
                                **predicted, **((images[i] or {}) if images else {}), inference_id=inference_id))
    return rows


def _files(source: str) -> Iterator[tuple[str, str]]:
    """(name, text) of each capture file under `source` (a folder, one file, or an s3:// prefix), sorted."""
    if source.startswith("s3://"):
        import boto3

        from image_classifier.launch.upload import parse_s3_uri

        bucket, prefix = parse_s3_uri(source)
        s3 = boto3.client("s3")
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
        keys = sorted(item["Key"] for page in pages for item in page.get("Contents", [])
                      if item["Key"].endswith(CAPTURE_SUFFIX))
        for key in keys:
            yield f"s3://{bucket}/{key}", s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        return
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no capture folder or file at {source}")
    for file in [path] if path.is_file() else sorted(path.rglob(f"*{CAPTURE_SUFFIX}")):
        yield str(file), file.read_text()


def read(source: str, class_names: list[str] | None = None) -> Capture:
    """Every observation in the capture files under `source`: a local folder (walked recursively),
    one .jsonl file, or an S3 prefix (s3://bucket/prefix: every .jsonl key below it, e.g. the
    endpoint's DestinationS3Uri, or `…/{endpoint}/{variant}/2026/12` for one month). With
    `class_names` (the report's), another model's answers are refused (see `parse_record`).

    Raises:
        FileNotFoundError: no such folder, or no capture file (nor record) under `source`.
        CaptureError: a file that is not in the data-capture format (see `parse_record`).
        botocore.exceptions.ClientError: S3 refused (e.g. no s3:ListBucket or s3:GetObject).
    """
    from tqdm import tqdm

    capture = Capture()
    for name, text in tqdm(_files(source), desc="capture files", unit=" files", disable=None):
        capture.files += 1
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            capture.records += 1
            rows = parse_record(line, f"{name}:{number}", class_names)
            if rows is None:
                capture.refused += 1
            else:
                capture.observations.extend(rows)
    if not capture.files:
        raise FileNotFoundError(f"no {CAPTURE_SUFFIX} capture files under {source}")
    if not capture.observations:
        raise FileNotFoundError(f"the {capture.files} capture files under {source} hold no prediction")
    return capture
