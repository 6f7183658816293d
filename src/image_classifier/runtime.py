"""The CPU inference runtime: a model converted to OpenVINO and compiled at a precision the user chose.

Why OpenVINO (issue 18, measured side by side by `scripts/bench_runtimes.py`; the figures are in
docs/benchmarks/serving.md): it converts a torch module directly (no `onnx`, whose protobuf
conflicts with smdebug's in the training image), needs only numpy beside itself, and on CPUs
with AVX-512 BF16, VNNI or AMX it runs bf16 and int8 kernels that TorchScript does not have.

Precisions (`PRECISIONS`):
- `fp32`: lossless. The compiled model is told `INFERENCE_PRECISION_HINT=f32` explicitly, since
  OpenVINO otherwise runs bf16 on any CPU that has it (OpenVINO's CPU device documentation,
  "Floating-point precision"): a lossy change nobody chose.
- `bf16`: the fp32 model compiled with `INFERENCE_PRECISION_HINT=bf16`; emulated (slower, not
  faster) on a CPU without bf16 instructions.
- `int8`: post-training quantization with NNCF (`nncf.quantize`, its default preset: symmetric
  int8 weights and activations) calibrated on images the caller gives, through the eval transforms.

Lossy precisions are never the default: the caller names one, and the training job's evaluation
report measures it on the test channel.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # torch is imported by `convert` only: the server's settings read PRECISIONS cheaply
    import torch

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = Precision.__args__
LOSSLESS = "fp32"
_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the layers NNCF left float run f32
# OpenVINO's CPU OPTIMIZATION_CAPABILITIES that run each precision natively
_CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "int8": "INT8"}
CALIBRATION_IMAGES = 300  # NNCF's default subset_size: images quantization statistics are taken on
# The files the training job writes under the model artifacts (training/export.py) and the server
# reads: <model dir>/EXPORT_DIR/FILES[precision]; bf16 compiles the fp32 file with the bf16 hint.
EXPORT_DIR = "openvino"
FILES = {"fp32": "model.xml", "bf16": "model.xml", "int8": "model-int8.xml"}


def model_file(model_dir: Path, precision: str) -> Path:
    """Where the training job put the OpenVINO model for `precision` under `model_dir` (it may
    not exist: models made before the export, or with `export=none`)."""
    return model_dir / EXPORT_DIR / FILES[_check(precision)]


def _check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    return precision


def convert(model: torch.nn.Module, image_size: int):
    """`model` (eval mode, CPU) as an OpenVINO model taking float32 (N, 3, image_size,
    image_size) with any N and giving its logits (N, classes) float32.

    The module goes through `torch.export` (batch dimension dynamic) and `ov.convert_model`;
    no TorchScript, which PyTorch deprecated.

    Raises:
        RuntimeError: torch.export or OpenVINO could not convert the module (their message included).
    """
    import openvino as ov
    import torch
    from torch.export import Dim, export

    model = model.train(False).to("cpu")
    example = torch.zeros(2, 3, image_size, image_size)  # 2: torch.export specialises a dimension of 1
    try:
        with torch.no_grad():
            program = export(model, (example,), dynamic_shapes=({0: Dim("batch")},))
            return ov.convert_model(program)
    except Exception as exc:
        raise RuntimeError(f"the model could not be converted for OpenVINO: {type(exc).__name__}: {exc}") from exc


def quantize(ov_model, calibration: Iterable[np.ndarray], images: int = CALIBRATION_IMAGES):
    """The int8 model of `ov_model` (from `convert`), calibrated on `calibration`.

    NNCF's post-training quantization with two of its options off their defaults, chosen by
    measuring agreement with fp32 (the share of images whose top-1 class is fp32's) on the demo's
    fine-tuned EfficientNet-Lite0 (Fashion-MNIST at 64 px, the 10,000 test images; the figures
    of each option tried are in docs/training/evaluation.md):
    - the first convolution, the one that reads the image, stays float (`ignored_scope`);
    - bias correction is NNCF's full one (`fast_bias_correction=False`; it infers the model on
      the calibration images per layer, so quantization takes longer: 5.7 s against 3.7 s there).
    Together: agreement 98.6 % instead of 93.1 % with NNCF's defaults, top-1 82.64 % against
    fp32's 82.69 % (defaults: 81.19 %). Each alone: 96.7 % and 96.3 %. Keeping the first 8
    convolutions float reaches 99.0 %, but at 0.6x to 0.8x this int8's speed there: not the default.

    Args:
        calibration: float32 batches (N, 3, H, W), preprocessed as the model's inputs are
            (the eval transforms); at most `images` images are used.
        images: how many images NNCF takes statistics on.

    Raises:
        ValueError: no calibration image.
    """
    import nncf

    batches = []
    seen = 0
    for batch in calibration:
        batches.append(np.ascontiguousarray(batch, dtype=np.float32))
        seen += len(batch)
        if seen >= images:
            break
    if not batches:
        raise ValueError("int8 quantization needs calibration images; none were given")
    first = [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == "Convolution"][:1]
    return nncf.quantize(ov_model, nncf.Dataset(batches), subset_size=len(batches), fast_bias_correction=False,
                         ignored_scope=nncf.IgnoredScope(names=first) if first else None)


def save(ov_model, path: Path) -> Path:
    """Write `ov_model` to `path` (`.xml`, its weights beside it in `.bin`) with its weights as
    they are: OpenVINO's `save_model` would otherwise compress float weights to fp16."""
    import openvino as ov

    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return path


