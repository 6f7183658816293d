"""The report folder: metrics.json, valid PNGs the page shows, the grid's order and colours, atomic writes."""

import base64
import json

import numpy as np
import pytest
from matplotlib.colors import to_hex
from PIL import Image

from image_classifier.evaluation import plots, report
from tests.evaluation.test_metrics import CLASSES, ECE, MACRO_F1, PROBABILITIES, TARGETS, TOP_2, WEIGHTED_F1

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_of(row: int) -> Image.Image:
    return Image.new("RGB", (32, 32), (30 * row, 100, 200))


def test_the_report_folder(tmp_path):
    directory = tmp_path / "evaluation"
    report.write(directory, PROBABILITIES, TARGETS, CLASSES, "test", image_of, top_k=2)

    assert sorted(p.name for p in directory.iterdir()) == [
        "confusion_matrix.png", "index.html", "metrics.json", "predictions.png", "reliability.png"]
    saved = json.loads((directory / "metrics.json").read_text())
    assert (saved["channel"], saved["images"], saved["classes"], saved["top_k"]) == ("test", 8, 3, 2)
    assert (saved["macro_f1"], saved["weighted_f1"], saved["ece"], saved["top_k_accuracy"]) == pytest.approx(
        (MACRO_F1, WEIGHTED_F1, ECE, TOP_2), abs=1e-6)
    page = (directory / "index.html").read_text()
    for name in report.PICTURES:
        data = (directory / f"{name}.png").read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        with Image.open(directory / f"{name}.png") as png:
            png.verify()
        with Image.open(directory / f"{name}.png") as png:
            assert 300 <= png.width <= 2500 and 300 <= png.height <= 2500, (name, png.size)
        assert f'href="{name}.png"' in page and base64.b64encode(data).decode() in page, name
    assert "no test channel" not in page and "0.6349" in page  # the summary's macro F1
    assert saved["precisions"] == {} and "Precisions of the exported model" not in page  # none measured
    assert not [p for p in tmp_path.iterdir() if p.name != "evaluation"]  # no staging folder left


def test_without_a_test_channel_the_page_says_which(tmp_path):
    report.write(tmp_path / "evaluation", PROBABILITIES, TARGETS, CLASSES, "valid", image_of)
    assert "There is no test channel: these are the predictions on the valid channel" in (
        tmp_path / "evaluation" / "index.html").read_text()


