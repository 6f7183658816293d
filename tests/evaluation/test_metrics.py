"""The report's figures on a small case computed by hand, and the per-class table of the log."""

import numpy as np
import pytest

from image_classifier.evaluation import metrics

CLASSES = ["001.zero", "002.one", "003.two"]
# 8 predictions of 3 classes: (true class, probabilities of classes 0, 1, 2); no confidence on a bin edge
CASE = [
    (0, [0.90, 0.05, 0.05]),  # right, 0.90
    (0, [0.70, 0.20, 0.10]),  # right, 0.70
    (0, [0.30, 0.50, 0.20]),  # wrong (1), 0.50; the truth is second: in the top 2
    (1, [0.10, 0.85, 0.05]),  # right, 0.85
    (1, [0.15, 0.75, 0.10]),  # right, 0.75
    (1, [0.70, 0.25, 0.05]),  # wrong (0), 0.70; in the top 2
    (2, [0.62, 0.30, 0.08]),  # wrong (0), 0.62; the truth is third: not in the top 2
    (2, [0.05, 0.05, 0.90]),  # right, 0.90
]
TARGETS = np.array([t for t, _ in CASE], dtype=np.int64)
PROBABILITIES = np.array([p for _, p in CASE], dtype=np.float32)

# rows true, columns predicted:  true 0 -> [2, 1, 0], true 1 -> [1, 2, 0], true 2 -> [1, 0, 1]
CONFUSION = [[2, 1, 0], [1, 2, 0], [1, 0, 1]]
# predicted per class (column sums): 4, 3, 1; images per class (row sums): 3, 3, 2
# class 0: precision 2/4, recall 2/3, F1 = 2·TP / (2·TP + FP + FN) = 4 / (4 + 2 + 1) = 4/7
# class 1: precision 2/3, recall 2/3, F1 = 4 / (4 + 1 + 1) = 2/3
# class 2: precision 1/1, recall 1/2, F1 = 2 / (2 + 0 + 1) = 2/3
PER_CLASS = [(2 / 4, 2 / 3, 4 / 7, 3), (2 / 3, 2 / 3, 2 / 3, 3), (1.0, 1 / 2, 2 / 3, 2)]
MACRO_F1 = (4 / 7 + 2 / 3 + 2 / 3) / 3                  # = 40/63 ≈ 0.6349
WEIGHTED_F1 = (3 * 4 / 7 + 3 * 2 / 3 + 2 * 2 / 3) / 8   # = 53/84 ≈ 0.6310
ACCURACY = 5 / 8
TOP_2 = 7 / 8  # all but the 7th
# ECE, 15 bins of width 1/15: the confidences fall in (7/15, 8/15] 0.50 wrong; (9/15, 10/15] 0.62 wrong;
# (10/15, 11/15] 0.70 right and 0.70 wrong; (11/15, 12/15] 0.75 right; (12/15, 13/15] 0.85 right;
# (13/15, 14/15] 0.90 and 0.90 right. Σ |bin| / 8 · |accuracy − mean confidence|:
ECE = (1 / 8 * abs(0 - 0.50) + 1 / 8 * abs(0 - 0.62) + 2 / 8 * abs(0.5 - 0.70)
       + 1 / 8 * abs(1 - 0.75) + 1 / 8 * abs(1 - 0.85) + 2 / 8 * abs(1 - 0.90))  # = 0.265
# confusions: 2 -> 0 (1 of 2 images: 0.5), then 0 -> 1 and 1 -> 0 (1 of 3 each), by count, share, ids
MOST_CONFUSED = [("003.two", "001.zero", 1, 1 / 2), ("001.zero", "002.one", 1, 1 / 3),
                 ("002.one", "001.zero", 1, 1 / 3)]


