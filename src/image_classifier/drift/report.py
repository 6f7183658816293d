"""`image-classifier drift`: the endpoint's captured traffic against the test channel, as a page and JSON.

The reference is the training job's evaluation report: metrics.json (the test channel's
figures) and baseline.json (each test image's prediction, size and brightness,
evaluation.baseline), in the job's output/data/evaluation.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from image_classifier.artifacts import label_of
from image_classifier.drift import plots, statistics
from image_classifier.drift.capture import Capture, CaptureError, read
from image_classifier.evaluation import REPORT_DIR
from image_classifier.evaluation.baseline import BASELINE_FILE
from image_classifier.evaluation.report import METRICS_FILE
from image_classifier.html_page import Page
from image_classifier.launch.exit_codes import BOTOCORE_ERROR, CLIENT_ERROR, FAILED, aws_error, exit_on, one_line

logger = logging.getLogger(__name__)

# (key in the result, name on the page, unit): the continuous figures compared
FIGURES = (("confidence", "confidence", "top-1 probability"), ("width", "image width", "pixels"),
           ("height", "image height", "pixels"), ("brightness", "brightness", "mean luma, 0-255"))
VERDICT_CSS = {"no drift": "", "watch": "Error", "drift": "IssuesFound",  # html_page's row colours
               statistics.TOO_FEW: "NotApplicable"}


def load_report(source: str, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics.json, baseline.json) of the evaluation report at `source`: its metrics.json, its
    folder, the job's output folder or output.tar.gz (reports.fetch), locally or in S3.

    Raises:
        FileNotFoundError: no evaluation report there, or one without baseline.json.
        botocore.exceptions.ClientError: S3 refused other than with a 404 (e.g. 403: no s3:GetObject).
    """
    if source.endswith(METRICS_FILE):
        if source.startswith("s3://"):
            import boto3
            import botocore.exceptions

            from image_classifier.launch.upload import parse_s3_uri

            bucket, key = parse_s3_uri(source)
            for name in (METRICS_FILE, BASELINE_FILE):
                try:
                    boto3.client("s3").download_file(bucket, f"{key.rpartition('/')[0]}/{name}".lstrip("/"),
                                                     str(workdir / name))
                except botocore.exceptions.ClientError as exc:  # a 404: said below, by name; others raised
                    if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                        raise
                    logger.debug("%s: %s", name, exc)
            directory = workdir
        else:
            directory = Path(source).parent
    else:
        from image_classifier.reports import fetch

        output = fetch(source, workdir)
        directory = output if (output / METRICS_FILE).is_file() else output / REPORT_DIR
    if not (directory / METRICS_FILE).is_file():
        raise FileNotFoundError(f"no evaluation report at {source}: no {METRICS_FILE} (the training job writes it "
                                f"to output/data/{REPORT_DIR}/, in its output.tar.gz)")
    if not (directory / BASELINE_FILE).is_file():
        raise FileNotFoundError(f"the evaluation report at {source} has no {BASELINE_FILE} (each test image's "
                                f"prediction, size and brightness): it predates drift reports; train again")
    return (json.loads((directory / METRICS_FILE).read_text()), json.loads((directory / BASELINE_FILE).read_text()))


