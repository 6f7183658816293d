"""scripts/bench_runtimes.py: every runtime measured in one run, ratios to TorchScript, agreement on photos."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from image_classifier.benchmarks import runtimes
from tests.conftest import write_digit_tree

ROOT = Path(__file__).resolve().parents[2]


def test_one_run_measures_every_runtime_and_their_agreement(tmp_path):
    """As a user runs it: the script, in its own process (OpenVINO stays out of pytest's: tests/isolated.py)."""
    data = write_digit_tree(tmp_path / "data", 3, {"test": 12}, size=32)
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_runtimes.py"), "--model", "resnet18", "--image-size", "32",
         "--classes", "3", "--images", str(data), "--eval", "8", "--rounds", "1", "--seconds", "0.05",
         "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "openvino int8" in result.stdout and "top-1 agreement" in result.stdout
    figures = json.loads(out.read_text())
    names = ["eager fp32", "torchscript fp32", "openvino fp32", "openvino bf16", "openvino int8"]
    assert list(figures["speed"]) == names == list(figures["agreement"])
    assert figures["speed"][runtimes.BASELINE]["vs_torchscript"] == 1.0
    assert all(f["batch1_p50_ms"] > 0 and f["batch16_images_per_second"] > 0 for f in figures["speed"].values())
    assert figures["agreement"]["eager fp32"] == {"top1_agreement": 1.0, "max_logit_change": 0.0,
                                                 "logit_scale": figures["agreement"]["eager fp32"]["logit_scale"]}
    assert figures["agreement"]["openvino fp32"]["top1_agreement"] == 1.0


def test_agreement_counts_changed_top1():
    images = np.zeros((4, 3, 8, 8), np.float32)
    reference = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
    flipped = reference.copy()
    flipped[0] = [0, 2]
    result = runtimes.agreement({"eager fp32": lambda b: reference[: len(b)], "other": lambda b: flipped[: len(b)]},
                                images)
    assert result["other"]["top1_agreement"] == 0.75 and result["other"]["max_logit_change"] == 2.0
