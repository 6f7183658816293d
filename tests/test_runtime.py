"""The OpenVINO runtime: lossless at fp32 with the precision said explicitly, bf16 and int8 only when asked,
files saved whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from image_classifier import models, runtime

SIZE = 64


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return models.create_model("resnet18", 10).train(False)


@pytest.fixture(scope="module")
def converted(network):
    return runtime.convert(network, SIZE)


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).standard_normal((5, 3, SIZE, SIZE), dtype=np.float32)


def eager(network, batch):
    with torch.inference_mode():
        return network(torch.from_numpy(batch)).numpy()


def test_fp32_is_lossless_and_says_so(network, converted, batch):
    """OpenVINO runs bf16 by default on a CPU that has it: fp32 must be asked for explicitly."""
    compiled = runtime.compile_model(converted, "fp32")
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    reference = eager(network, batch)
    for n in (1, 5):  # any batch size
        np.testing.assert_allclose(runtime.infer(compiled, batch[:n]), reference[:n], rtol=1e-4, atol=1e-5)


def test_bf16_only_when_asked(converted):
    assert str(runtime.compile_model(converted, "bf16").get_property("INFERENCE_PRECISION_HINT")) == \
        "<Type: 'bfloat16'>"


def test_int8_is_quantized_and_close(network, converted, batch):
    calibration = [np.random.default_rng(i).standard_normal((8, 3, SIZE, SIZE), dtype=np.float32) for i in range(4)]
    quantized = runtime.quantize(converted, calibration, images=32)
    assert any(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    assert not any(op.get_type_name() == "FakeQuantize" for op in converted.get_ops())
    reference = eager(network, batch)
    out = runtime.infer(runtime.compile_model(quantized, "int8"), batch)
    assert not np.allclose(out, reference, rtol=1e-4, atol=1e-5)  # lossy, as it says
    assert np.abs(out - reference).max() < 0.25 * np.abs(reference).max()


def test_saved_files_keep_fp32_weights(network, converted, batch, tmp_path):
    """`ov.save_model` compresses weights to fp16 unless told not to."""
    path = runtime.save(converted, tmp_path / "model.xml")
    assert path.with_suffix(".bin").stat().st_size > 4 * 0.9 * sum(p.numel() for p in network.parameters())
    reloaded = runtime.compile_model(path, "fp32")
    np.testing.assert_allclose(runtime.infer(reloaded, batch), eager(network, batch), rtol=1e-4, atol=1e-5)


def test_timm_backbone_converts():
    torch.manual_seed(0)
    network = models.create_model("efficientnet_lite0", 3).train(False)
    inputs = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)
    out = runtime.infer(runtime.compile_model(runtime.convert(network, SIZE), "fp32"), inputs)
    np.testing.assert_allclose(out, eager(network, inputs), rtol=1e-4, atol=1e-5)


def test_refusals(converted):
    with pytest.raises(ValueError, match="one of fp32, bf16, int8"):
        runtime.compile_model(converted, "fp16")
    with pytest.raises(ValueError, match="calibration images"):
        runtime.quantize(converted, [])
