"""A local tuning study: Optuna's TPE sampler and a pruner over the cloud search space, trials in parallel."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from tqdm.contrib.logging import logging_redirect_tqdm

from image_classifier.launch import metrics, search_space
from image_classifier.training.config import TrainConfig
from image_classifier.tuning import PRUNERS
from image_classifier.tuning.report import write_outputs
from image_classifier.tuning.trial import TRIALS_DIR, Jobs, TrialFailed, TrialJob, TuningInterrupted

logger = logging.getLogger(__name__)

STUDY_DB = "study.db"            # the default storage: SQLite in the output folder
SQLITE_TIMEOUT_SECONDS = 60      # parallel trials write to one SQLite file: wait for its lock
MEDIAN_STARTUP_TRIALS = 3        # median: trials that run to the end before any is pruned
MEDIAN_WARMUP_EPOCHS = 1         # median: epochs of each trial never pruned
HYPERBAND_REDUCTION_FACTOR = 3   # hyperband: 1/3 of the trials at a rung go on to the next


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    """The pruner named `name`, its budget in epochs (one epoch, one Optuna step).

    Raises:
        ValueError: not one of PRUNERS.
    """
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs,
                                              reduction_factor=HYPERBAND_REDUCTION_FACTOR)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS,
                                           n_warmup_steps=MEDIAN_WARMUP_EPOCHS)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; valid: {', '.join(PRUNERS)}")


def max_epochs(distributions: dict[str, Any], static: dict[str, str]) -> int:
    """The most epochs a trial can run: the top of the `epochs` range, else the static or default value."""
    epochs = distributions.get("epochs")
    if epochs is None:
        return TrainConfig.from_hyperparameters({k: v for k, v in static.items() if k == "epochs"}).epochs
    if isinstance(epochs, optuna.distributions.CategoricalDistribution):
        return max(int(v) for v in epochs.choices)
    return int(epochs.high)


def make_storage(storage: str | None, output: Path) -> str | optuna.storages.BaseStorage:
    """`storage` (any SQLAlchemy database URL), by default SQLite in `output`; SQLite waits for its lock."""
    url = storage or f"sqlite:///{(output / STUDY_DB).resolve()}"
    if url.startswith("sqlite:"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}})
    return url


@contextlib.contextmanager
def stopping_on_signals(jobs: Jobs):
    """While inside: SIGINT/SIGTERM stop every running job (SIGTERM, then SIGKILL); a second one kills them.

    Only the main thread can handle signals: elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        if jobs.stopping.is_set():
            logger.warning("%s again: killing the training jobs", signal.Signals(signum).name)
            jobs.stop_all(kill=True)
            return
        count = jobs.stop_all()
        logger.warning("%s: stopping the %d running training job(s); no new trial starts "
                       "(again to kill them)", signal.Signals(signum).name, count)

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def tune(data: Path, output: Path, static: dict[str, str], *, objective: str = "valid_accuracy",
         max_trials: int = 8, parallel: int = 2, pruner: str = "hyperband", include_model: bool = False,
         search_space_json: str | None = None, storage: str | None = None, study_name: str | None = None,
         seed: int | None = None, show_progress_bar: bool = True) -> tuple[optuna.Study, dict[str, Any], bool]:
    """Run a study of `max_trials` training jobs, `parallel` at a time, and write its outputs to `output`.

    Args:
        data: the ImageFolder root with train/, valid/ and test/.
        output: where the study database, trials/<training job>/, the table, best_hyperparameters.json
            and plots/ go.
        static: hyperparameters every trial gets (strings).
        objective: one of `launch.metrics.OBJECTIVES`.
        max_trials: trials this call runs (a study shared through `storage` may hold more).
        parallel: trials at a time (threads, each driving one training job process).
        pruner: one of PRUNERS.
        include_model: tune `model` over the registry too.
        search_space_json: JSON text of ranges that override or add to the defaults.
        storage: a database URL (`postgresql://...` lets several machines share the study);
            default SQLite in `output`.
        study_name: the study to create, or to continue if the storage has it.
        seed: the TPE sampler's seed.
        show_progress_bar: Optuna's progress bar on stderr.

    Returns:
        (the study, `report.write_outputs`' answer, whether a signal stopped it early).

    Raises:
        ValueError: an unknown objective or pruner, fewer than 1 trial or job at a time, a bad
            search space, static hyperparameters the job refuses or that are also tuned, a missing
            channel, or an existing study of that name that optimises the other way.
    """
    direction = metrics.objective_type(objective).lower()
    if max_trials < 1 or parallel < 1:
        raise ValueError(f"--max-trials ({max_trials}) and --parallel ({parallel}) must be at least 1")
    for channel in ("train", "valid"):
        if not (data / channel).is_dir():
            raise ValueError(f"no {channel}/ folder in {data}: --data takes an ImageFolder root with train/valid/test")
    distributions = search_space.to_optuna(search_space.search_space(include_model, search_space_json))
    TrainConfig.from_hyperparameters(static)  # a typo fails now, not in every trial
    if tuned_too := sorted(set(static) & set(distributions)):
        raise ValueError(f"hyperparameters both static and tuned: {', '.join(tuned_too)}")
    output.mkdir(parents=True, exist_ok=True)
    (output / TRIALS_DIR).mkdir(exist_ok=True)
    study_name = study_name or f"ic-local-{time.strftime('%y%m%d-%H%M%S')}"
    study = optuna.create_study(
        storage=make_storage(storage, output), study_name=study_name, load_if_exists=True, direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed), pruner=make_pruner(pruner, max_epochs(distributions, static)))
    if study.direction.name.lower() != direction:
        raise ValueError(f"study {study_name} exists and {study.direction.name.lower()}s its objective, "
                         f"not {direction}: choose another --study-name")
    jobs = Jobs()
    objective_fn = TrialJob(data_dir=data, workdir=output, objective=objective, distributions=distributions,
                            static=static, name_prefix=study_name, jobs=jobs,
                            threads=max(1, (os.cpu_count() or 1) // parallel))
    logger.info("study %s (%s %s, pruner %s) in %s: %d trial(s), %d at a time", study_name, direction, objective,
                pruner, output, max_trials, parallel)
    with stopping_on_signals(jobs), logging_redirect_tqdm():  # log lines above the progress bar
        study.optimize(objective_fn, n_trials=max_trials, n_jobs=parallel,
                       catch=(TrialFailed, TuningInterrupted), show_progress_bar=show_progress_bar)
    return study, write_outputs(study, output, objective), jobs.stopping.is_set()
