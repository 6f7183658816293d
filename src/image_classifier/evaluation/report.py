"""Write the evaluation report folder: metrics.json, three PNGs and index.html, all at once or not at all."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from image_classifier.artifacts import label_of
from image_classifier.evaluation import metrics, plots
from image_classifier.evaluation.baseline import BASELINE_FILE
from image_classifier.html_page import Page

logger = logging.getLogger(__name__)

REPORT_FILE = "index.html"
METRICS_FILE = "metrics.json"
PICTURES = ("reliability", "confusion_matrix", "predictions")  # each saved as <name>.png


def write(directory: Path, probabilities: np.ndarray, targets: np.ndarray, class_names: list[str], channel: str,
          image: Callable[[int], Image.Image], overlays: plots.Overlays | None = None,
          top_k: int = metrics.TOP_K, precisions: dict[str, dict] | None = None,
          baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the report of the predictions into `directory`, replacing any report there.

    The files are written into a new folder beside it, which then takes its place: a failure
    leaves the previous report (or none), never half of one.

    Args:
        directory: the report folder (`<output data dir>/evaluation`).
        probabilities: (N, C) float32 softmax outputs; targets: (N,) int64 class ids.
        class_names: the C class folder names.
        channel: which channel the predictions are of; the page says it.
        image: the image of row i, as the model saw it (resized and cropped), for the grid.
        overlays: what the grid draws instead of the plain images (e.g. Grad-CAM), and
            the caption's sentence about it; None: the plain images.
        top_k: k of the top-k accuracy (at most C).
        precisions: the exported model's figures per precision (`metrics.precision_row`),
            on the same images; metrics.json holds them under `precisions` ({} when None) and
            the page shows a table of them when there are any.
        baseline: the channel's per-image figures (`baseline.figures`), written to
            baseline.json for `image-classifier drift`; None: no baseline.json.

    Returns:
        the figures, as metrics.json holds them (`metrics.summarize`, and `precisions`).
    """
    summary = {**metrics.summarize(probabilities, targets, class_names, channel, top_k),
               "precisions": precisions or {}}
    staging = directory.with_name(f".{directory.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    staging.mkdir(parents=True)
    try:
        (staging / METRICS_FILE).write_text(_to_json(summary))
        if baseline is not None:
            (staging / BASELINE_FILE).write_text(json.dumps(baseline, separators=(",", ":")))
        _page(summary, probabilities, targets, image, overlays).save(staging / REPORT_FILE)
        _replace(directory, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _to_json(summary: dict[str, Any]) -> str:
    """Indented JSON with each list of numbers on one line (a confusion matrix row per line)."""
    return re.sub(r"\[\s+([-0-9.e, \n]+?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]",
                  json.dumps(summary, indent=2))


def _replace(directory: Path, staging: Path) -> None:
    """Put `staging` where `directory` is: renames only (a folder cannot be renamed over a full one)."""
    previous = None
    if directory.exists():
        previous = directory.with_name(f"{staging.name}.old")
        directory.rename(previous)
    try:
        staging.rename(directory)
    except BaseException:
        if previous:
            previous.rename(directory)
        raise
    if previous:
        shutil.rmtree(previous, ignore_errors=True)


def _precisions(page: Page, summary: dict[str, Any]) -> None:
    """The table of the exported model's precisions, a row each, and what its columns mean."""
    page.heading("Precisions of the exported model")
    page.table(["precision", "top-1 accuracy", "macro F1", "agreement with fp32", "ECE", "images/s", "on this CPU"],
               [[name, f"{row['accuracy']:.4f}", f"{row['macro_f1']:.4f}", f"{row['agreement']:.4f}",
                 f"{row['ece']:.4f}", f"{row['images_per_second']:.1f}", "native" if row["native"] else "emulated"]
                for name, row in summary["precisions"].items()])
    page.text(f"The OpenVINO models the job exported, on the same {summary['images']} images: fp32 (lossless), "
              f"bf16 (the fp32 model computed in bfloat16) and int8 (quantized by NNCF), the precisions the "
              f"server offers (MODEL_SERVER_PRECISION). Agreement is the share of images whose top-1 class is the "
              f"fp32 model's. Images/s: this job's machine, in-process (no HTTP), forward passes only, in batches "
              f"of the server's default MODEL_SERVER_MAX_BATCH; 'emulated': this CPU lacks the precision's "
              f"instructions, so it ran slower than it would on one that has them.")


def _page(summary: dict[str, Any], probabilities: np.ndarray, targets: np.ndarray,
          image: Callable[[int], Image.Image], overlays: plots.Overlays | None) -> Page:
    labels = [row["label"] for row in summary["per_class"]]
    channel, k = summary["channel"], summary["top_k"]
    page = Page(f"Evaluation report: the {channel} channel")
    if channel != "test":
        page.text(f"There is no test channel: these are the predictions on the {channel} channel, which also "
                  f"chose the best epoch, so they flatter the model.")
    page.table(["images", "classes", "accuracy", f"top-{k} accuracy", "macro F1", "weighted F1", "ECE"],
               [[summary["images"], summary["classes"], f"{summary['accuracy']:.4f}",
                 f"{summary['top_k_accuracy']:.4f}", f"{summary['macro_f1']:.4f}", f"{summary['weighted_f1']:.4f}",
                 f"{summary['ece']:.4f}"]])
    page.text(f"Macro F1 is the plain mean of the classes' F1, weighted F1 the mean weighted by their images. "
              f"ECE, the expected calibration error (Guo et al. 2017, arXiv:1706.04599), is the mean gap between "
              f"confidence and accuracy over {len(summary['calibration_bins'])} equal-width confidence bins, "
              f"weighted by the bins' images. All figures are in {METRICS_FILE}.")
    if summary["precisions"]:
        _precisions(page, summary)

    page.heading("Reliability")
    page.plot("reliability", plots.reliability_diagram(summary["calibration_bins"], summary["ece"]),
              "How often the predictions of each confidence bin were right (blue bars) and how sure they were "
              "(red lines): hatching above a bar is over-confidence, inside it under-confidence; on the dashed "
              "diagonal a model is calibrated. Below: the images in each bin (log scale).")

    page.heading("Confusion matrix")
    confusion = np.array(summary["confusion_matrix"])
    order = ("Classes are in a hierarchical-clustering order, so that classes confused with each other sit side by "
             "side and confusions show as blocks near the diagonal." if len(labels) > plots.NUMBERS_UP_TO else "")
    page.plot("confusion_matrix", plots.confusion_matrix(confusion, labels),
              f"Rows are the true classes, normalised to 1; columns the predicted ones. {order} "
              f"Square-root colour scale.")
    page.text(f"The {len(summary['most_confused'])} most confused pairs (of at most {metrics.MOST_CONFUSED}):")
    page.table(["true", "predicted", "images", "share of the true class"],
               [[label_of(p["true"]), label_of(p["predicted"]), p["count"], f"{p['share']:.3f}"]
                for p in summary["most_confused"]])

    page.heading("The worst predictions")
    rows = [int(r) for r in plots.grid_order(probabilities, targets)]
    images = [image(r) for r in rows]
    if overlays:
        images = overlays.draw(rows, images)
    page.plot("predictions", plots.predictions_grid(images, rows, probabilities, targets, labels),
              "The most confident wrong predictions first (red titles), then the least confident right ones "
              "(green), as the model saw the images: true label, predicted label and its probability."
              + (f" {overlays.caption}" if overlays else ""))

    page.heading("Per class")
    page.table(["class", "precision", "recall", "F1", "images"],
               [[r["class_name"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", r["support"]]
                for r in summary["per_class"]])
    return page

