"""The debugger report: loss curves, gradient and weight-update magnitudes per layer, the rules table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from image_classifier.debugging.results import RuleResult
from image_classifier.html_page import Page, subplots

logger = logging.getLogger(__name__)

REPORT_FILE = "debugger-report.html"
MAX_LAYERS = 60  # rows of a per-layer heat map; more are sampled evenly


def losses(trial) -> dict[str, tuple[list[int], list[float]]]:
    """Per mode ("TRAIN", "EVAL"): the global steps and the mean saved loss at each."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    saved = {name: set(trial.tensor(name).steps()) for name in trial.tensor_names(collection="losses")}
    for step in trial.steps():
        values = [trial.tensor(name).value(step) for name, steps in saved.items() if step in steps]
        if values:
            steps, means = series.setdefault(trial.mode(step).name, ([], []))
            steps.append(step)
            means.append(float(np.mean([np.mean(v) for v in values])))
    return series


def per_layer(trial, collection: str, measure) -> tuple[list[str], list[int], np.ndarray]:
    """(tensor names, training steps, (layers, steps) float64 of `measure(previous, value)`).

    `value` is the tensor at a step, `previous` its value at the step of the column before (None
    when it was not saved there); each tensor is read once per step.
    """
    from smdebug import modes

    names = sorted(trial.tensor_names(collection=collection))
    if len(names) > MAX_LAYERS:
        names = [names[int(i)] for i in np.linspace(0, len(names) - 1, MAX_LAYERS)]
    steps = sorted({s for n in names for s in trial.tensor(n).steps() if trial.mode(s) == modes.TRAIN})
    matrix = np.full((len(names), len(steps)), np.nan)
    for i, name in enumerate(names):
        tensor = trial.tensor(name)
        saved, previous = set(tensor.steps()), None
        for j, step in enumerate(steps):
            value = tensor.value(step) if step in saved else None
            if value is not None:
                matrix[i, j] = measure(previous, value)
            previous = value
    return names, steps, matrix


def _mean_abs(previous, value) -> float:
    return float(np.abs(value).mean())


def _update_ratio(previous, value) -> float:
    """||w_t - w_prev|| / ||w_prev||, between consecutive saved training steps."""
    if previous is None:
        return np.nan
    return float(np.linalg.norm(value - previous) / (np.linalg.norm(previous) + 1e-12))


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
