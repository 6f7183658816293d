"""What a local tuning study leaves: the table of trials, best_hyperparameters.json, and plots."""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import optuna

from image_classifier import artifacts

logger = logging.getLogger(__name__)

TRIALS_CSV = "trials.csv"
TRIALS_TABLE = "trials.txt"
BEST_FILE = "best_hyperparameters.json"
PLOTS_DIR = "plots"
PLOTLY_JS = "plotly.min.js"  # the name plotly's include_plotlyjs="directory" pages load
# plot name → the function's name in both optuna.visualization (plotly) and its matplotlib twin
PLOTS = {"optimization_history": "plot_optimization_history",
         "param_importances": "plot_param_importances",
         "intermediate_values": "plot_intermediate_values"}


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table(trials: list[optuna.trial.FrozenTrial], objective: str) -> str:
    """One row per trial, like the cloud tuner's table, with its state (COMPLETE, PRUNED, FAIL, ...).

    A pruned trial's value is the last it reported; `epochs` counts the epochs it reported.
    """
    rows = [f"{'trial':>5}  {'training job':<32} {'state':<9} {objective:>14} {'epochs':>6} {'seconds':>8}"
            f"  hyperparameters"]
    for t in sorted(trials, key=lambda t: t.number):
        value = t.value
        if value is None and t.state == optuna.trial.TrialState.PRUNED and t.last_step is not None:
            value = t.intermediate_values[t.last_step]
        shown = f"{value:.4f}" if value is not None else "-"
        seconds = f"{t.duration.total_seconds():.0f}" if t.duration is not None else "-"
        tuned = " ".join(f"{k}={_shown(v)}" for k, v in sorted(t.params.items()))
        rows.append(f"{t.number:>5}  {t.user_attrs.get('training_job', '-'):<32} {t.state.name:<9} {shown:>14} "
                    f"{len(t.intermediate_values):>6} {seconds:>8}  {tuned}")
    failures = [f"trial {t.number} {t.state.name}: {t.user_attrs['failure']}"
                for t in trials if t.state == optuna.trial.TrialState.FAIL and "failure" in t.user_attrs]
    return "\n".join(rows + failures)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The completed trial with the best value; of equal values, the lowest-numbered (the first to reach it).

    Optuna's `study.best_trial` leaves ties to the database's row order, so workers sharing a study
    could each name another trial; this one names the same trial in every worker.

    Raises:
        ValueError: no trial of the study completed.
    """
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise ValueError(f"study {study.study_name} has no completed trial")
    sign = 1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1
    return min(complete, key=lambda t: (sign * t.value, t.number))


def best_hyperparameters(study: optuna.Study, objective: str) -> dict[str, Any]:
    """The best trial's hyperparameters, static and tuned, in the cloud tuner's best_hyperparameters.json form.

    `tuning_job` is the study's name and `training_job` the best trial's job name (`best_trial`).

    Raises:
        ValueError: no trial of the study completed.
    """
    best = best_trial(study)
    hyperparameters = best.user_attrs.get("hyperparameters") or {k: str(v) for k, v in best.params.items()}
    return {"tuning_job": study.study_name, "training_job": best.user_attrs.get("training_job", str(best.number)),
            "objective": objective, "objective_value": best.value, "hyperparameters": hyperparameters}


def write_plots(study: optuna.Study, directory: Path, objective: str) -> list[Path]:
    """Optimisation history, parameter importances and learning curves: PNG (matplotlib) and HTML (plotly).

    The HTML files share one `plotly.min.js` in `directory` (they open offline). Every file is written
    whole and renamed into place: workers of one study may write the same folder at once. Without a
    completed trial there are none; a plot Optuna cannot draw yet is left out, with a warning.

    Returns:
        the files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization as plotly_plots
    import optuna.visualization.matplotlib as matplotlib_plots

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        logger.warning("no plots: no trial of study %s completed", study.study_name)
        return []
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, function in PLOTS.items():
        kwargs = {} if name == "intermediate_values" else {"target_name": objective}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = getattr(matplotlib_plots, function)(study, **kwargs)
                figure = getattr(plotly_plots, function)(study, **kwargs)
        except (ValueError, RuntimeError) as exc:
            logger.warning("no %s plot: %s", name, exc)
            continue
        png, page = directory / f"{name}.png", directory / f"{name}.html"
        image = io.BytesIO()
        axes.figure.savefig(image, format="png", dpi=100, bbox_inches="tight")
        plt.close(axes.figure)
        artifacts.atomic_write_bytes(png, image.getvalue())
        artifacts.atomic_write_bytes(page, figure.to_html(include_plotlyjs="directory").encode())
        written += [png, page]
    if written and not (directory / PLOTLY_JS).is_file():
        from plotly.offline import get_plotlyjs

        artifacts.atomic_write_bytes(directory / PLOTLY_JS, get_plotlyjs().encode())
    return written


def write_outputs(study: optuna.Study, output: Path, objective: str) -> dict[str, Any]:
    """Write trials.csv, trials.txt, best_hyperparameters.json (when a trial completed) and the plots.

    Each file is written whole and renamed into place (`artifacts.atomic_write_bytes`): the workers
    of a study shared through a database may write one output folder at the same time.

    Returns:
        `{"table": the printed table, "best": best_hyperparameters or None, "files": [paths written]}`.
    """
    output.mkdir(parents=True, exist_ok=True)
    table = format_table(study.trials, objective)
    artifacts.atomic_write_bytes(output / TRIALS_TABLE, (table + "\n").encode())
    artifacts.atomic_write_bytes(output / TRIALS_CSV, study.trials_dataframe().to_csv(index=False).encode())
    files = [output / TRIALS_TABLE, output / TRIALS_CSV]
    try:
        best = best_hyperparameters(study, objective)
    except ValueError as exc:
        logger.warning("%s: no %s", exc, BEST_FILE)
        best = None
    else:
        artifacts.atomic_write_bytes(output / BEST_FILE, json.dumps(best, indent=2).encode())
        files.append(output / BEST_FILE)
    files += write_plots(study, output / PLOTS_DIR, objective)
    return {"table": table, "best": best, "files": files}
