"""The debugger report: loss curves, gradient and weight-update magnitudes per layer, the rules table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from image_classifier.debugging.rules import RuleResult
from image_classifier.html_page import Page, subplots

logger = logging.getLogger(__name__)

REPORT_FILE = "debugger-report.html"
MAX_LAYERS = 60  # rows of a per-layer heat map; more are sampled evenly


def losses(trial) -> dict[str, tuple[list[int], list[float]]]:
    """Per mode ("TRAIN", "EVAL"): the global steps and the mean saved loss at each."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    names = trial.tensor_names(collection="losses")
    for step in trial.steps():
        values = [trial.tensor(n).value(step) for n in names if step in trial.tensor(n).steps()]
        if values:
            steps, means = series.setdefault(trial.mode(step).name, ([], []))
            steps.append(step)
            means.append(float(np.mean([np.mean(v) for v in values])))
    return series


def per_layer(trial, collection: str, measure) -> tuple[list[str], list[int], np.ndarray]:
    """(tensor names, training steps, (layers, steps) float64 of `measure(trial, name, step)`)."""
    from smdebug import modes

    names = sorted(trial.tensor_names(collection=collection))
    if len(names) > MAX_LAYERS:
        names = [names[int(i)] for i in np.linspace(0, len(names) - 1, MAX_LAYERS)]
    steps = sorted({s for n in names for s in trial.tensor(n).steps() if trial.mode(s) == modes.TRAIN})
    matrix = np.full((len(names), len(steps)), np.nan)
    for i, name in enumerate(names):
        for j, step in enumerate(steps):
            matrix[i, j] = measure(trial, name, step, steps[j - 1] if j else None)
    return names, steps, matrix


def _mean_abs(trial, name, step, previous):
    tensor = trial.tensor(name)
    return float(np.abs(tensor.value(step)).mean()) if step in tensor.steps() else np.nan


def _update_ratio(trial, name, step, previous):
    """||w_t - w_prev|| / ||w_prev||, between consecutive saved training steps."""
    tensor = trial.tensor(name)
    if previous is None or step not in tensor.steps() or previous not in tensor.steps():
        return np.nan
    before = tensor.value(previous)
    return float(np.linalg.norm(tensor.value(step) - before) / (np.linalg.norm(before) + 1e-12))


def rules_table(page: Page, results: list[RuleResult]) -> None:
    page.table(["rule", "status", "first step", "violations", "datapoints", "details", "parameters"],
               [[r.rule, r.status, "" if r.step is None else r.step, r.violations, r.datapoints,
                 "; ".join(r.details[:3]), ", ".join(f"{k}={v}" for k, v in r.parameters.items())] for r in results],
               [r.status for r in results])


def _heat_map(page: Page, name: str, title: str, layers: list[str], steps: list[int], matrix: np.ndarray) -> None:
    if not layers or not steps:
        page.text(f"{title}: not saved (the hook configuration has no such collection).")
        return
    fig, ax = subplots(figsize=(10, max(3, 0.18 * len(layers) + 1.5)))
    with np.errstate(divide="ignore", invalid="ignore"):
        shown = np.ma.masked_invalid(np.where(matrix > 0, np.log10(matrix), np.nan))  # 0 (frozen): blank
    image = ax.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(layers)), [n.removeprefix("gradient/") for n in layers], fontsize=6)
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 10)).astype(int)
    ax.set_xticks(ticks, [steps[t] for t in ticks])
    ax.set_xlabel("global step (training)")
    fig.colorbar(image, ax=ax, label="log10")
    ax.set_title(title)
    page.plot(name, fig, title)


def write(directory: Path, trial, results: list[RuleResult], epochs: list[dict[str, Any]] | None = None) -> Path:
    """Write `directory/debugger-report.html` (and its plots as PNGs beside it); returns its path."""
    page = Page("Debugger report")
    page.heading("Rules")
    rules_table(page, results)

    page.heading("Loss")
    fig, ax = subplots(figsize=(10, 4))
    for mode, (steps, values) in losses(trial).items():
        ax.plot(steps, values, "." if mode != "TRAIN" else "-", label={"TRAIN": "training", "EVAL": "validation",
                                                                       "PREDICT": "test"}.get(mode, mode))
    ax.set_xlabel("global step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    page.plot("loss", fig, "Loss of each saved step, training and validation (the debugger line plot)")
    if epochs:
        fig, ax = subplots(figsize=(10, 3.5))
        x = [e["epoch"] for e in epochs]
        ax.plot(x, [e["train_loss"] for e in epochs], "o-", label="train_loss")
        ax.plot(x, [e["valid_loss"] for e in epochs], "o-", label="valid_loss")
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
        page.plot("loss_per_epoch", fig, "Mean loss per epoch (metrics.json)")

    page.heading("Gradients and weight updates per layer")
    _heat_map(page, "gradients", "mean |gradient| per layer", *per_layer(trial, "gradients", _mean_abs))
    _heat_map(page, "weight_updates", "||update|| / ||weight|| per layer between saved training steps",
              *per_layer(trial, "weights", _update_ratio))
    path = directory / REPORT_FILE
    page.save(path)
    return path