# /proc/cpuinfo flags that decide what bf16 and int8 run on (Intel's and AMD's names, as Linux spells
# them): AMX (Sapphire Rapids and later: c7i, m7i, r7i), AVX-512 BF16 and VNNI (Cooper Lake, Zen 4),
# AVX-VNNI (Alder Lake), AVX-512 and AVX2 (every current SageMaker CPU instance: m5 has no VNNI).
CPU_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """Which of CPU_FLAGS this CPU has, in CPU_FLAGS's order (empty where /proc/cpuinfo is unreadable: not Linux)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return [flag for flag in CPU_FLAGS if flag in flags]


def describe_cpu() -> str:
    """One line for the logs: the instruction sets bf16 and int8 depend on, and what OpenVINO runs natively."""
    return (f"CPU instruction sets: {' '.join(cpu_flags()) or 'none of ' + ' '.join(CPU_FLAGS)}; "
            f"OpenVINO runs natively: {' '.join(capabilities())}")


def capabilities() -> list[str]:
    """The precisions this CPU runs natively, as OpenVINO reports them (e.g. `['BF16', 'FP32', 'INT8']`)."""
    import openvino as ov

    return sorted(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def native(precision: str) -> bool:
    """Whether this CPU runs `precision` in hardware (else OpenVINO emulates it, slower)."""
    return _CAPABILITY[_check(precision)] in capabilities()


def compile_model(ov_model, precision: str = LOSSLESS, threads: int | None = None):
    """`ov_model` (or the path of its `.xml`) compiled for the CPU at `precision`, the precision
    hint always explicit; a warning when this CPU lacks the precision's instructions: OpenVINO then
    emulates it, or, for bf16 on a CPU without AVX-512 at all, runs fp32 instead (its compiled
    INFERENCE_PRECISION_HINT says f32).

    Args:
        ov_model: the fp32 model (`convert`) for fp32 and bf16; the quantized one for int8.
        threads: inference threads (None: OpenVINO's choice, every core).

    Raises:
        ValueError: an unknown precision.
    """
    import openvino as ov

    _check(precision)
    config = {"INFERENCE_PRECISION_HINT": _PRECISION_HINT[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    core = ov.Core()
    model = core.read_model(str(ov_model)) if isinstance(ov_model, (str, Path)) else ov_model
    compiled = core.compile_model(model, "CPU", config)
    if not native(precision):
        effective = compiled.get_property("INFERENCE_PRECISION_HINT")
        if precision == "bf16" and effective != ov.Type.bf16:
            logger.warning("this CPU has no bf16 instructions (it has %s): OpenVINO runs the model at %s instead "
                           "(lossless, no faster)", ", ".join(capabilities()), effective)
        else:
            logger.warning("this CPU has no %s instructions (it has %s): %s runs emulated, slower than fp32",
                           precision, ", ".join(capabilities()), precision)
    return compiled


def infer(compiled, batch: np.ndarray) -> np.ndarray:
    """The logits (N, classes) float32 of a float32 batch (N, 3, H, W) through `compiled` (a
    compiled model, or one of its infer requests: reused, it saves making one per call; one
    request serves one thread at a time). The logits are a copy: the request reuses its output."""
    request = compiled.create_infer_request() if hasattr(compiled, "create_infer_request") else compiled
    return np.array(request.infer([np.ascontiguousarray(batch, dtype=np.float32)])[0], dtype=np.float32)
