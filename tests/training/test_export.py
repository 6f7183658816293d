"""export=openvino: the training job writes the serving runtime's files beside model.pth, whole or not at all.

The jobs run in a fresh interpreter each (tests/isolated.py): OpenVINO stays out of pytest's process.
"""

from __future__ import annotations

import logging
from unittest import mock

import numpy as np
import torch

from image_classifier import artifacts, runtime
from image_classifier.training import export
from image_classifier.training.config import TrainConfig
from image_classifier.training.job import run
from tests.conftest import TINY_JOB
from tests.isolated import isolated


def read_model(path):
    import openvino as ov

    return ov.Core().read_model(str(path))


@isolated
def job_writes_fp32_and_int8(env):
    run(env, TrainConfig(**{**TINY_JOB, "export": "openvino"}))
    folder = env.model_dir / export.EXPORT_DIR
    assert sorted(p.name for p in folder.iterdir()) == ["model-int8.bin", "model-int8.xml", "model.bin", "model.xml"]
    assert not [p for p in env.model_dir.iterdir() if p.name.startswith(".")]  # no staging folder left
    state_dict, spec = artifacts.load_model(env.model_dir)
    model = spec.create_model()
    model.load_state_dict(state_dict)
    images = np.concatenate(export.calibration_batches(env.channel_dir("test"), spec, images=24))
    with torch.inference_mode():
        reference = model.train(False)(torch.from_numpy(images)).numpy()
    fp32 = runtime.infer(runtime.compile_model(folder / export.FILES["fp32"], "fp32"), images)
    np.testing.assert_allclose(fp32, reference, rtol=1e-4, atol=1e-5)
    assert any(op.get_type_name() == "FakeQuantize" for op in read_model(folder / export.FILES["int8"]).get_ops())
    assert runtime.infer(runtime.compile_model(folder / export.FILES["int8"], "int8"), images).shape == reference.shape


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


def test_export_none_writes_nothing(opt_ml):
    env = opt_ml()
    run(env, TrainConfig(**{**TINY_JOB, "export": "none"}))
    assert not (env.model_dir / export.EXPORT_DIR).exists()
    assert (env.model_dir / artifacts.WEIGHTS_FILE).is_file()


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