def read_labels(path: Path, class_names: list[str]) -> dict[tuple[str, int], int]:
    """The true classes of captured images, from a file in SageMaker Model Monitor's ground-truth format.

    One JSON record a line: `{"groundTruthData": {"data": "<label>", "encoding": "CSV"},
    "eventMetadata": {"eventId": "<id>"}, "eventVersion": "0"}`, the id being the capture's
    `eventMetadata.inferenceId` where it has one, else its `eventId`, as Model Monitor merges
    ground truth (AWS, "Ingest Ground Truth labels and merge them with predictions"); a label is a
    class folder name, its label (without the NNN. prefix) or a class id; a batched request has
    one label per image, comma-separated (CSV) or as a JSON list (encoding JSON).

    Returns:
        (inferenceId or eventId, image index in the request) → class id.

    Raises:
        ValueError: a line that is not such a record, or a label no class has.
    """
    known = {**{str(i): i for i in range(len(class_names))}, **{name: i for i, name in enumerate(class_names)},
             **{label_of(name): i for i, name in enumerate(class_names)}}
    labels = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            data, encoding = record["groundTruthData"]["data"], record["groundTruthData"].get("encoding", "CSV")
            event = str(record["eventMetadata"]["eventId"])
            values = (json.loads(data) if encoding == "JSON" else data.split(","))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{path}:{number}: not a ground-truth record ({{\"groundTruthData\": {{\"data\": ..., "
                             f"\"encoding\": \"CSV\"}}, \"eventMetadata\": {{\"eventId\": ...}}}})") from None
        for index, value in enumerate(values if isinstance(values, list) else [values]):
            if str(value).strip() not in known:
                raise ValueError(f"{path}:{number}: label {value!r} is none of the model's {len(class_names)} classes")
            labels[(event, index)] = known[str(value).strip()]
    return labels


def values(baseline: dict[str, Any], capture: Capture) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per continuous figure of `FIGURES` the captures measured: (test channel's, endpoint's) values, float."""
    pairs = {}
    for key, _, _ in FIGURES:
        observed = [getattr(o, key) for o in capture.observations if getattr(o, key) is not None]
        if observed:
            pairs[key] = (np.array(baseline[key], dtype=float), np.array(observed, dtype=float))
    return pairs


def compare(summary: dict[str, Any], baseline: dict[str, Any], capture: Capture,
            labels: dict[tuple[str, int], int] | None = None) -> dict[str, Any]:
    """Every figure of the report, as drift.json holds them; see statistics for each.

    Returns:
        `verdict` (the worst figure's), `capture` and `reference` (counts, the test channel's
        accuracy and ECE), `thresholds` and their source, `class_mix`
        (`statistics.class_mix`), per figure of `FIGURES` `statistics.continuous` (None where
        nothing was captured), `labels` (None without labels: else how many were `given` and
        how many `matched` a captured image, on `Observation.ground_truth_id`), and
        `calibration` (None without matched labels).

    Raises:
        CaptureError: a captured class id the model does not have (another model's capture?);
            `read` with the report's class names says which file and line.
    """
    class_names = [row["class_name"] for row in summary["per_class"]]
    observations = capture.observations
    predicted = [o for o in observations if o.class_id is not None]
    if any(not 0 <= o.class_id < len(class_names) for o in predicted):
        raise CaptureError(f"the capture holds class ids outside the report's {len(class_names)} classes "
                           f"(0 to {len(class_names) - 1}): is it another model's endpoint?")
    result: dict[str, Any] = {
        "capture": {"files": capture.files, "records": capture.records, "refused": capture.refused,
                    "images": len(observations), "predictions": len(predicted),
                    "measured": sum(o.width is not None for o in observations)},
        "reference": {key: summary[key] for key in ("channel", "images", "accuracy", "ece")},
        "thresholds": {"psi_watch": statistics.PSI_WATCH, "psi_drift": statistics.PSI_DRIFT,
                       "source": "Siddiqi, Credit Risk Scorecards, Wiley 2006, as reported by Yurdakul, Statistical "
                                 "Properties of Population Stability Index, Western Michigan University 2018",
                       "too_few_images": "expected_psi >= psi_watch: (bins - 1) * (1/N + 1/M), the expected PSI of "
                                         "two samples of one distribution (Yurdakul 2018)"},
        "class_mix": None, "labels": None, "calibration": None, **{key: None for key, _, _ in FIGURES},
    }
    if predicted:
        result["class_mix"] = statistics.class_mix(np.array(baseline["predicted"]),
                                                   np.array([o.class_id for o in predicted]), class_names)
    for key, (reference, observed) in values(baseline, capture).items():
        result[key] = statistics.continuous(reference, observed)
    labelled = [(o, labels[(o.ground_truth_id, o.index)]) for o in predicted
                if labels and (o.ground_truth_id, o.index) in labels]
    if labels is not None:
        result["labels"] = {"given": len(labels), "matched": len(labelled)}
    if labelled:
        result["calibration"] = statistics.calibration(np.array([o.confidence for o, _ in labelled]),
                                                       np.array([o.class_id == t for o, t in labelled]))
    parts = [result[key]["verdict"] for key in ("class_mix", *(k for k, _, _ in FIGURES)) if result[key]]
    result["verdict"] = statistics.worst(parts)
    return result


def _summary_rows(result: dict[str, Any]) -> tuple[list[list], list[str]]:
    rows, css = [], []
    if result["class_mix"]:
        rows.append(["class mix (predicted)", f"{result['class_mix']['psi']:.4f}",
                     f"{result['class_mix']['expected_psi']:.4f}", result["class_mix"]["verdict"], "", "", "", ""])
        css.append(VERDICT_CSS[result["class_mix"]["verdict"]])
    for key, name, _ in FIGURES:
        f = result[key]
        if f:
            rows.append([name, f"{f['psi']:.4f}", f"{f['expected_psi']:.4f}", f["verdict"], f"{f['ks_statistic']:.4f}",
                         f"{f['ks_pvalue']:.3g}", f"{f['reference_mean']:.4g}", f"{f['observed_mean']:.4g}"])
            css.append(VERDICT_CSS[f["verdict"]])
    return rows, css


def page(result: dict[str, Any], pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> Page:
    """The report page of `compare`'s `result`: the verdict, a row per figure, then each figure's
    pictures (`pairs`: `values`)."""
    captured, reference = result["capture"], result["reference"]
    out = Page(f"Prediction drift: {result['verdict']}")
    out.text(f"{captured['images']} images the endpoint was sent ({captured['records']} captured requests in "
             f"{captured['files']} files; {captured['refused']} refused by the server and left out; "
             f"{captured['predictions']} with their prediction, {captured['measured']} with their pixels) against "
             f"the {reference['images']} images of the {reference['channel']} channel in the evaluation report.")
    rows, css = _summary_rows(result)
    out.table(["figure", "PSI", "expected PSI without drift", "verdict", "KS D", "KS p-value", "test channel mean",
               "endpoint mean"], rows, css)
    t = result["thresholds"]
    out.text(f"PSI, the population stability index: Σ (endpoint share − test share) · ln(endpoint share / test "
             f"share) over the classes, or over the test channel's deciles of a continuous figure; a bin one "
             f"side has no image in counts as a share of {statistics.EMPTY_SHARE:g} (this project's choice, "
             f"not a published value). Below {t['psi_watch']} no drift, {t['psi_watch']} to {t['psi_drift']} "
             f"watch, {t['psi_drift']} and over drift: the usual rule of thumb ({t['source']}). Those thresholds "
             f"ignore how many images there are: two samples of one distribution, N test images and M "
             f"endpoint images in B bins, have an expected PSI of about (B − 1) · (1/N + 1/M) (Yurdakul 2018): "
             f"the column \"expected PSI without drift\". Where it reaches {t['psi_watch']}, the PSI cannot tell "
             f"drift from chance and the row's verdict is \"{statistics.TOO_FEW}\". The verdict is the worst "
             f"row's among those with enough images (\"{statistics.TOO_FEW}\" when none has). KS: the two-sample "
             f"Kolmogorov-Smirnov statistic D (the largest gap between the two cumulative distributions) and its "
             f"p-value, for information: with thousands of images even a harmless difference has a tiny p-value.")
    if result["class_mix"]:
        out.heading("Class mix")
        per_class = result["class_mix"]["per_class"]
        out.plot("drift_class_mix", plots.class_mix(per_class, [label_of(r["class_name"]) for r in per_class]),
                 "The share of each predicted class on the test channel (blue) and on the endpoint (orange).")
        out.table(["class", "test channel share", "endpoint share", "PSI term"],
                  [[label_of(r["class_name"]), f"{r['reference_share']:.4f}", f"{r['observed_share']:.4f}",
                    f"{r['psi']:.4f}"] for r in per_class])
    for key, name, unit in FIGURES:
        if not result[key]:
            continue
        out.heading(name.capitalize())
        tested, sent = pairs[key]
        if len(set(tested.tolist()) | set(sent.tolist())) == 1:  # nothing to draw: one value throughout
            out.text(f"Every image on both sides has {name} {tested[0]:g} ({unit}).")
            continue
        out.plot(f"drift_{key}", plots.distribution(name, unit, tested, sent, result[key]),
                 f"The {name} of the test channel's images (blue) and of the endpoint's (orange).")
    _calibration(out, result, reference)
    return out


def _calibration(out: Page, result: dict[str, Any], reference: dict[str, Any]) -> None:
    from image_classifier.evaluation.plots import reliability_diagram

    out.heading("Calibration")
    cal, given = result["calibration"], result["labels"]
    if given:
        out.text(f"{given['matched']} of {given['given']} labels matched a captured request (on the capture's "
                 f"inferenceId where it has one, else its eventId, as Model Monitor merges ground truth).")
    if not cal:
        out.text("The endpoint's accuracy and calibration are unknown." if given else
                 "No labels were given (--labels): the endpoint's accuracy and calibration are unknown.")
        return
    out.table(["", "images", "accuracy", "ECE"],
              [["test channel", reference["images"], f"{reference['accuracy']:.4f}", f"{reference['ece']:.4f}"],
               ["endpoint (labelled)", cal["images"], f"{cal['accuracy']:.4f}", f"{cal['ece']:.4f}"]])
    out.plot("drift_reliability", reliability_diagram(cal["calibration_bins"], cal["ece"]),
             "The endpoint's labelled predictions: accuracy against confidence per bin, as the evaluation report "
             "draws the test channel's (ECE: Guo et al. 2017, 15 bins).")


def write(result: dict[str, Any], pairs: dict[str, tuple[np.ndarray, np.ndarray]], html: Path,
          json_path: Path | None) -> None:
    """The page at `html` (its PNGs beside it) and, with `json_path`, `result` as JSON."""
    html.parent.mkdir(parents=True, exist_ok=True)
    page(result, pairs).save(html)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))


@exit_on({FileNotFoundError: FAILED, ValueError: FAILED, CLIENT_ERROR: (FAILED, aws_error),
          BOTOCORE_ERROR: (FAILED, one_line)})
def main(capture_source: str, report_source: str, out: Path, json_path: Path | None = None,
         labels_path: Path | None = None) -> int:
    """`image-classifier drift`: read, compare, write, print the verdict and a line per figure.

    Bad input (no report, no capture, a file that is not a capture, undecodable bodies, bad
    labels) is an `error:` line on stderr and exit code 1, as are S3's refusals.
    """
    with tempfile.TemporaryDirectory() as workdir:
        summary, baseline = load_report(report_source, Path(workdir))
    class_names = [r["class_name"] for r in summary["per_class"]]
    labels = read_labels(labels_path, class_names) if labels_path else None
    capture = read(capture_source, class_names)
    result = compare(summary, baseline, capture, labels)
    write(result, values(baseline, capture), out, json_path)
    rows, _ = _summary_rows(result)
    print(f"verdict: {result['verdict']} ({result['capture']['images']} captured images against "
          f"{result['reference']['images']} of the {result['reference']['channel']} channel)")
    for row in rows:
        print(f"  {row[0]:<22} PSI {row[1]}  {row[3]}")
    print(f"report: {out}" + (f", figures: {json_path}" if json_path else ""))
    return 0
