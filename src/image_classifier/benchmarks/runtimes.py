"""CPU inference runtimes side by side, in one process and one run: the measurement behind runtime.py.

For one registry model at one image size (default resnet50 at 224 px, random weights):

- eager PyTorch fp32; TorchScript frozen fp32 (the server's path before issue 18, kept outside the
  package in scripts/reference/torchscript_reference.py); OpenVINO
  fp32, bf16 and int8 (`runtime`);
- each measured in turns, `--rounds` times, so that this machine's drift (tens of percent over
  minutes) falls on all alike: the p50 milliseconds of one forward pass at batch 1, and images/s
  at batch 16; then each one's ratio to TorchScript fp32;
- with `--pretrained` (the ImageNet network with its own weights: offline for efficientnet_lite0)
  and `--images DIR` (real photos, any folder tree of JPEG/PNG, e.g. prepare-data's Fashion-MNIST
  test channel): in a seeded shuffle of them, int8 is calibrated on 300, and on the next `--eval` each
  lossy row gives its top-1 agreement with eager fp32 and its largest logit change.

Forward passes only: decoding and preprocessing are the same for every runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from image_classifier import models, runtime
from image_classifier.benchmarks import timings, torchscript_reference
from image_classifier.images import open_image
from image_classifier.transforms import eval_transform

Forward = Callable[[np.ndarray], np.ndarray]  # float32 (N, 3, H, W) -> logits (N, classes)
Optimize = Callable[[torch.nn.Module, int], torch.nn.Module]  # (model, image size) → TorchScript module
BASELINE = "torchscript fp32"
THROUGHPUT_BATCH = 16
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def _torch_forward(module: torch.nn.Module) -> Forward:
    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch)).float().numpy()
    return forward


def _openvino_forward(compiled) -> Forward:
    request = compiled.create_infer_request()
    return lambda batch: np.array(request.infer([batch])[0], dtype=np.float32)


def build_runtimes(model: torch.nn.Module, image_size: int, calibration: list[np.ndarray],
                   torchscript: Optimize | None = None) -> dict[str, Forward]:
    """Every runtime's forward pass of `model`, by name; int8 calibrated on `calibration` batches;
    BASELINE where `torchscript` (scripts/reference/torchscript_reference.optimize) is given."""
    model = model.train(False)
    converted = runtime.convert(model, image_size)
    quantized = runtime.quantize(converted, calibration)
    reference = {BASELINE: _torch_forward(torchscript(model, image_size))} if torchscript else {}
    return {
        "eager fp32": _torch_forward(model),
        **reference,
        "openvino fp32": _openvino_forward(runtime.compile_model(converted, "fp32")),
        "openvino bf16": _openvino_forward(runtime.compile_model(converted, "bf16")),
        "openvino int8": _openvino_forward(runtime.compile_model(quantized, "int8")),
    }


def measure(forwards: dict[str, Forward], image_size: int, rounds: int, seconds: float) -> dict[str, dict]:
    """Per runtime: `batch1_p50_ms` and `batch16_images_per_second`, medians over `rounds` turns."""
    one = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size), dtype=np.float32)
    many = np.repeat(one, THROUGHPUT_BATCH, axis=0)
    for forward in forwards.values():  # warm-up: first calls compile kernels
        forward(one), forward(many)
    samples: dict[str, dict[str, list[float]]] = {name: {"p50": [], "rate": []} for name in forwards}
    for _ in range(rounds):
        for name, forward in forwards.items():
            samples[name]["p50"].append(1000 * statistics.median(timings(lambda f=forward: f(one), seconds)))
            rate = THROUGHPUT_BATCH / statistics.median(timings(lambda f=forward: f(many), seconds))
            samples[name]["rate"].append(rate)
    base = statistics.median(samples[BASELINE if BASELINE in samples else "eager fp32"]["rate"])
    return {name: {"batch1_p50_ms": statistics.median(s["p50"]),
                   "batch16_images_per_second": statistics.median(s["rate"]),
                   "vs_torchscript": statistics.median(s["rate"]) / base} for name, s in samples.items()}


def photos(folder: Path, count: int, name: str, image_size: int) -> np.ndarray:
    """`count` photos under `folder` in a seeded shuffle (every class in the calibration part),
    through `name`'s eval transforms: float32 (count, 3, image_size, image_size)."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    random.Random(0).shuffle(paths)
    paths = paths[:count]
    if not paths:
        raise ValueError(f"no JPEG or PNG under {folder}")
    config = models.data_config(name)
    transform = eval_transform(image_size, config.mean, config.std)
    return np.stack([transform(open_image(p)).numpy() for p in paths])


