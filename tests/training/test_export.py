"""export=openvino: the training job writes the serving runtime's files beside model.pth, whole or not at all,
and its evaluation report measures each precision of them.

The jobs run in a fresh interpreter each (tests/isolated.py): OpenVINO stays out of pytest's process.
"""

from __future__ import annotations

import json
import logging
from unittest import mock

import numpy as np
import pytest
import torch

from image_classifier import artifacts, runtime
from image_classifier.evaluation import REPORT_DIR
from image_classifier.evaluation import report as evaluation_report
from image_classifier.training import export
from image_classifier.training.config import TrainConfig
from image_classifier.training.job import run
from tests.conftest import TINY_JOB
from tests.isolated import isolated


def read_model(path):
    import openvino as ov

    return ov.Core().read_model(str(path))


def log_of(name: str) -> list[str]:
    """The messages (and exceptions) logger `name` will log, as they come."""
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(f"{record.getMessage()} {record.exc_info and record.exc_info[1]}")
    logging.getLogger(name).addHandler(handler)
    logging.getLogger(name).setLevel(logging.INFO)
    return records


def report_of(env) -> tuple[dict, str]:
    """The evaluation report's metrics.json and page."""
    folder = env.output_data_dir / REPORT_DIR
    return (json.loads((folder / evaluation_report.METRICS_FILE).read_text()),
            (folder / evaluation_report.REPORT_FILE).read_text())


@isolated
def job_writes_fp32_and_int8(env):
    log = log_of("image_classifier.training.evaluation")
    run(env, TrainConfig(**{**TINY_JOB, "export": "openvino"}))
    folder = env.model_dir / export.EXPORT_DIR
    assert sorted(p.name for p in folder.iterdir()) == ["model-int8.bin", "model-int8.xml", "model.bin", "model.xml"]
    assert not [p for p in env.model_dir.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert folder.stat().st_mode & 0o755 == 0o755  # the serving image's user reads it (mkdtemp makes 0700)
    state_dict, spec = artifacts.load_model(env.model_dir)
    model = spec.create_model()
    model.load_state_dict(state_dict)
    images = np.concatenate(export.calibration_batches(env.channel_dir("test"), spec, images=24))
    with torch.inference_mode():
        reference = model.train(False)(torch.from_numpy(images)).numpy()
    fp32 = runtime.infer(runtime.compile_model(folder / export.FILES["fp32"], "fp32"), images)
    np.testing.assert_allclose(fp32, reference, rtol=1e-4, atol=1e-5)
    int8_model = read_model(folder / export.FILES["int8"])
    assert any(op.get_type_name() == "FakeQuantize" for op in int8_model.get_ops())
    inputs = [op.input_value(0).get_node().get_type_name() for op in int8_model.get_ordered_ops()
              if op.get_type_name() == "Convolution"]
    assert inputs[0] == "Parameter" and "FakeQuantize" in inputs[1:]  # the first convolution reads the float image
    assert runtime.infer(runtime.compile_model(folder / export.FILES["int8"], "int8"), images).shape == reference.shape
    # the report's rows per precision, on the test channel's 24 images
    evaluation, page = report_of(env)
    rows = evaluation["precisions"]
    assert list(rows) == ["fp32", "bf16", "int8"]
    for name, row in rows.items():
        assert 0 <= min(row["accuracy"], row["macro_f1"], row["ece"]) <= max(row["accuracy"], row["macro_f1"]) <= 1
        assert 0 < row["agreement"] <= 1 and row["images_per_second"] > 0 and row["native"] == runtime.native(name)
        assert any(f"precision {name} on the test channel, 24 images: top-1 {row['accuracy']:.4f}" in r for r in log)
    assert rows["fp32"]["agreement"] == 1.0  # with itself
    assert rows["fp32"]["accuracy"] == pytest.approx(evaluation["accuracy"])  # lossless: the eager model's top-1
    assert rows["int8"]["ece"] != rows["fp32"]["ece"]  # another model: its probabilities differ
    assert "Precisions of the exported model" in page and "<td>int8</td>" in page


def test_the_job_writes_fp32_and_int8_files_and_fp32_is_the_model(opt_ml):
    job_writes_fp32_and_int8(opt_ml())


@isolated
def failed_export(env):
    def fail(ov_model, path):
        path.write_bytes(b"half")  # a file begun, then the disk fills
        raise OSError("no space left on device")

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(f"{record.getMessage()} {record.exc_info and record.exc_info[1]}")
    logging.getLogger("image_classifier.training.export").addHandler(handler)
    with mock.patch.object(runtime, "save", fail):
        metrics = run(env, TrainConfig(**{**TINY_JOB, "export": "openvino"}))
    assert "valid_accuracy" in metrics
    assert sorted(p.name for p in env.model_dir.iterdir()) == sorted([artifacts.CONFIG_FILE, artifacts.WEIGHTS_FILE])
    assert any("OpenVINO export failed" in r and "no space left" in r for r in records), records


def test_a_failed_export_leaves_no_folder_and_does_not_fail_the_job(opt_ml):
    failed_export(opt_ml())


def test_export_none_writes_nothing_and_the_report_has_no_precisions(opt_ml):
    env = opt_ml()
    run(env, TrainConfig(**{**TINY_JOB, "export": "none"}))
    assert not (env.model_dir / export.EXPORT_DIR).exists()
    assert (env.model_dir / artifacts.WEIGHTS_FILE).is_file()
    evaluation, page = report_of(env)
    assert evaluation["precisions"] == {} and "Precisions of the exported model" not in page


@isolated
def failed_measurement(env):
    log = log_of("image_classifier.training.evaluation")

    def no_plugin(*args, **kwargs):
        raise RuntimeError("no CPU plugin")

    with mock.patch.object(runtime, "compile_model", no_plugin):
        metrics = run(env, TrainConfig(**{**TINY_JOB, "export": "openvino"}))
    assert "test_accuracy" in metrics
    assert (env.model_dir / export.EXPORT_DIR / export.FILES["int8"]).is_file()  # the export is not undone
    evaluation, page = report_of(env)
    assert evaluation["precisions"] == {} and evaluation["images"] == 24  # the report, without the rows
    assert "Precisions of the exported model" not in page
    assert any("precisions could not be measured" in r and "no CPU plugin" in r for r in log), log


@pytest.mark.slow
def test_a_failed_measurement_of_the_precisions_leaves_the_job_and_its_report(opt_ml):
    failed_measurement(opt_ml())


def test_calibration_is_a_seeded_draw_through_the_eval_transforms(opt_ml):
    env = opt_ml()
    spec = artifacts.ModelSpec(arch="resnet18", num_classes=3, class_names=sorted(
        p.name for p in env.channel_dir("train").iterdir()), labels=["a", "b", "c"], image_size=32,
        resize_size=37, mean=[0.5] * 3, std=[0.5] * 3)
    (env.channel_dir("train") / spec.class_names[0] / "broken.png").write_bytes(b"not a png")
    batches = export.calibration_batches(env.channel_dir("train"), spec, images=40)
    assert [b.shape for b in batches] == [(16, 3, 32, 32), (16, 3, 32, 32), (8, 3, 32, 32)]
    assert all(b.dtype == np.float32 for b in batches)
    again = export.calibration_batches(env.channel_dir("train"), spec, images=40)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    assert min(b.min() for b in batches) >= -1.0 and max(b.max() for b in batches) <= 1.0  # mean = std = 0.5
