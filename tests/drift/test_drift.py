"""`image-classifier drift`: SageMaker capture files of real photos (Fashion-MNIST) against an evaluation report.

The report is written by the evaluation report's own code (metrics.json and baseline.json) for
1,000 test photos and a model that is right 85 % of the time; the captures are other photos
(the training set's), sent as PNGs, with that model's answers encoded by the server's encoder,
in SageMaker's capture format and layout.
"""

import base64
import gzip
import io
import json
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from image_classifier import cli, datasets
from image_classifier.artifacts import label_of
from image_classifier.drift import statistics
from image_classifier.evaluation import REPORT_DIR, baseline, report
from image_classifier.serving import codec, content_types

CLASSES = [f"{c + 1:03d}.{name}" for c, name in enumerate(datasets.FASHION_MNIST_CLASSES)]
LABELS = [label_of(name) for name in CLASSES]  # model_config.json's labels: what the server answers
PER_SET = 1000
RIGHT = 0.85  # the made-up model's accuracy


def photos(split: tuple[str, str], count: int, offset: int = 0) -> tuple[list[Image.Image], np.ndarray]:
    """`count` Fashion-MNIST photos (28x28, as RGB) and their labels, from Debian's files."""
    folder = datasets.FASHION_MNIST_DIR
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing: apt-get install dataset-fashion-mnist (.ci/run does)")
    pixels = np.frombuffer(gzip.decompress((folder / split[0]).read_bytes()), np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.decompress((folder / split[1]).read_bytes()), np.uint8, offset=8).astype(np.int64)
    chosen = range(offset, offset + count)
    return [Image.fromarray(pixels[i], mode="L").convert("RGB") for i in chosen], labels[offset:offset + count]


def answers(targets: np.ndarray, seed: int) -> np.ndarray:
    """(N, 10) probabilities of a model right `RIGHT` of the time: surer when right than when wrong."""
    rng = np.random.default_rng(seed)
    classes = len(CLASSES)
    right = rng.random(len(targets)) < RIGHT
    predicted = np.where(right, targets, (targets + rng.integers(1, classes, len(targets))) % classes)
    confidence = np.where(right, rng.beta(8, 2, len(targets)), rng.beta(4, 4, len(targets))).clip(0.2, 0.999)
    probabilities = np.repeat(((1 - confidence) / (classes - 1))[:, None], classes, axis=1)
    probabilities[np.arange(len(targets)), predicted] = confidence
    return probabilities.astype(np.float32)


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory) -> Path:
    """The job's output/data: evaluation/ with metrics.json and baseline.json of 1,000 test photos."""
    images, targets = photos(datasets.FASHION_MNIST_TEST, PER_SET)
    probabilities = answers(targets, seed=0)
    data = tmp_path_factory.mktemp("output") / "data"
    report.write(data / REPORT_DIR, probabilities, targets, CLASSES, "test", lambda row: images[row],
                 baseline=baseline.figures(probabilities, images))
    return data


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def capture_line(image: Image.Image, probabilities: np.ndarray) -> str:
    """One record as SageMaker writes it: the PNG request base64-encoded, the JSON answer as JSON
    (the SDK's DataCaptureConfig default json_content_types)."""
    answer = codec.encode(probabilities[None], False, content_types.JSON, LABELS, 5)
    return json.dumps({
        "captureData": {
            "endpointInput": {"observedContentType": content_types.PNG, "mode": "INPUT",
                              "data": base64.b64encode(png(image)).decode(), "encoding": "BASE64"},
            "endpointOutput": {"observedContentType": content_types.JSON, "mode": "OUTPUT",
                               "data": answer.decode(), "encoding": "JSON"}},
        "eventMetadata": {"eventId": str(uuid.uuid4()), "inferenceTime": "2026-12-03T10:15:00Z"},
        "eventVersion": "0"})


def write_capture(root: Path, images: list[Image.Image], probabilities: np.ndarray, per_file: int = 250) -> list[str]:
    """The capture files under `root` as SageMaker lays them out: {endpoint}/{variant}/yyyy/mm/dd/hh/*.jsonl.

    Returns:
        each record's line, in order.
    """
    lines = [capture_line(image, row) for image, row in zip(images, probabilities)]
    for part, start in enumerate(range(0, len(lines), per_file)):
        folder = root / "ic-endpoint" / "AllTraffic" / "2026" / "12" / "03" / f"{10 + part:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{part:02d}-{uuid.uuid4()}.jsonl").write_text("\n".join(lines[start:start + per_file]) + "\n")
    return lines


