"""The comparison: population stability index, Kolmogorov-Smirnov, calibration, and the verdict.

The population stability index of a figure binned into B bins, with e_i and a_i the shares of
the reference (the test channel) and of the endpoint's traffic in bin i, is

    PSI = Σ_i (a_i − e_i) · ln(a_i / e_i)

(Siddiqi, "Credit Risk Scorecards", Wiley 2006). Siddiqi's rule of thumb, which Yurdakul
("Statistical Properties of Population Stability Index", PhD thesis, Western Michigan University
2018) reports as the industry's: below 0.1 no significant change, 0.1 to 0.25 a change to watch,
0.25 and over a significant shift. Yurdakul also shows that these fixed thresholds ignore the
sample sizes: for N reference and M observed values drawn from one distribution, the PSI is
approximately (1/N + 1/M) times a chi-squared variable with B − 1 degrees of freedom, so its
expected value is (B − 1) · (1/N + 1/M). Where that expected value alone reaches the watch
threshold, the PSI says nothing about drift: the figure's verdict is "too few images".
Each class's term is its own contribution to the class mix's PSI.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PSI_WATCH = 0.1    # Siddiqi 2006 (reported by Yurdakul 2018): from here a change to watch
PSI_DRIFT = 0.25   # and from here a significant shift
VERDICTS = ("no drift", "watch", "drift")  # least to most severe
TOO_FEW = "too few images"  # the verdict where `expected_psi` ≥ PSI_WATCH (Yurdakul 2018)
# A bin one side has no image in would make the logarithm infinite: its share is taken as
# 0.0001 instead. This project's choice, not a published value: small enough to leave the
# other bins' shares as they are; it only matters for empty bins.
EMPTY_SHARE = 1e-4
CONTINUOUS_BINS = 10  # deciles of the reference, as the PSI is usually computed for a continuous figure


def shares(counts: np.ndarray) -> np.ndarray:
    """`counts` as shares of their total, an empty bin's share `EMPTY_SHARE`."""
    counts = np.asarray(counts, dtype=float)
    return np.maximum(counts / max(counts.sum(), 1.0), EMPTY_SHARE)


def psi_terms(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Each bin's (a_i − e_i) · ln(a_i / e_i), from the bins' `expected` (reference) and `actual` counts; ≥ 0."""
    e, a = shares(expected), shares(actual)
    return (a - e) * np.log(a / e)


def expected_psi(bins: int, reference: int, observed: int) -> float:
    """The PSI's expected value for two samples of one distribution, (bins − 1) · (1/reference +
    1/observed) (Yurdakul 2018): `bins` bins, `reference` and `observed` values (counts, ≥ 1)."""
    return (bins - 1) * (1 / reference + 1 / observed)


def verdict(psi: float, expected: float = 0.0) -> str:
    """`TOO_FEW` where `expected` (`expected_psi`) ≥ `PSI_WATCH`; else "no drift" below
    `PSI_WATCH`, "watch" below `PSI_DRIFT`, and "drift"."""
    if expected >= PSI_WATCH:
        return TOO_FEW
    return VERDICTS[int(psi >= PSI_WATCH) + int(psi >= PSI_DRIFT)]


def worst(verdicts: list[str]) -> str:
    """The most severe of `verdicts` that are not `TOO_FEW`; `TOO_FEW` when all are, "no drift" for none."""
    judged = [v for v in verdicts if v != TOO_FEW]
    if verdicts and not judged:
        return TOO_FEW
    return VERDICTS[max((VERDICTS.index(v) for v in judged), default=0)]


def class_mix(reference: np.ndarray, observed: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """The PSI of the predicted classes: `reference` and `observed` are the top-1 class ids (int)
    of the test channel and of the endpoint's images.

    Returns:
        `psi`, `expected_psi` (without drift, for these counts: `expected_psi`), the `verdict`,
        and `per_class`: class_id, class_name, `reference_share` and `observed_share` (0-1) and
        `psi` (the class's term).
    """
    classes = len(class_names)
    expected = np.bincount(reference, minlength=classes)[:classes]
    actual = np.bincount(observed, minlength=classes)[:classes]
    terms = psi_terms(expected, actual)
    total, noise = float(terms.sum()), expected_psi(classes, len(reference), len(observed))
    return {"psi": total, "expected_psi": noise, "verdict": verdict(total, noise),
            "per_class": [{"class_id": i, "class_name": name, "reference_share": float(expected[i] / expected.sum()),
                           "observed_share": float(actual[i] / max(actual.sum(), 1)), "psi": float(terms[i])}
                          for i, name in enumerate(class_names)]}


def bin_edges(reference: np.ndarray, bins: int = CONTINUOUS_BINS) -> np.ndarray:
    """The inner edges of up to `bins` bins holding equal shares of `reference` (its quantiles);
    fewer where values repeat (a channel whose images all have one size: a single edge, two bins)."""
    return np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1], method="lower"))


def continuous(reference: np.ndarray, observed: np.ndarray) -> dict[str, Any]:
    """A continuous figure (confidence, width, height, brightness) of the test channel against the endpoint's.

    Returns:
        `psi` over the reference's deciles (`bin_edges`; a value on an edge falls in the lower
        bin), `expected_psi` (without drift, for these bins and counts: `expected_psi`), the
        `verdict`, the two-sample Kolmogorov-Smirnov `ks_statistic` (the largest gap between
        the two empirical CDFs, 0-1) and `ks_pvalue` (scipy.stats.ks_2samp, two-sided),
        the `reference_mean` and `observed_mean`, and the counts `reference_images` and `observed_images`.
    """
    from scipy.stats import ks_2samp

    edges = bin_edges(reference)
    expected = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=len(edges) + 1)
    actual = np.bincount(np.searchsorted(edges, observed, side="left"), minlength=len(edges) + 1)
    psi = float(psi_terms(expected, actual).sum())
    noise = expected_psi(len(edges) + 1, len(reference), len(observed))
    ks = ks_2samp(reference, observed)
    return {"psi": psi, "expected_psi": noise, "verdict": verdict(psi, noise),
            "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "reference_mean": float(np.mean(reference)), "observed_mean": float(np.mean(observed)),
            "reference_images": len(reference), "observed_images": len(observed)}


def calibration(confidence: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """The endpoint's accuracy and calibration on the labelled images, as the evaluation report computes them.

    Args:
        confidence: (N,) top-1 probabilities; correct: (N,) bool, whether the top-1 was the label.

    Returns:
        `images`, `accuracy` (0-1), `ece` and its `calibration_bins` (evaluation.metrics:
        Guo et al. 2017, 15 equal-width bins).
    """
    from image_classifier.evaluation.metrics import calibration_bins, expected_calibration_error

    bins = calibration_bins(confidence, correct)
    return {"images": len(correct), "accuracy": float(np.mean(correct)), "ece": expected_calibration_error(bins),
            "calibration_bins": bins}
