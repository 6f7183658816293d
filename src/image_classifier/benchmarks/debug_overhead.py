"""What debug=true and profile=true cost a training job, measured side by side in one run.

The same training job (the sample digits by default) runs as a real `train` process in four
configurations (off, debug, profile, both), interleaved round by round so that a noisy machine
slows them alike. Reported per configuration: the median training-loop time (the sum of
`epoch_seconds`, what the hook and the timer slow down), the median whole-job time (start-up,
rules and reports included), and both as ratios to the configuration with neither.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from image_classifier import datasets, local
from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.training.metrics import METRICS_FILE

CONFIGURATIONS = {"off": {}, "debug": {"debug": "true"}, "profile": {"profile": "true"},
                  "debug+profile": {"debug": "true", "profile": "true"}}
JOB = {"model": "resnet18", "pretrained": "false", "freeze": "none", "image-size": "32", "batch-size": "64",
       "lr": "0.002", "optimizer": "adamw", "num-workers": "0", "seed": "0"}


def run_job(base_dir: Path, data_dir: Path, hyperparameters: dict[str, str],
            prepare: Callable[[SageMakerEnv], None] | None = None) -> dict[str, float]:
    """One training job in a fresh process (`local.run_job`); its loop and whole time (seconds) and accuracy.

    `prepare` may change the laid-out tree before the job starts (e.g. link a checkpoint dir).

    Returns:
        `loop_seconds` (the sum of `epoch_seconds`), `job_seconds` (process start to exit),
        `valid_accuracy` (the best epoch's), `images_per_second` (the training loop's, mean over
        epochs), and `test_accuracy` and `test_f1` (when there is a test channel).

    Raises:
        RuntimeError: the job failed (its log's tail in the message).
    """
    env = local.lay_out(base_dir, data_dir, hyperparameters)
    if prepare:
        prepare(env)
    start = time.perf_counter()
    result = local.run_job(env.base_dir, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"training job failed:\n{result.stdout[-3000:]}")
    summary = json.loads((env.output_data_dir / METRICS_FILE).read_text())
    figures = {"loop_seconds": sum(e["epoch_seconds"] for e in summary["epochs"]), "job_seconds": seconds,
               "valid_accuracy": summary["best_valid_accuracy"]}
    figures["images_per_second"] = statistics.fmean(e["images_per_second"] for e in summary["epochs"])
    figures.update({k: summary[k] for k in ("test_accuracy", "test_f1") if k in summary})
    return figures


def benchmark(data_dir: Path, workdir: Path, epochs: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median figures per configuration over `rounds` interleaved rounds, with ratios to "off"."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGURATIONS}
    for round_ in range(rounds):
        for name, extra in CONFIGURATIONS.items():
            figures = run_job(workdir / f"{name}-{round_}", data_dir, {**JOB, "epochs": str(epochs), **extra})
            runs[name].append(figures)
            print(f"round {round_ + 1}/{rounds} {name:<14} loop {figures['loop_seconds']:6.2f} s  "
                  f"job {figures['job_seconds']:6.2f} s", flush=True)
    summary = {name: {key: statistics.median(r[key] for r in figures) for key in ("loop_seconds", "job_seconds")}
               for name, figures in runs.items()}
    for figures in summary.values():
        figures["loop_ratio"] = figures["loop_seconds"] / summary["off"]["loop_seconds"]
        figures["job_ratio"] = figures["job_seconds"] / summary["off"]["job_seconds"]
    return summary


def format_table(summary: dict[str, dict[str, float]]) -> str:
    rows = [f"{'configuration':<14} {'loop s':>8} {'x off':>7} {'job s':>8} {'x off':>7}"]
    rows += [f"{name:<14} {f['loop_seconds']:8.2f} {f['loop_ratio']:7.2f} {f['job_seconds']:8.2f} {f['job_ratio']:7.2f}"
             for name, f in summary.items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_debug.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="an ImageFolder root with train/valid (default: the sample digits, written to a temp dir)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--json", type=Path, default=Path("bench_debug.json"), help="where the figures go")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data
        if data_dir is None:
            data_dir = Path(tmp) / "data"
            datasets.write_sample(data_dir)
        summary = benchmark(data_dir, Path(tmp), args.epochs, args.rounds)
    print(format_table(summary))
    args.json.write_text(json.dumps({"job": {**JOB, "epochs": args.epochs}, "rounds": args.rounds,
                                     "cpus": os.cpu_count(), "results": summary}, indent=2))
    print(f"figures written to {args.json}")
    return 0