def shifted_mix(count: int, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    """Training photos, 60 % of them trousers: a class mix the test channel never had."""
    images, labels = photos(datasets.FASHION_MNIST_TRAIN, 6000)
    rng = np.random.default_rng(seed)
    trousers, others = np.flatnonzero(labels == 1), np.flatnonzero(labels != 1)
    chosen = np.concatenate([rng.choice(trousers, int(count * 0.6), replace=False),
                             rng.choice(others, count - int(count * 0.6), replace=False)])
    return [images[i] for i in chosen], labels[chosen]


def answer_only(body: bytes, content_type: str) -> str:
    """A record whose request was not captured (CaptureOptions: Output only), the answer base64-encoded."""
    return json.dumps({"captureData": {"endpointOutput": {"observedContentType": content_type, "mode": "OUTPUT",
                                                          "data": base64.b64encode(body).decode(),
                                                          "encoding": "BASE64"}}})


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["drift", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_an_unshifted_capture_is_left_alone(evaluation, tmp_path, capsys):
    images, targets = photos(datasets.FASHION_MNIST_TRAIN, PER_SET)
    write_capture(tmp_path / "capture", images, answers(targets, seed=1))
    code, out, _ = run(capsys, "--capture", str(tmp_path / "capture"), "--report", str(evaluation),
                       "--out", str(tmp_path / "drift.html"), "--json", str(tmp_path / "drift.json"))
    figures = json.loads((tmp_path / "drift.json").read_text())
    assert code == 0 and out.startswith("verdict: no drift"), out
    assert figures["verdict"] == "no drift" and figures["class_mix"]["psi"] < 0.1, figures["class_mix"]["psi"]
    assert figures["capture"] == {"files": 4, "records": PER_SET, "refused": 0, "images": PER_SET,
                                  "predictions": PER_SET, "measured": PER_SET}
    assert (figures["width"]["psi"], figures["height"]["psi"]) == (0.0, 0.0)  # every photo is 28x28
    assert figures["brightness"]["verdict"] == figures["confidence"]["verdict"] == "no drift"


def test_a_shifted_class_mix_is_flagged(evaluation, tmp_path, capsys):
    images, targets = shifted_mix(PER_SET, seed=2)
    write_capture(tmp_path / "capture", images, answers(targets, seed=2))
    code, out, _ = run(capsys, "--capture", str(tmp_path / "capture"), "--report", str(evaluation / REPORT_DIR),
                       "--out", str(tmp_path / "drift.html"), "--json", str(tmp_path / "drift.json"))
    figures = json.loads((tmp_path / "drift.json").read_text())
    assert code == 0 and out.startswith("verdict: drift"), out
    assert figures["class_mix"]["verdict"] == "drift" and figures["class_mix"]["psi"] > 0.25
    terms = {row["class_name"]: row["psi"] for row in figures["class_mix"]["per_class"]}
    assert max(terms, key=terms.get) == "002.Trouser"  # the class that moved most carries the PSI
    page = (tmp_path / "drift.html").read_text()
    assert "Prediction drift: drift" in page and "Every image on both sides has image width 28" in page
    assert page.count("data:image/png;base64,") == 3  # class mix, confidence, brightness: 28x28 needs no plot


def test_a_handful_of_unshifted_images_is_too_few_not_drift(evaluation, tmp_path, capsys):
    images, targets = photos(datasets.FASHION_MNIST_TRAIN, 5)
    write_capture(tmp_path / "capture", images, answers(targets, seed=1))
    code, out, _ = run(capsys, "--capture", str(tmp_path / "capture"), "--report", str(evaluation),
                       "--out", str(tmp_path / "drift.html"), "--json", str(tmp_path / "drift.json"))
    figures = json.loads((tmp_path / "drift.json").read_text())
    assert code == 0 and out.startswith("verdict: too few images"), out
    mix = figures["class_mix"]
    assert mix["psi"] > 0.25  # what the rule of thumb alone would call drift
    assert mix["expected_psi"] == pytest.approx(9 * (1 / PER_SET + 1 / 5)) and mix["verdict"] == "too few images"
    assert all(figures[key]["verdict"] == "too few images" for key in ("confidence", "width", "brightness"))
    page = (tmp_path / "drift.html").read_text()
    assert "Prediction drift: too few images" in page and "(B − 1) · (1/N + 1/M) (Yurdakul 2018)" in page


def test_the_psi_of_a_hand_computed_example():
    # shares (0.5, 0.5) on the reference, (0.25, 0.75) observed:
    # (0.25 − 0.5) · ln(0.25 / 0.5) = −0.25 · −0.693147 = 0.173287
    # (0.75 − 0.5) · ln(0.75 / 0.5) =  0.25 ·  0.405465 = 0.101366;  PSI = 0.274653 (without the ln: 0.25)
    terms = statistics.psi_terms(np.array([2, 2]), np.array([1, 3]))
    assert terms == pytest.approx([0.173287, 0.101366], abs=1e-6) and terms.sum() == pytest.approx(0.274653, abs=1e-6)
    assert statistics.verdict(terms.sum()) == "drift" and statistics.verdict(terms.sum(), 0.1) == "too few images"
    # 10 classes, 1,000 test images, 100 sent: 9 · (0.001 + 0.01) = 0.099, just enough images
    assert statistics.expected_psi(10, 1000, 100) == pytest.approx(0.099)
    assert statistics.worst(["too few images", "watch", "no drift"]) == "watch"
    assert statistics.worst(["too few images", "too few images"]) == "too few images"


def test_darker_photos_are_flagged_on_brightness(evaluation, tmp_path, capsys):
    images, targets = photos(datasets.FASHION_MNIST_TRAIN, PER_SET)
    darker = [ImageEnhance.Brightness(image).enhance(0.5) for image in images]
    write_capture(tmp_path / "capture", darker, answers(targets, seed=1))
    assert run(capsys, "--capture", str(tmp_path / "capture"), "--report",
               str(evaluation / REPORT_DIR / "metrics.json"), "--out", str(tmp_path / "drift.html"),
               "--json", str(tmp_path / "drift.json"))[0] == 0
    figures = json.loads((tmp_path / "drift.json").read_text())
    assert figures["brightness"]["verdict"] == "drift" and figures["class_mix"]["verdict"] == "no drift"
    assert figures["brightness"]["observed_mean"] == pytest.approx(figures["brightness"]["reference_mean"] / 2, rel=0.1)


def test_labels_give_the_endpoints_accuracy_and_calibration(evaluation, tmp_path, capsys):
    images, targets = photos(datasets.FASHION_MNIST_TRAIN, 400)
    probabilities = answers(targets, seed=3)
    lines = write_capture(tmp_path / "capture", images, probabilities)
    truth = [json.dumps({"groundTruthData": {"data": CLASSES[t].split(".", 1)[1], "encoding": "CSV"},
                         "eventMetadata": {"eventId": json.loads(line)["eventMetadata"]["eventId"]},
                         "eventVersion": "0"}) for line, t in zip(lines, targets)]
    (tmp_path / "labels.jsonl").write_text("\n".join(truth))
    assert run(capsys, "--capture", str(tmp_path / "capture"), "--report", str(evaluation), "--labels",
               str(tmp_path / "labels.jsonl"), "--out", str(tmp_path / "drift.html"), "--json",
               str(tmp_path / "drift.json"))[0] == 0
    calibration = json.loads((tmp_path / "drift.json").read_text())["calibration"]
    right = probabilities.argmax(axis=1) == targets
    assert calibration["images"] == 400 and calibration["accuracy"] == pytest.approx(right.mean())
    assert sum(b["count"] for b in calibration["calibration_bins"]) == 400 and 0 < calibration["ece"] < 0.5
    assert "endpoint (labelled)" in (tmp_path / "drift.html").read_text()


def test_labels_match_on_the_inference_id_where_the_capture_has_one(evaluation, tmp_path, capsys):
    """As Model Monitor merges ground truth: on eventMetadata.inferenceId when the record has one, else eventId."""
    images, targets = photos(datasets.FASHION_MNIST_TRAIN, 200)
    probabilities = answers(targets, seed=9)
    records = [json.loads(line) for line in write_capture(tmp_path / "ready", images, probabilities)]
    for i, record in enumerate(records[::2]):  # every other request was sent with an InferenceId
        record["eventMetadata"]["inferenceId"] = f"order-{i}"
    (tmp_path / "capture.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")

    def ground_truth(event: str, target: int) -> str:
        return json.dumps({"groundTruthData": {"data": str(target), "encoding": "CSV"},
                           "eventMetadata": {"eventId": event}, "eventVersion": "0"})

    truth = [ground_truth(r["eventMetadata"].get("inferenceId", r["eventMetadata"]["eventId"]), t)
             for r, t in zip(records, targets)]
    truth.append(ground_truth(records[0]["eventMetadata"]["eventId"], 0))  # its inferenceId wins: no match
    (tmp_path / "labels.jsonl").write_text("\n".join(truth))
    assert run(capsys, "--capture", str(tmp_path / "capture.jsonl"), "--report", str(evaluation), "--labels",
               str(tmp_path / "labels.jsonl"), "--out", str(tmp_path / "drift.html"), "--json",
               str(tmp_path / "drift.json"))[0] == 0
    figures = json.loads((tmp_path / "drift.json").read_text())
    assert figures["labels"] == {"given": 201, "matched": 200} and figures["calibration"]["images"] == 200
    assert figures["calibration"]["accuracy"] == pytest.approx(np.mean(probabilities.argmax(axis=1) == targets))
    assert "200 of 201 labels matched a captured request" in (tmp_path / "drift.html").read_text()


def test_labels_that_match_nothing_are_said_so(evaluation, tmp_path, capsys):
    images, targets = photos(datasets.FASHION_MNIST_TRAIN, 150)
    write_capture(tmp_path / "capture", images, answers(targets, seed=10))
    (tmp_path / "labels.jsonl").write_text("\n".join(json.dumps({
        "groundTruthData": {"data": "Trouser", "encoding": "CSV"}, "eventMetadata": {"eventId": f"other-{i}"},
        "eventVersion": "0"}) for i in range(3)))
    assert run(capsys, "--capture", str(tmp_path / "capture"), "--report", str(evaluation), "--labels",
               str(tmp_path / "labels.jsonl"), "--out", str(tmp_path / "drift.html"), "--json",
               str(tmp_path / "drift.json"))[0] == 0
    figures = json.loads((tmp_path / "drift.json").read_text())
    assert figures["labels"] == {"given": 3, "matched": 0} and figures["calibration"] is None
    page = (tmp_path / "drift.html").read_text()
    assert "0 of 3 labels matched a captured request" in page and "No labels were given" not in page


def test_capture_and_report_from_s3(aws, evaluation, tmp_path, capsys):
    images, targets = shifted_mix(300, seed=4)
    write_capture(tmp_path / "capture", images, answers(targets, seed=4), per_file=100)
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="ic-capture")
    for file in (tmp_path / "capture").rglob("*.jsonl"):
        s3.upload_file(str(file), "ic-capture", f"datacapture/{file.relative_to(tmp_path / 'capture')}")
    s3.put_object(Bucket="ic-capture", Key="datacapture/ic-endpoint/AllTraffic/2026/12/03/10/notes.txt", Body=b"x")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(evaluation / REPORT_DIR, arcname=REPORT_DIR)
    s3.put_object(Bucket="ic-capture", Key="jobs/ic-job-1/output/output.tar.gz", Body=archive.getvalue())

    code, _, err = run(capsys, "--capture", "s3://ic-capture/datacapture/ic-endpoint", "--report",
                         "s3://ic-capture/jobs/ic-job-1/", "--out", str(tmp_path / "drift.html"),
                         "--json", str(tmp_path / "drift.json"))
    assert code == 0, err
    figures = json.loads((tmp_path / "drift.json").read_text())
    assert figures["capture"]["files"] == 3 and figures["capture"]["images"] == 300  # notes.txt is no capture
    assert figures["verdict"] == "drift" and figures["class_mix"]["verdict"] == "drift"
    # the report's metrics.json in S3 (as registered beside a model), baseline.json beside it
    for name in (report.METRICS_FILE, baseline.BASELINE_FILE):
        s3.upload_file(str(evaluation / REPORT_DIR / name), "ic-capture", f"models/ic-job-1/{name}")
    assert run(capsys, "--capture", "s3://ic-capture/datacapture", "--report", "s3://ic-capture/models/ic-job-1/"
               "metrics.json", "--out", str(tmp_path / "again.html"), "--json", str(tmp_path / "again.json"))[0] == 0
    assert json.loads((tmp_path / "again.json").read_text())["class_mix"] == figures["class_mix"]
    s3.delete_object(Bucket="ic-capture", Key=f"models/ic-job-1/{baseline.BASELINE_FILE}")
    code, _, err = run(capsys, "--capture", "s3://ic-capture/datacapture", "--report",
                       "s3://ic-capture/models/ic-job-1/metrics.json", "--out", str(tmp_path / "none.html"))
    assert code == 1 and "has no baseline.json" in err
    code, _, err = run(capsys, "--capture", "s3://ic-capture/nothing-here", "--report",
                       "s3://ic-capture/jobs/ic-job-1/", "--out", str(tmp_path / "none.html"))
    assert code == 1 and "no .jsonl capture files under s3://ic-capture/nothing-here" in err


def test_a_refused_s3_read_of_the_report_is_not_a_missing_report(evaluation, tmp_path, capsys, monkeypatch):
    """Only a 404 means metrics.json or baseline.json is missing: a 403 is S3's refusal, said as such."""
    from botocore.exceptions import ClientError

    class Denied:
        def download_file(self, bucket, key, filename):
            raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadObject")

    monkeypatch.setattr(boto3, "client", lambda *args, **kwargs: Denied())
    code, _, err = run(capsys, "--capture", str(tmp_path), "--report", "s3://ic-capture/models/ic-job-1/metrics.json",
                       "--out", str(tmp_path / "drift.html"))
    assert code == 1 and "403: Forbidden" in err and "no evaluation report" not in err, err


@pytest.mark.parametrize("line, message", [
    ('{"instances": [1, 2]}', "not a SageMaker data-capture record"),
    ("not json at all", "not JSON"),
    (json.dumps({"captureData": {"endpointInput": {"observedContentType": "image/png", "mode": "INPUT",
                                                   "data": "%%%not base64%%%", "encoding": "BASE64"}}}),
     "captureData.endpointInput.data is not valid base64"),
    (json.dumps({"captureData": {"endpointInput": {"observedContentType": "image/png", "mode": "INPUT",
                                                   "data": base64.b64encode(b"no image").decode(),
                                                   "encoding": "BASE64"}}}),
     "does not decode as the server decodes it"),
    (json.dumps({"captureData": {"endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                                    "data": '{"answer": 1}', "encoding": "JSON"}}}),
     'no "predictions" list'),
    (json.dumps({"captureData": {"endpointInput": "an image"}}), "captureData.endpointInput is"),
    # another model with as many classes: its labels, or its x-npy width, give it away
    (answer_only(codec.encode(np.eye(10, dtype=np.float32)[None, 3], False, content_types.JSON,
                              [f"digit {i}" for i in range(10)], 5), content_types.JSON),
     "captured class id 3 is labelled 'digit 3', the report's class 3 is 'Dress'"),
    (answer_only(npy(np.eye(12, dtype=np.float32)[None, 3]), content_types.NPY),
     "has 12 probabilities per image, the report's model 10 classes"),
    (answer_only(json.dumps({"predictions": [{"label": "T-shirt/top", "class_id": -1, "probability": 0.9}]})
                 .encode(), content_types.JSON), "captured class id -1 is none of the report's 10 classes"),
    (json.dumps({"captureData": {"endpointOutput": [1, 2]}}), "endpointOutput is [1, 2], not a JSON object"),
    (json.dumps({"captureData": {"endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                                    "data": '{"error": "refused"}', "encoding": "JSON"}},
                 "eventMetadata": ["3f1c"]}), "eventMetadata is"),
])
def test_bad_capture_files_are_refused_with_the_file_and_line(evaluation, tmp_path, capsys, line, message):
    folder = tmp_path / "capture" / "ic-endpoint" / "AllTraffic" / "2026" / "12" / "03" / "10"
    folder.mkdir(parents=True)
    images, targets = photos(datasets.FASHION_MNIST_TRAIN, 2)
    good = [capture_line(image, row) for image, row in zip(images, answers(targets, seed=5))]
    (folder / "a.jsonl").write_text("\n".join([*good, line]) + "\n")
    code, _, err = run(capsys, "--capture", str(tmp_path / "capture"), "--report", str(evaluation),
                       "--out", str(tmp_path / "drift.html"))
    assert code == 1 and err.startswith("error: ") and message in err, err
    assert f"{folder / 'a.jsonl'}:3" in err and not (tmp_path / "drift.html").exists()


def test_refused_requests_are_left_out_and_overlays_count_for_their_pixels_only(evaluation, tmp_path, capsys):
    images, targets = photos(datasets.FASHION_MNIST_TRAIN, 200)
    lines = write_capture(tmp_path / "capture", images, answers(targets, seed=8))
    refused, overlay = json.loads(lines[0]), json.loads(lines[1])
    refused["captureData"]["endpointOutput"]["data"] = json.dumps({"error": "image refused: over the limit"})
    overlay["captureData"]["endpointOutput"] = {"observedContentType": content_types.PNG, "mode": "OUTPUT",
                                                "data": base64.b64encode(png(images[1])).decode(),
                                                "encoding": "BASE64"}
    file = next((tmp_path / "capture").rglob("*.jsonl"))
    file.write_text("\n".join([json.dumps(refused), json.dumps(overlay), *lines[2:]]) + "\n")
    assert run(capsys, "--capture", str(tmp_path / "capture"), "--report", str(evaluation),
               "--out", str(tmp_path / "drift.html"), "--json", str(tmp_path / "drift.json"))[0] == 0
    captured = json.loads((tmp_path / "drift.json").read_text())["capture"]
    assert captured == {"files": 1, "records": 200, "refused": 1, "images": 199, "predictions": 198, "measured": 199}


def test_a_missing_report_or_capture_is_refused(evaluation, tmp_path, capsys):
    images, targets = photos(datasets.FASHION_MNIST_TRAIN, 3)
    write_capture(tmp_path / "capture", images, answers(targets, seed=6))
    code, _, err = run(capsys, "--capture", str(tmp_path / "capture"), "--report", str(tmp_path / "no-such-job"),
                       "--out", str(tmp_path / "drift.html"))
    assert code == 1 and "no job output at" in err
    code, _, err = run(capsys, "--capture", str(tmp_path / "capture"), "--report", str(tmp_path),
                       "--out", str(tmp_path / "drift.html"))
    assert code == 1 and "no evaluation report at" in err and "metrics.json" in err
    old = tmp_path / "old" / REPORT_DIR
    shutil.copytree(evaluation / REPORT_DIR, old)
    (old / baseline.BASELINE_FILE).unlink()
    code, _, err = run(capsys, "--capture", str(tmp_path / "capture"), "--report", str(old),
                       "--out", str(tmp_path / "drift.html"))
    assert code == 1 and "has no baseline.json" in err
    code, _, err = run(capsys, "--capture", str(tmp_path / "nowhere"), "--report", str(evaluation),
                       "--out", str(tmp_path / "drift.html"))
    assert code == 1 and "no capture folder or file at" in err


def test_the_page_renders_in_a_real_browser(evaluation, tmp_path, capsys):
    """Headless Chromium draws the page: its screenshot shows the plots' colours (the inlined PNGs decoded)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is missing: apt-get install -y chromium (.ci/run does)"
    images, targets = shifted_mix(PER_SET, seed=7)
    write_capture(tmp_path / "capture", images, answers(targets, seed=7))
    assert run(capsys, "--capture", str(tmp_path / "capture"), "--report", str(evaluation),
               "--out", str(tmp_path / "drift.html"))[0] == 0
    shot = tmp_path / "screenshot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,2400", (tmp_path / "drift.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    with Image.open(shot) as picture:
        pixels = np.asarray(picture.convert("RGB")).reshape(-1, 3).astype(int)
    assert pixels.shape[0] == 1200 * 2400
    orange = np.abs(pixels - (0xFF, 0x7F, 0x0E)).sum(axis=1) < 40  # matplotlib's tab:orange: the endpoint's bars
    blue = np.abs(pixels - (0x1F, 0x77, 0xB4)).sum(axis=1) < 40    # tab:blue: the test channel's
    assert orange.sum() > 2000 and blue.sum() > 2000, (orange.sum(), blue.sum())
    red = np.abs(pixels - (0xFF, 0xDD, 0xDD)).sum(axis=1) < 10     # the drift row's background (.IssuesFound)
    assert red.sum() > 500