def test_a_failed_report_leaves_the_previous_one_whole(tmp_path):
    directory = tmp_path / "evaluation"
    report.write(directory, PROBABILITIES, TARGETS, CLASSES, "test", image_of)
    before = {p.name: p.read_bytes() for p in directory.iterdir()}

    def broken(row):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        report.write(directory, PROBABILITIES[::-1], TARGETS, CLASSES, "test", broken)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["evaluation"]
    report.write(directory, PROBABILITIES[::-1].copy(), TARGETS, CLASSES, "test", image_of)  # and replaced later
    assert (directory / "metrics.json").read_bytes() != before["metrics.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["evaluation"]


def test_the_grid_shows_the_worst_mistakes_first():
    # wrong by confidence, highest first: #5 (0.70), #6 (0.62), #2 (0.50);
    # then right by confidence, lowest first: #1 (0.70), #4 (0.75), #3 (0.85), #0 and #7 (0.90)
    assert plots.grid_order(PROBABILITIES, TARGETS).tolist() == [5, 6, 2, 1, 4, 3, 0, 7]
    assert plots.grid_order(PROBABILITIES, TARGETS, size=2).tolist() == [5, 6]


def test_grid_titles_are_red_when_wrong_green_when_right():
    rows = plots.grid_order(PROBABILITIES, TARGETS).tolist()
    labels = ["zero", "one", "two"]
    fig = plots.predictions_grid([image_of(r) for r in rows], rows, PROBABILITIES, TARGETS, labels)
    titles = [(ax.get_title(), to_hex(ax.title.get_color())) for ax in fig.axes if ax.get_title()]
    red, green = to_hex(plots.WRONG), to_hex(plots.RIGHT)
    assert [colour for _, colour in titles] == [red] * 3 + [green] * 5
    assert titles[0][0] == "true: one\npred: zero (0.70)"
    assert titles[-1][0] == "true: two\npred: two (0.90)"
    assert len(fig.axes) == 12  # 2 rows of 6, the last 4 blank


def test_overlays_replace_the_grid_images(tmp_path):
    seen = []

    def overlays(rows, images):
        seen.append((rows, [img.size for img in images]))
        return [Image.new("RGB", img.size, (255, 0, 0)) for img in images]

    report.write(tmp_path / "evaluation", PROBABILITIES, TARGETS, CLASSES, "test", image_of,
                 overlays=plots.Overlays(overlays, "Red is everything here."))
    assert seen == [([5, 6, 2, 1, 4, 3, 0, 7], [(32, 32)] * 8)]
    assert "the model saw the images: true label, predicted label and its probability. Red is everything here." \
        in (tmp_path / "evaluation" / "index.html").read_text()
    with Image.open(tmp_path / "evaluation" / "predictions.png") as png:
        pixels = np.asarray(png.convert("RGB")).reshape(-1, 3)
    assert ((pixels == (255, 0, 0)).all(axis=1)).sum() > 8 * 100  # the red overlays were drawn


def test_confused_classes_sit_side_by_side_among_133():
    confusion = np.diag(np.full(133, 6))
    for true, predicted in ((3, 117), (117, 3), (40, 90)):
        confusion[true, true] -= 2
        confusion[true, predicted] += 2
    order = plots.cluster_order(confusion).tolist()
    assert sorted(order) == list(range(133))
    assert abs(order.index(3) - order.index(117)) == 1 and abs(order.index(40) - order.index(90)) == 1
    assert plots.cluster_order(np.diag(np.full(5, 3))).tolist() == [0, 1, 2, 3, 4]  # no confusion: class order

    ax = plots.confusion_matrix(confusion, [f"class {i}" for i in range(133)]).axes[0]
    assert len(ax.get_yticklabels()) == 133 and not ax.texts  # every class labelled, no numbers in cells
    assert "133 classes, clustered order)" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"class {i}" for i in order]


def test_a_few_classes_are_in_class_order_with_numbers():
    ax = plots.confusion_matrix(np.array([[2, 1, 0], [1, 2, 0], [1, 0, 1]]), ["zero", "one", "two"]).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["zero", "one", "two"]
    assert "3 classes, class order)" in ax.get_title()
    assert sorted(t.get_text() for t in ax.texts) == ["0.33", "0.33", "0.50", "0.50", "0.67", "0.67"]


def test_the_precisions_rows_are_in_metrics_json_and_a_table_of_the_page(tmp_path):
    row = {"accuracy": 0.625, "macro_f1": 0.6349, "agreement": 1.0, "ece": 0.265, "images_per_second": 812.25,
           "native": True}
    precisions = {"fp32": row, "bf16": {**row, "native": False},
                  "int8": {**row, "agreement": 0.875, "images_per_second": 2047.5}}
    directory = tmp_path / "evaluation"

    summary = report.write(directory, PROBABILITIES, TARGETS, CLASSES, "test", image_of, precisions=precisions)

    saved = json.loads((directory / "metrics.json").read_text())
    assert saved["precisions"] == summary["precisions"] == precisions
    assert list(saved["precisions"]) == ["fp32", "bf16", "int8"]
    page = (directory / "index.html").read_text()
    table = page[page.index("Precisions of the exported model"):]
    assert "<td>int8</td><td>0.6250</td><td>0.6349</td><td>0.8750</td><td>0.2650</td><td>2047.5</td><td>native" \
        in table.replace("\n", "").replace(" ", "")
    assert "<td>bf16</td>" in table and "emulated" in table
