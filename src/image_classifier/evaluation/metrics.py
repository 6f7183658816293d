"""The figures of an evaluation: per class precision, recall and F1, top-k, calibration error, confusions.

Inputs are plain arrays: `probabilities` (N, C) float32 (softmax outputs, rows sum to 1) and
`targets` (N,) int64 class ids. The figures come from scikit-learn where it has them; the
expected calibration error, which it has not for several classes, is computed here.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from image_classifier.artifacts import label_of

TOP_K = 5               # top-k accuracy with k = min(TOP_K, classes)
CALIBRATION_BINS = 15   # equal-width confidence bins of the ECE and the reliability diagram (Guo et al.'s M)
MOST_CONFUSED = 20      # (true, predicted) pairs kept in metrics.json and the page


def _f1_labels(targets: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The classes an average runs over: those in the targets or the predictions (scikit-learn's default).

    A class the channel has no image of and the model never predicts has no defined F1; it
    is left out rather than counted as 0. One predicted but absent counts, with F1 0.
    """
    return np.union1d(targets, predicted)


def macro_f1(predicted: np.ndarray, targets: np.ndarray) -> float:
    """The unweighted mean of the classes' F1 (scikit-learn's `average="macro"`), over `_f1_labels`."""
    from sklearn.metrics import f1_score

    return float(f1_score(targets, predicted, labels=_f1_labels(targets, predicted), average="macro",
                          zero_division=0))


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """The top-1 confidences in `bins` equal-width bins over (0, 1]: ((m-1)/M, m/M], as Guo et al.

    Returns:
        per bin `lower`, `upper`, `count`, and the mean `confidence` and `accuracy` of its
        predictions (None for an empty bin).
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges, right=True) - 1, 0, bins - 1)  # edges[m] < c <= edges[m+1]
    rows = []
    for m in range(bins):
        members = index == m
        count = int(members.sum())
        rows.append({"lower": float(edges[m]), "upper": float(edges[m + 1]), "count": count,
                     "confidence": float(confidence[members].mean()) if count else None,
                     "accuracy": float(correct[members].mean()) if count else None})
    return rows


def expected_calibration_error(bins: list[dict]) -> float:
    """ECE = Σ_m |B_m| / n · |accuracy(B_m) − confidence(B_m)| over the bins of `calibration_bins`.

    The gap between how often the model is right and how sure it says it is, weighted by how
    many predictions fall in each confidence bin: 0 for a perfectly calibrated model. As
    defined in Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural Networks",
    ICML 2017 (https://arxiv.org/abs/1706.04599), section 2, with M = 15 bins as there.
    """
    n = sum(b["count"] for b in bins)
    return sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) if n else 0.0


def top_k_accuracy(probabilities: np.ndarray, targets: np.ndarray, k: int) -> float:
    """The share of images whose class is among the `k` most probable (scikit-learn's top_k_accuracy_score)."""
    from sklearn.metrics import top_k_accuracy_score

    classes = probabilities.shape[1]
    if k >= classes:
        return 1.0  # every class is in the top k (scikit-learn warns that it is meaningless)
    return float(top_k_accuracy_score(targets, probabilities, k=k, labels=np.arange(classes)))


def confused_pairs(confusion: np.ndarray, class_names: list[str], most: int = MOST_CONFUSED) -> list[dict]:
    """The off-diagonal cells of `confusion` (rows true, columns predicted), most images first.

    Returns:
        up to `most` of `{"true", "predicted", "count", "share"}`, `share` being the part of
        the true class's images predicted as the other; sorted by count, then share, then ids.
    """
    support = confusion.sum(axis=1)
    pairs = [(int(confusion[t, p]), confusion[t, p] / support[t], t, p)
             for t, p in zip(*np.nonzero(confusion)) if t != p]
    pairs.sort(key=lambda x: (-x[0], -x[1], x[2], x[3]))
    return [{"true": class_names[t], "predicted": class_names[p], "count": count, "share": float(share)}
            for count, share, t, p in pairs[:most]]


def summarize(probabilities: np.ndarray, targets: np.ndarray, class_names: list[str], channel: str,
              top_k: int = TOP_K) -> dict[str, Any]:
    """Every figure of the report, as metrics.json holds them.

    Args:
        probabilities: (N, C) float32, softmax outputs in class-id order.
        targets: (N,) int64 true class ids.
        class_names: the C class folder names.
        channel: which channel the predictions are of (test, or valid without a test channel).
        top_k: k of the top-k accuracy, at most C.

    Returns:
        channel, images, classes, accuracy, top_k and top_k_accuracy, macro_f1, weighted_f1,
        ece and its calibration bins, per_class (class_id, class_name, label, precision,
        recall, f1, support), most_confused and the confusion_matrix (rows true, columns predicted).
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    classes = len(class_names)
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    labels = np.arange(classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero_division=0 says what an undefined ratio is
        precision, recall, f1, support = precision_recall_fscore_support(targets, predicted, labels=labels,
                                                                         zero_division=0)
        averaged = {average: precision_recall_fscore_support(targets, predicted, average=average, zero_division=0,
                                                             labels=_f1_labels(targets, predicted))[2]
                    for average in ("macro", "weighted")}
    confusion = confusion_matrix(targets, predicted, labels=labels)
    bins = calibration_bins(confidence, predicted == targets)
    k = min(top_k, classes)
    return {
        "channel": channel, "images": len(targets), "classes": classes,
        "accuracy": float((predicted == targets).mean()),
        "top_k": k, "top_k_accuracy": top_k_accuracy(probabilities, targets, k),
        "macro_f1": float(averaged["macro"]), "weighted_f1": float(averaged["weighted"]),
        "ece": expected_calibration_error(bins), "calibration_bins": bins,
        "per_class": [{"class_id": i, "class_name": name, "label": label_of(name), "precision": float(precision[i]),
                       "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(class_names)],
        "most_confused": confused_pairs(confusion, class_names),
        "confusion_matrix": confusion.tolist(),
    }


def precision_row(probabilities: np.ndarray, targets: np.ndarray, reference: np.ndarray, seconds: float,
                  native: bool) -> dict[str, Any]:
    """The figures of one precision of the exported model (`metrics.json`'s `precisions` rows).

    Args:
        probabilities: (N, C) float32 softmax outputs of the model at this precision.
        targets: (N,) int64 true class ids.
        reference: (N,) int64 top-1 class ids of the fp32 exported model, which the
            `agreement` is measured against (fp32's own row: 1.0).
        seconds: wall-clock seconds the model's forward passes over the N images took.
        native: whether this CPU runs the precision in hardware (else emulated).

    Returns:
        `accuracy` (top-1, 0-1), `macro_f1`, `agreement` (the share of images whose top-1 is
        fp32's), `ece` (as the report's, `CALIBRATION_BINS` bins), `images_per_second` and `native`.
    """
    predicted = probabilities.argmax(axis=1)
    correct = predicted == targets
    return {"accuracy": float(correct.mean()), "macro_f1": macro_f1(predicted, targets),
            "agreement": float((predicted == reference).mean()),
            "ece": expected_calibration_error(calibration_bins(probabilities.max(axis=1), correct)),
            "images_per_second": len(targets) / seconds, "native": bool(native)}


def format_table(summary: dict[str, Any], width: int = 24) -> str:
    """The per-class figures as text for the job's log: one column of classes, three past 30 classes.

    Classes run down the columns, in class-id order; labels are cut to `width` characters.
    """
    rows = summary["per_class"]
    columns = 1 if len(rows) <= 30 else 3
    cell = f"{{:<{width}}} {{:>5}} {{:>5}} {{:>5}} {{:>5}}"
    header = "   ".join([cell.format("class", "prec", "rec", "f1", "n")] * columns)
    cells = [cell.format(r["label"][:width], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
                         r["support"]) for r in rows]
    height = -(-len(cells) // columns)
    lines = ["   ".join(cells[c * height + i] for c in range(columns) if c * height + i < len(cells))
             for i in range(height)]
    return "\n".join([header, *lines])