def test_the_hand_computed_case():
    summary = metrics.summarize(PROBABILITIES, TARGETS, CLASSES, "test", top_k=2)

    assert summary["confusion_matrix"] == CONFUSION
    assert pytest.approx(0.265) == ECE
    assert (summary["accuracy"], summary["macro_f1"], summary["weighted_f1"], summary["ece"]) == pytest.approx(
        (ACCURACY, MACRO_F1, WEIGHTED_F1, ECE), abs=1e-6)
    assert (summary["top_k"], summary["top_k_accuracy"]) == (2, pytest.approx(TOP_2))
    for row, expected in zip(summary["per_class"], PER_CLASS, strict=True):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(expected)
    assert [r["label"] for r in summary["per_class"]] == ["zero", "one", "two"]
    for pair, expected in zip(summary["most_confused"], MOST_CONFUSED, strict=True):
        assert (pair["true"], pair["predicted"], pair["count"], pair["share"]) == pytest.approx(expected)
    filled = [(b["count"], b["accuracy"]) for b in summary["calibration_bins"] if b["count"]]
    assert filled == [(1, 0.0), (1, 0.0), (2, 0.5), (1, 1.0), (1, 1.0), (2, 1.0)]
    assert len(summary["calibration_bins"]) == 15
    assert metrics.macro_f1(PROBABILITIES.argmax(axis=1), TARGETS) == pytest.approx(MACRO_F1)


def test_top_k_is_at_most_the_classes():
    summary = metrics.summarize(PROBABILITIES, TARGETS, CLASSES, "test")
    assert (summary["top_k"], summary["top_k_accuracy"]) == (3, 1.0)


@pytest.mark.parametrize("confidence, correct, expected", [
    ([1.0, 1.0], [True, True], 0.0),           # sure and right: calibrated
    ([1.0, 1.0], [True, False], 0.5),          # sure, right half the time
    ([0.5, 0.5, 0.5, 0.5], [1, 1, 0, 0], 0.0),  # half sure, right half the time
    ([0.95, 0.55], [False, True], (0.95 + 0.45) / 2),
])
def test_expected_calibration_error(confidence, correct, expected):
    bins = metrics.calibration_bins(np.array(confidence), np.array(correct, dtype=bool))
    assert metrics.expected_calibration_error(bins) == pytest.approx(expected)


def test_a_bin_holds_its_upper_edge_not_its_lower():
    # Guo et al.'s bins are ((m - 1) / M, m / M]: each of the 15 upper edges lands in its own bin
    edges = np.linspace(0.0, 1.0, metrics.CALIBRATION_BINS + 1)
    bins = metrics.calibration_bins(edges[1:], np.ones(metrics.CALIBRATION_BINS, dtype=bool))
    assert [b["count"] for b in bins] == [1] * metrics.CALIBRATION_BINS


def test_a_class_neither_present_nor_predicted_is_left_out_of_the_averages():
    four = np.concatenate([PROBABILITIES, np.zeros((8, 1), np.float32)], axis=1)
    summary = metrics.summarize(four, TARGETS, [*CLASSES, "004.three"], "valid")
    assert summary["macro_f1"] == pytest.approx(MACRO_F1)
    assert summary["per_class"][3] == {"class_id": 3, "class_name": "004.three", "label": "three",
                                       "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


@pytest.mark.parametrize("classes, columns", [(3, 1), (133, 3)])
def test_format_table_is_compact(classes, columns):
    names = [f"{i + 1:03d}.{'Long_breed_name_' * 3}{i}" for i in range(classes)]
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(classes), size=4 * classes).astype(np.float32)
    table = metrics.format_table(metrics.summarize(probabilities, np.arange(4 * classes) % classes, names, "test"))
    lines = table.splitlines()
    assert len(lines) == 1 + -(-classes // columns)
    assert lines[0].count("prec") == columns and max(map(len, lines)) < 160
    assert "=" not in table  # nothing a metric regex could read


def test_a_precision_row_is_the_report_s_figures_and_the_agreement_with_the_reference():
    predicted = PROBABILITIES.argmax(axis=1)  # 0 0 1 1 1 0 0 2
    reference = predicted.copy()
    reference[[0, 3]] = 2  # the reference disagrees on 2 of the 8 images

    row = metrics.precision_row(PROBABILITIES, TARGETS, reference, seconds=0.5, native=False)

    assert (row["accuracy"], row["macro_f1"], row["ece"]) == pytest.approx((ACCURACY, MACRO_F1, ECE), abs=1e-6)
    assert row["agreement"] == pytest.approx(6 / 8)
    assert row["images_per_second"] == pytest.approx(16.0) and row["native"] is False
    assert metrics.precision_row(PROBABILITIES, TARGETS, predicted, 1.0, True)["agreement"] == 1.0
