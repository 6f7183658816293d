"""What the feature cache saves a frozen-backbone training job, measured side by side in one run.

The same training job (resnet50, freeze=backbone, 5 epochs, on the sample digits or a
synthetic image set) runs as a real `train` process four ways, one after the other:

- `images`: feature-cache=off, augment=false: every epoch pushes every image through the
  backbone (what public versions of this project do, less their augmentation);
- `images+augment`: feature-cache=off with the default augmentation (RandomResizedCrop, flip);
- `cache cold`: feature-cache=on with an empty cache: the features are computed once, then
  the head trains on them (a first job on a dataset);
- `cache warm`: the same with the cache `cache cold` left (every later trial on the instance,
  or a restarted spot job).

Reported per way: the whole job's time (process start to exit: start-up, channel scans,
features, training, test), the training loop's time, images/s over the job, the best valid
and the test accuracy, and the time ratio to `images`. Then images/s per step type of the
`images` job, measured in this process: the DataLoader alone (decoding and transforms) and
the model's training step alone (forward, backward, optimizer on one batch), which tells
whether a job waits for its data or its compute, and the head's step on cached features.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from image_classifier import datasets, local, models
from image_classifier.benchmarks.debug_overhead import run_job
from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.training import data, features
from image_classifier.training.config import TrainConfig
from image_classifier.training.job import build_model
from image_classifier.training.loaders import find_channels, make_loaders
from image_classifier.training.loop import Meter, train_one_epoch

JOB = {"model": "resnet50", "freeze": "backbone", "epochs": "5", "batch-size": "32", "lr": "0.001",
       "optimizer": "adam", "image-size": "224", "seed": "0"}
WAYS = {"images": {"feature-cache": "off", "augment": "false"},
        "images+augment": {"feature-cache": "off", "augment": "true"},
        "cache cold": {"feature-cache": "on", "augment": "false"},
        "cache warm": {"feature-cache": "on", "augment": "false"}}
STEP_BATCHES = 8  # batches timed per step type (after one warm-up batch)


def write_synthetic(root: Path, images: int, classes: int = 10, size: int = 256, seed: int = 0) -> dict[str, int]:
    """An ImageFolder tree of `images` JPEGs (`size` pixels square) split 70/15/15 per class.

    Each class is a disk of its own colour at a random place and radius on a noisy
    background, so that even a backbone without ImageNet weights separates the classes.

    Returns:
        images written per split.
    """
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(classes, 3))
    counts = dict.fromkeys(datasets.SPLITS, 0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(images):
        label = i % classes
        split = datasets.SPLITS[0 if (i // classes) % 20 < 14 else 1 if (i // classes) % 20 < 17 else 2]
        pixels = rng.integers(0, 256, size=(size, size, 3)).astype(np.uint8)
        cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
        radius = rng.integers(size // 8, size // 3)
        pixels[(yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2] = palette[label]
        folder = root / split / f"{label + 1:03d}.class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
        counts[split] += 1
    return counts


def _link_cache(cache: Path) -> Callable[[SageMakerEnv], Path]:
    """A `prepare` for run_job: the job's feature-cache folder is `cache` (`local.link_feature_cache`,
    as for tuning trials)."""
    return lambda env: local.link_feature_cache(env, cache)


def compare(data_dir: Path, workdir: Path, job: dict[str, str]) -> dict[str, dict[str, float]]:
    """Run the four ways one after the other; figures per way, with ratios to `images`."""
    cache = workdir / "shared-feature-cache"
    cache.mkdir(parents=True)
    images = sum(1 for split in datasets.SPLITS if (data_dir / split).is_dir()
                 for p in (data_dir / split).rglob("*") if p.is_file())
    results = {}
    for name, extra in WAYS.items():
        prepare = _link_cache(cache) if extra["feature-cache"] == "on" else None
        figures = run_job(workdir / name.replace(" ", "-"), data_dir, {**job, **extra}, prepare)
        figures["images_per_second"] = images * int(job["epochs"]) / figures["job_seconds"]
        results[name] = figures
        print(f"{name:<15} job {figures['job_seconds']:8.1f} s  loop {figures['loop_seconds']:8.1f} s  "
              f"valid {figures['valid_accuracy']:.4f}  test {figures.get('test_accuracy', float('nan')):.4f}",
              flush=True)
    for figures in results.values():
        figures["speed-up"] = results["images"]["job_seconds"] / figures["job_seconds"]
    return results


def _images_per_second(batches, work) -> float:
    """Images/s of `work(batch)` over `batches` (an iterator of (inputs, targets)); first batch is warm-up."""
    iterator = iter(batches)
    work(next(iterator))
    count, start = 0, time.perf_counter()
    for _, batch in zip(range(STEP_BATCHES), iterator):
        work(batch)
        count += batch[1].shape[0]
    return count / (time.perf_counter() - start)


def step_types(data_dir: Path, workdir: Path, job: dict[str, str]) -> dict[str, float]:
    """Images/s of each step type of the `images` job, in this process (on a GPU if there is one).

    `data loading`: the train DataLoader alone, with the job's worker processes; `compute`:
    forward, backward and optimizer step of the frozen model on one batch, again and again;
    `head on features`: the same for the head on cached features (as `cache warm` trains).
    """
    config = TrainConfig.from_hyperparameters({**job, **WAYS["images"], "pretrained": "false"})
    env = local.lay_out(workdir / "step-types", data_dir, {k: str(v) for k, v in config.to_dict().items()})
    channels, class_names = find_channels(env)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = make_loaders(config, {data.TRAIN: channels[data.TRAIN]}, class_names, device.type == "cuda")[data.TRAIN]
    model = build_model(config, len(class_names), env).to(device)
    head = models.head_module(model, config.model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    criterion = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(device.type, enabled=False)

    def train_on(module):
        def work(batch):
            train_one_epoch(module, [batch], criterion, optimizer, device, scaler, None, Meter())
            if device.type == "cuda":
                torch.cuda.synchronize()
        return work

    loader.sampler.set_epoch(1)
    figures = {"data loading": _images_per_second(loader, lambda batch: None)}
    batch = next(iter(loader))
    model.train(False)  # eval mode: a frozen backbone, as the job trains it
    head.train()
    figures["compute"] = _images_per_second(iter(lambda: batch, None), train_on(model))
    features_, targets = features.compute_features(model, config.model, [batch], device, None)
    feature_batch = (features_.clone(), targets.clone())  # clones outside inference mode: the head trains on them
    head.train()
    figures["head on features"] = _images_per_second(iter(lambda: feature_batch, None), train_on(head))
    return figures


def format_table(results: dict[str, dict[str, float]]) -> str:
    rows = [f"{'way':<15} {'job s':>8} {'loop s':>8} {'images/s':>9} {'valid acc':>9} {'test acc':>9} "
            f"{'speed-up':>9}"]
    rows += [f"{name:<15} {f['job_seconds']:8.1f} {f['loop_seconds']:8.1f} {f['images_per_second']:9.1f} "
             f"{f['valid_accuracy']:9.4f} {f.get('test_accuracy', float('nan')):9.4f} {f['speed-up']:8.2f}x"
             for name, f in results.items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_training.py", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, default=None,
                        help="an ImageFolder root with train/valid/test (default: the sample digits)")
    source.add_argument("--synthetic", type=int, default=None, metavar="N",
                        help="a synthetic set of N 256-pixel JPEGs in 10 classes instead")
    parser.add_argument("--model", default=JOB["model"], choices=models.MODEL_NAMES)
    parser.add_argument("--epochs", type=int, default=int(JOB["epochs"]))
    parser.add_argument("--image-size", type=int, default=int(JOB["image-size"]))
    parser.add_argument("--pretrained", action="store_true",
                        help="start from ImageNet weights (they must be in the torch hub cache or downloadable); "
                             "default: a seeded random backbone, the same in every way")
    parser.add_argument("--json", type=Path, default=Path("bench_training.json"), help="where the figures go")
    args = parser.parse_args(argv)
    job = {**JOB, "model": args.model, "epochs": str(args.epochs), "image-size": str(args.image_size),
           "pretrained": str(args.pretrained).lower()}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data
        if data_dir is None:
            data_dir = Path(tmp) / "data"
            counts = (write_synthetic(data_dir, args.synthetic) if args.synthetic
                      else datasets.write_sample(data_dir))
            print(f"data: {counts}", flush=True)
        results = compare(data_dir, Path(tmp), job)
        steps = step_types(data_dir, Path(tmp), job)
    print()
    print(format_table(results))
    print()
    print("images/s per step type of the `images` job (this process, "
          f"{'GPU' if torch.cuda.is_available() else f'CPU, {os.cpu_count()} cores'}):")
    for name, value in steps.items():
        print(f"  {name:<20} {value:9.1f}")
    args.json.write_text(json.dumps({"job": job, "cpus": os.cpu_count(), "cuda": torch.cuda.is_available(),
                                     "results": results, "step_types": steps}, indent=2))
    print(f"figures written to {args.json}")
    return 0