def agreement(forwards: dict[str, Forward], images: np.ndarray, batch: int = THROUGHPUT_BATCH) -> dict[str, dict]:
    """Per runtime: top-1 agreement (0-1) with eager fp32 on `images`, and the largest logit change."""
    def logits(forward: Forward) -> np.ndarray:
        return np.concatenate([forward(images[i:i + batch]) for i in range(0, len(images), batch)])

    reference = logits(forwards["eager fp32"])
    result = {}
    for name, forward in forwards.items():
        out = logits(forward)
        result[name] = {"top1_agreement": float((out.argmax(1) == reference.argmax(1)).mean()),
                        "max_logit_change": float(np.abs(out - reference).max()),
                        "logit_scale": float(np.abs(reference).max())}
    return result


def table(speed: dict[str, dict], agreed: dict[str, dict] | None) -> str:
    header = f"{'runtime':<18} {'batch 1 p50 ms':>14} {'batch 16 img/s':>14} {'vs torchscript':>14}"
    if agreed:
        header += f" {'top-1 agreement':>16} {'max logit change':>16}"
    lines = [header]
    for name, s in speed.items():
        line = (f"{name:<18} {s['batch1_p50_ms']:>14.1f} {s['batch16_images_per_second']:>14.1f} "
                f"{s['vs_torchscript']:>13.2f}x")
        if agreed:
            a = agreed[name]
            line += f" {a['top1_agreement']:>16.4f} {a['max_logit_change']:>16.3g}"
        lines.append(line)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", help="a registry name (default resnet50)")
    parser.add_argument("--image-size", type=int, default=224, help="pixels (default 224)")
    parser.add_argument("--classes", type=int, default=133, help="the head's outputs without --pretrained")
    parser.add_argument("--pretrained", action="store_true",
                        help="the ImageNet network with its own weights (offline: efficientnet_lite0)")
    parser.add_argument("--images", type=Path, help="real photos: int8 calibration and the agreement rows")
    parser.add_argument("--eval", type=int, default=1000, help="photos the agreement is measured on")
    parser.add_argument("--rounds", type=int, default=3, help="turns of every runtime (default 3)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per figure per turn")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: cores)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The benchmark; in a checkout of the repository, with the BASELINE row
    (scripts/reference/torchscript_reference.py), else the ratios are to eager fp32."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.pretrained:
        model = models.imagenet_network(args.model, models.load_pretrained_state_dict(args.model))
    else:
        model = models.create_model(args.model, args.classes)
    if args.images:
        images = photos(args.images, runtime.CALIBRATION_IMAGES + args.eval, args.model, args.image_size)
        calibrated = min(runtime.CALIBRATION_IMAGES, max(1, len(images) - args.eval))  # fewer photos: fewer each
        calibration = np.array_split(images[:calibrated], max(1, calibrated // THROUGHPUT_BATCH))
        evaluation = images[calibrated:]
    else:
        rng = np.random.default_rng(0)
        calibration = [rng.standard_normal((THROUGHPUT_BATCH, 3, args.image_size, args.image_size), dtype=np.float32)
                       for _ in range(4)]
        evaluation = None
    reference = torchscript_reference()
    forwards = build_runtimes(model, args.image_size, calibration, reference.optimize if reference else None)
    print(f"{args.model} at {args.image_size} px, {args.threads} thread(s); CPU: {', '.join(runtime.capabilities())}")
    agreed = agreement(forwards, evaluation) if evaluation is not None and len(evaluation) else None
    speed = measure(forwards, args.image_size, args.rounds, args.seconds)
    print(table(speed, agreed))
    if args.json:
        args.json.write_text(json.dumps({"speed": speed, "agreement": agreed}, indent=2))
    return 0
