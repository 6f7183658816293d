"""What ImageNet weights are worth: training jobs on real photos, from scratch and pretrained, side by side.

One run on Fashion-MNIST (70,000 real 28x28 product photos in 10 classes; Debian's
`dataset-fashion-mnist` or the official download, see `datasets.prepare_fashion_mnist`), for
each regime of training images per class (100: where transfer matters most; 1,000), on the
full 10,000-image test set unless told otherwise. Each way is a real `train` process on its
own `/opt/ml` tree, one after the other on the same cores (the ways differ only as listed):

- `scratch`: the fine-tuning recipe below with `pretrained=false`: the same network, the same
  hyperparameters and epochs, random initial weights;
- `frozen (cached features)`: `pretrained=true freeze=backbone augment=false`: the ImageNet
  backbone's features computed once (the feature cache), a Linear head trained on them;
- `fine-tune`: `pretrained=true freeze=none` with the job's defaults: the whole network from the
  first step at one learning rate;
- `fine-tune (two-stage)`: the textbook variant, `head-epochs=1 backbone-lr-scale=0.1
  warmup-epochs=1`: the head alone for an epoch, then the backbone at a tenth of the rate,
  warmed up.

Reported per way: test accuracy and macro F1 (the job's `test_accuracy`, `test_f1`), the whole
job's wall time (process start to exit), the training loop's images/s, and the accuracy gain
over `scratch` in points. What stands in for the dog-breed task: the ranking of the
ways and the gain of pretrained weights with few images a class (dogImages has 26 to 77);
what cannot: the accuracies themselves (28x28 grayscale products, 10 classes, against
133 breeds in colour photos) and the times (a 2-core CPU at 64 px, against a GPU at 224 px).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from image_classifier import datasets
from image_classifier.benchmarks.debug_overhead import run_job

# The recipe: EfficientNet-Lite0 at 64 px (the 28 px photos upscaled; the last feature map is
# 2x2), AdamW, label smoothing, milder crops than ImageNet's, flips. The README has the measurements.
RECIPE = {"model": "efficientnet_lite0", "image-size": "64", "batch-size": "64", "lr": "0.001",
          "optimizer": "adamw", "weight-decay": "0.01", "label-smoothing": "0.1", "crop-scale-min": "0.6",
          "hflip-prob": "0.5", "num-workers": "2", "seed": "0"}
WAYS = {
    "scratch": {"pretrained": "false", "freeze": "none"},
    "frozen (cached features)": {"pretrained": "true", "freeze": "backbone", "augment": "false", "lr": "0.01"},
    "fine-tune": {"pretrained": "true", "freeze": "none"},
    "fine-tune (two-stage)": {"pretrained": "true", "freeze": "none", "head-epochs": "1", "backbone-lr-scale": "0.1",
                              "warmup-epochs": "1"},
}


def benchmark(per_class: int, epochs: int, test_per_class: int | None, workdir: Path,
              recipe: dict[str, str], overrides: dict[str, str]) -> dict[str, dict[str, float]]:
    """Each way's figures (`run_job`'s) on a Fashion-MNIST tree of `per_class` training images a class;
    `overrides` change every way's hyperparameters, after the way's own."""
    data_dir = workdir / f"fashion-mnist-{per_class}"
    counts = datasets.prepare_fashion_mnist(data_dir, per_class=per_class, test_per_class=test_per_class)
    print(f"Fashion-MNIST, {per_class} training images a class: {json.dumps(counts)}", flush=True)
    results = {}
    for way, changes in WAYS.items():
        hyperparameters = {**recipe, "epochs": str(epochs), **changes, **overrides}
        results[way] = run_job(workdir / "opt_ml", data_dir, hyperparameters)
        print(f"  {way}: " + ", ".join(f"{k} {v:.4g}" for k, v in results[way].items()), flush=True)
    return results


def table(results: dict[int, dict[str, dict[str, float]]]) -> str:
    """A Markdown table: one row per regime and way; the gain over scratch in points of accuracy."""
    rows = ["| images a class | way | test accuracy | macro F1 | vs scratch | job s | train img/s |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for per_class, ways in results.items():
        scratch = ways["scratch"]["test_accuracy"]
        for way, r in ways.items():
            rows.append(f"| {per_class} | {way} | {r['test_accuracy']:.4f} | {r['test_f1']:.4f} | "
                        f"{100 * (r['test_accuracy'] - scratch):+.1f} | {r['job_seconds']:.0f} | "
                        f"{r['images_per_second']:.0f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, nargs="+", default=[100, 1000],
                        help="training images a class, one regime each (default: 100 1000)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of every job (default: 6)")
    parser.add_argument("--test-per-class", type=int, default=None,
                        help="test images a class (default: all 1,000, the full test set)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="hyperparameters for every way, applied after the way's own, e.g. image-size=96")
    parser.add_argument("--workdir", type=Path, default=None, help="where data and jobs go (default: a temp dir)")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    with tempfile.TemporaryDirectory() as scratch_dir:
        workdir = args.workdir or Path(scratch_dir)
        results = {n: benchmark(n, args.epochs, args.test_per_class, workdir, RECIPE, overrides)
                   for n in args.per_class}
    print(f"\nrecipe: {json.dumps({**RECIPE, **overrides})}, {args.epochs} epochs\n")
    print(table(results))
    return 0
