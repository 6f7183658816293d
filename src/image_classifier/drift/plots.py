"""The drift report's pictures: the class mix side by side, and a figure's two distributions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from image_classifier.html_page import subplots

REFERENCE, OBSERVED = "tab:blue", "tab:orange"  # the test channel, the endpoint


def class_mix(per_class: list[dict], labels: Sequence[str]):
    """Horizontal bars per class: the test channel's predicted share against the endpoint's, each
    class's PSI term at the right."""
    n = len(per_class)
    fig, ax = subplots(figsize=(7.5, max(2.5, 0.32 * n + 1.2)))
    y = np.arange(n)
    ax.barh(y - 0.2, [r["reference_share"] for r in per_class], 0.4, color=REFERENCE, label="test channel")
    ax.barh(y + 0.2, [r["observed_share"] for r in per_class], 0.4, color=OBSERVED, label="endpoint")
    top = max(max(r["reference_share"], r["observed_share"]) for r in per_class)
    for i, r in enumerate(per_class):
        ax.annotate(f"{r['psi']:.3f}", (top * 1.02, i), va="center", fontsize=7, color="dimgray")
    ax.set(yticks=y, yticklabels=list(labels), xlim=(0, top * 1.15), xlabel="share of the predictions")
    ax.invert_yaxis()
    ax.set_title("Predicted classes (grey: each class's PSI term)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig


def distribution(name: str, unit: str, reference: np.ndarray, observed: np.ndarray, figures: dict):
    """Two panels: the histograms of `reference` and `observed` (as densities, on common bins),
    and their empirical CDFs with the Kolmogorov-Smirnov gap marked."""
    fig, (left, right) = subplots(1, 2, figsize=(10, 3.4))
    low, high = float(min(reference.min(), observed.min())), float(max(reference.max(), observed.max()))
    bins = np.linspace(low, high if high > low else low + 1, 31)
    left.hist(reference, bins, density=True, alpha=0.55, color=REFERENCE, label=f"test channel ({len(reference)})")
    left.hist(observed, bins, density=True, alpha=0.55, color=OBSERVED, label=f"endpoint ({len(observed)})")
    left.set(xlabel=f"{name} ({unit})" if unit else name, ylabel="density")
    left.set_title(f"{name}: PSI {figures['psi']:.3f} ({figures['verdict']})")
    left.legend(fontsize=8)
    grid = np.sort(np.concatenate([reference, observed]))
    cdf_ref = np.searchsorted(np.sort(reference), grid, side="right") / len(reference)
    cdf_obs = np.searchsorted(np.sort(observed), grid, side="right") / len(observed)
    right.step(grid, cdf_ref, where="post", color=REFERENCE, label="test channel")
    right.step(grid, cdf_obs, where="post", color=OBSERVED, label="endpoint")
    gap = int(np.argmax(np.abs(cdf_ref - cdf_obs)))
    right.vlines(grid[gap], min(cdf_ref[gap], cdf_obs[gap]), max(cdf_ref[gap], cdf_obs[gap]), color="black",
                 linewidth=2, label=f"KS D = {figures['ks_statistic']:.3f}")
    right.set(xlabel=f"{name} ({unit})" if unit else name, ylabel="cumulative share", ylim=(0, 1.02))
    right.set_title("Empirical CDFs")
    right.legend(fontsize=8, loc="lower right")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
