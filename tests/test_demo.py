"""The demo end to end: Fashion-MNIST photos, the demo's fine-tuning job, a real server, predictions."""

import json
import re

import pytest

from image_classifier.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR
from image_classifier.demo import run_demo
from image_classifier.local import free_port
from image_classifier.training.metrics import METRICS_FILE


@pytest.mark.slow
def test_demo_fine_tunes_on_real_photos_and_prints_predictions(tmp_path, capfd):
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"{FASHION_MNIST_DIR} is missing: apt-get install dataset-fashion-mnist (.ci/run does)")
    code = run_demo(data_dir=tmp_path / "data", base_dir=tmp_path / "opt_ml", port=free_port())

    out = capfd.readouterr().out
    assert code == 0, out
    metrics = json.loads((tmp_path / "opt_ml" / "output" / "data" / METRICS_FILE).read_text())
    assert metrics["test_accuracy"] >= 0.75
    tables = re.findall(r"rank\s+label\s+class_id\s+probability\n((?:\s+\d+\s+\S+\s+\d+\s+[0-9.]+\n?){5})", out)
    assert len(tables) == 2, out
    labels = {line.split()[1] for table in tables for line in table.strip().splitlines()}
    assert labels <= set(FASHION_MNIST_CLASSES), labels
