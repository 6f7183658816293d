"""The report's pictures: reliability diagram, confusion matrix, and a grid of the worst predictions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from image_classifier.html_page import subplots

GRID_COLUMNS = 6
GRID_SIZE = 24            # images in the predictions grid: 4 rows of 6
NUMBERS_UP_TO = 15        # classes up to which each cell of the confusion matrix shows its share
MIN_TICK_POINTS = 4.0     # the smallest tick label font; with more classes than fit, every n-th is labelled
RIGHT, WRONG = "tab:green", "tab:red"

@dataclass(frozen=True)
class Overlays:
    """What the predictions grid draws instead of the plain images (e.g. Grad-CAM heat-maps).

    `draw(rows, images)`: given the grid's rows (indices into the predictions) and their
    images as the model saw them, the images to draw, of the same sizes; `caption`: a
    sentence the page adds to the grid's caption to say what is drawn.
    """

    draw: Callable[[list[int], list[Image.Image]], list[Image.Image]]
    caption: str


def reliability_diagram(bins: list[dict], ece: float):
    """Accuracy against confidence per bin, the gap to the diagonal, and each bin's count below."""
    fig, (top, bottom) = subplots(2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = bins[0]["upper"] - bins[0]["lower"]
    filled = [b for b in bins if b["count"]]
    lefts = np.array([b["lower"] for b in filled])
    accuracy = np.array([b["accuracy"] for b in filled])
    confidence = np.array([b["confidence"] for b in filled])
    top.bar(lefts, accuracy, width, align="edge", color="tab:blue", edgecolor="black", label="accuracy")
    top.bar(lefts, confidence - accuracy, width, bottom=accuracy, align="edge", fill=False, hatch="//",
            edgecolor="tab:red", label="gap to the mean confidence")
    top.hlines(confidence, lefts, lefts + width, color="tab:red", linewidth=2)
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set(ylim=(0, 1), ylabel="accuracy")
    top.set_title(f"Reliability diagram: ECE = {ece:.4f} ({len(bins)} bins)", pad=28)
    top.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)  # off the bars
    top.grid(alpha=0.3)
    counts = [b["count"] for b in bins]
    bottom.bar([b["lower"] for b in bins], counts, width, align="edge", color="gray", edgecolor="black")
    for b in filled:
        bottom.annotate(str(b["count"]), (b["lower"] + width / 2, b["count"]), ha="center", va="bottom", fontsize=7)
    bottom.set(xlim=(0, 1), yscale="log", ylim=(0.5, max(counts) * 4), xlabel="confidence (top-1 probability)",
               ylabel="images")
    return fig


def cluster_order(confusion: np.ndarray) -> np.ndarray:
    """A class order in which classes confused with each other sit side by side.

    Average-linkage clustering (scipy, with optimal leaf ordering) on the distance 1 − s,
    `s` being the share of one class's images predicted as the other, averaged both ways.
    Without any confusion, the class order.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    shares = _row_normalised(confusion)
    np.fill_diagonal(shares, 0.0)
    similarity = (shares + shares.T) / 2
    if len(confusion) < 3 or not similarity.any():
        return np.arange(len(confusion))
    distance = 1.0 - similarity
    np.fill_diagonal(distance, 0.0)
    return leaves_list(linkage(squareform(distance, checks=False), method="average", optimal_ordering=True))


def _row_normalised(confusion: np.ndarray) -> np.ndarray:
    support = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, support, out=np.zeros(confusion.shape), where=support > 0)


def confusion_matrix(confusion: np.ndarray, labels: Sequence[str]):
    """The row-normalised confusion matrix, on a square-root colour scale.

    The square root makes one image in a class of a few show; the colour bar reads in shares.
    Up to NUMBERS_UP_TO classes: class order, and each cell shows its share. Past that: no
    numbers, and the classes in `cluster_order`, so that confusions gather near the diagonal.
    Every class is labelled in a font that fits its row (133 classes: 5 points, legible at full
    size); past about 200 classes, where that would be under MIN_TICK_POINTS, every n-th.
    """
    from matplotlib.colors import PowerNorm

    classes = len(labels)
    few = classes <= NUMBERS_UP_TO
    order = np.arange(classes) if few else cluster_order(confusion)
    shares = _row_normalised(confusion)[np.ix_(order, order)]
    side = min(16.0, max(6.0, 0.11 * classes + 3))
    fig, ax = subplots(figsize=(side + 1.5, side))
    image = ax.imshow(shares, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label="share of the true class")
    # a label at most 60 % of a row's height (72 points an inch)
    fontsize = min(8.0, 0.6 * 72 * side / classes)
    step = 1 if fontsize >= MIN_TICK_POINTS else int(-(-MIN_TICK_POINTS // fontsize))
    ticks = np.arange(0, classes, step)
    names = [labels[i] for i in order[ticks]]
    ax.set_xticks(ticks, names, rotation=90, fontsize=max(fontsize, MIN_TICK_POINTS))
    ax.set_yticks(ticks, names, fontsize=max(fontsize, MIN_TICK_POINTS))
    if few:
        for t, p in zip(*np.nonzero(shares)):
            ax.text(p, t, f"{shares[t, p]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if shares[t, p] > 0.5 else "black")
    shown = "" if step == 1 else f"; one class in {step} labelled"
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix, rows normalised ({classes} classes, "
                                                    f"{'class' if few else 'clustered'} order{shown})")
    return fig


def grid_order(probabilities: np.ndarray, targets: np.ndarray, size: int = GRID_SIZE) -> np.ndarray:
    """The rows of the predictions grid, worst first.

    The wrong predictions, the most confident first, then the right ones, the least confident
    first: the mistakes that matter most, then the right answers the model was least sure of.
    """
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != targets)
    right = np.flatnonzero(predicted == targets)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    right = right[np.argsort(confidence[right], kind="stable")]
    return np.concatenate([wrong, right])[:size]


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def predictions_grid(images: list[Image.Image], rows: Sequence[int], probabilities: np.ndarray,
                     targets: np.ndarray, labels: Sequence[str], columns: int = GRID_COLUMNS):
    """The images of `rows`, each titled with its true and predicted label and the probability.

    Titles are green when the prediction is right, red when wrong.
    """
    count = len(rows)
    height = max(1, -(-count // columns))
    fig, axes = subplots(height, columns, figsize=(2.6 * columns, 2.9 * height), squeeze=False,
                         gridspec_kw={"wspace": 0.05, "hspace": 0.3})
    for ax in axes.flat:
        ax.axis("off")
    for ax, row, image in zip(axes.flat, rows, images):
        predicted = int(probabilities[row].argmax())
        ax.imshow(image)
        ax.set_title(f"true: {_short(labels[targets[row]])}\npred: {_short(labels[predicted])} "
                     f"({probabilities[row, predicted]:.2f})", fontsize=9,
                     color=RIGHT if predicted == targets[row] else WRONG)
    return fig
