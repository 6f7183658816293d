"""The OpenVINO runtime: lossless at fp32 with the precision said explicitly, bf16 and int8 only when asked,
files saved whole. Each test runs in a fresh interpreter (tests/isolated.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from image_classifier import models, runtime
from tests.isolated import isolated

SIZE = 64


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create_model("resnet18", 10).train(False)


def batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((5, 3, SIZE, SIZE), dtype=np.float32)


def eager(model, inputs):
    with torch.inference_mode():
        return model(torch.from_numpy(inputs)).numpy()


@isolated
def test_fp32_is_lossless_and_says_so():
    """OpenVINO runs bf16 by default on a CPU that has it: fp32 must be asked for explicitly."""
    model, inputs = network(), batch()
    compiled = runtime.compile_model(runtime.convert(model, SIZE), "fp32")
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    reference = eager(model, inputs)
    for n in (1, 5):  # any batch size
        np.testing.assert_allclose(runtime.infer(compiled, inputs[:n]), reference[:n], rtol=1e-4, atol=1e-5)


@isolated
def test_bf16_only_when_asked():
    """bf16 where asked, on a CPU with bf16 instructions; without them OpenVINO emulates it or runs f32
    (compile_model says which)."""
    compiled = runtime.compile_model(runtime.convert(network(), SIZE), "bf16")
    hint = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if runtime.native("bf16"):
        assert hint == "<Type: 'bfloat16'>"
    else:
        assert hint in ("<Type: 'bfloat16'>", "<Type: 'float32'>")


@isolated
def test_int8_is_quantized_and_close():
    model, inputs = network(), batch()
    converted = runtime.convert(model, SIZE)
    calibration = [np.random.default_rng(i).standard_normal((8, 3, SIZE, SIZE), dtype=np.float32) for i in range(4)]
    quantized = runtime.quantize(converted, calibration, images=32)
    assert any(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    assert not any(op.get_type_name() == "FakeQuantize" for op in converted.get_ops())
    reference = eager(model, inputs)
    out = runtime.infer(runtime.compile_model(quantized, "int8"), inputs)
    assert not np.allclose(out, reference, rtol=1e-4, atol=1e-5)  # lossy, as it says
    assert np.abs(out - reference).max() < 0.25 * np.abs(reference).max()


@isolated
def test_saved_files_keep_fp32_weights(tmp_path):
    """`ov.save_model` compresses weights to fp16 unless told not to."""
    model, inputs = network(), batch()
    path = runtime.save(runtime.convert(model, SIZE), tmp_path / "model.xml")
    assert path.with_suffix(".bin").stat().st_size > 4 * 0.9 * sum(p.numel() for p in model.parameters())
    reloaded = runtime.compile_model(path, "fp32")
    np.testing.assert_allclose(runtime.infer(reloaded, inputs), eager(model, inputs), rtol=1e-4, atol=1e-5)


@isolated
def test_timm_backbone_converts():
    torch.manual_seed(0)
    model = models.create_model("efficientnet_lite0", 3).train(False)
    inputs = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)
    out = runtime.infer(runtime.compile_model(runtime.convert(model, SIZE), "fp32"), inputs)
    np.testing.assert_allclose(out, eager(model, inputs), rtol=1e-4, atol=1e-5)


@isolated
def test_refusals():
    converted = runtime.convert(network(), SIZE)
    with pytest.raises(ValueError, match="one of fp32, bf16, int8"):
        runtime.compile_model(converted, "fp16")
    with pytest.raises(ValueError, match="calibration images"):
        runtime.quantize(converted, [])
