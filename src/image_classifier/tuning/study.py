"""A local tuning study: Optuna's TPE sampler and a pruner over the cloud search space, trials in parallel."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from tqdm.contrib.logging import logging_redirect_tqdm

from image_classifier.launch import metrics, search_space
from image_classifier.training.config import TrainConfig
from image_classifier.tuning import PRUNERS
from image_classifier.tuning.report import write_outputs
from image_classifier.tuning.trial import TRIALS_DIR, Jobs, TrialFailed, TrialJob, TuningInterrupted

logger = logging.getLogger(__name__)

STUDY_DB = "study.db"            # the default storage: SQLite in the output folder
SQLITE_TIMEOUT_SECONDS = 60      # parallel trials write to one SQLite file: wait for its lock
CONNECT_TIMEOUT_SECONDS = 10     # PostgreSQL (libpq's connect_timeout): a silent host fails in 10 s, not ~2 min
MEDIAN_STARTUP_TRIALS = 3        # median: trials that run to the end before any is pruned
MEDIAN_WARMUP_EPOCHS = 1         # median: epochs of each trial never pruned
HYPERBAND_REDUCTION_FACTOR = 3   # hyperband: 1/3 of the trials at a rung go on to the next
# A worker records each running trial's heartbeat this often; a RUNNING trial whose heartbeat is older than
# Optuna's grace period (by default twice this: optuna.storages.RDBStorage) belongs to a dead worker and
# is marked FAIL by the next worker that looks.
HEARTBEAT_SECONDS = 60
WAIT_POLL_SECONDS = 10           # a worker done with its trials checks the others' this often
CONFIRM_SECONDS = 2.0            # between wait_for_other_workers' two quiet looks: more than a tell-to-ask gap
EXAMPLE_URL = "postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE"
# The PostgreSQL advisory lock workers hold while Optuna creates its tables: two workers starting at once on
# an empty database otherwise both run CREATE TABLE, and one fails (UniqueViolation on pg_type). Any number
# unique to this use; this one is "ic-tune" in ASCII.
SCHEMA_LOCK_KEY = 0x69632D74756E65


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


@contextlib.contextmanager
def schema_lock(url: sqlalchemy.engine.URL, engine_kwargs: dict[str, Any]):
    """While inside, hold PostgreSQL's advisory lock `SCHEMA_LOCK_KEY` on `url`'s database; other databases: nothing.

    `engine_kwargs` go to `sqlalchemy.create_engine` (the connection's timeout).

    Raises:
        sqlalchemy.exc.OperationalError: the database cannot be reached.
    """
    if url.get_backend_name() != "postgresql":
        yield
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **engine_kwargs)
    try:
        with engine.connect() as connection:  # the lock ends with its session, however this ends
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            yield
    finally:
        engine.dispose()


def masked(url: str) -> str:
    """`url` with its password starred, for messages: what lies between the user name's `:` and the last `@`.

    For a URL SQLAlchemy cannot parse; a parsed one: `URL.render_as_string(hide_password=True)`.
    """
    userinfo, at, rest = url.rpartition("@")
    if not at:
        return url
    scheme, slashes, user = userinfo.partition("://") if "://" in userinfo else ("", "", userinfo)
    user, colon, _ = user.partition(":")
    return f"{scheme}{slashes}{user}{colon}{'***' if colon else ''}@{rest}"


def make_storage(storage: str | None, output: Path) -> optuna.storages.RDBStorage:
    """Open `storage` (an SQLAlchemy database URL), by default SQLite in `output`; SQLite waits for its lock.

    A PostgreSQL connection gives up after `CONNECT_TIMEOUT_SECONDS`, unless the URL sets `connect_timeout`.

    Every trial records a heartbeat (`HEARTBEAT_SECONDS`), so that the trials of a worker that died can
    be told from those still running (`wait_for_other_workers`).

    Raises:
        ValueError: `storage` is not a database URL, its port is not a number, or no driver for its
            database is installed (PostgreSQL: psycopg, in the tune extra).
        ConnectionError: the database cannot be reached or refused the connection (the message
            names it without its password).
    """
    url = storage or f"sqlite:///{(output / STUDY_DB).resolve()}"
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ValueError(f"--storage {masked(url)!r} is not a database URL: e.g. {EXAMPLE_URL}") from None
    except ValueError:  # SQLAlchemy's int() of the port
        raise ValueError(f"--storage {masked(url)!r}: the port is not a number (a password with @ or / in it must "
                         f"be percent-encoded): e.g. {EXAMPLE_URL}") from None
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}}
    elif backend == "postgresql" and "connect_timeout" not in parsed.query:
        engine_kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_SECONDS}}
    else:
        engine_kwargs = {}
    try:
        with schema_lock(parsed, engine_kwargs), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                              heartbeat_interval=HEARTBEAT_SECONDS)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
        raise ValueError(f"--storage {shown}: no driver for {parsed.drivername!r} ({exc}); for PostgreSQL "
                         f"install the tune extra (psycopg) and write {EXAMPLE_URL}") from None
    except sqlalchemy.exc.OperationalError as exc:
        reason = " ".join(str(exc.orig or exc).split())
        raise ConnectionError(f"--storage {shown}: cannot open the study database: {reason}") from None


def wait_for_other_workers(study: optuna.Study, stopping: threading.Event,
                           poll_seconds: float = WAIT_POLL_SECONDS) -> None:
    """Return once no trial of `study` runs: the other workers' trials ended, or their heartbeat stopped.

    It returns after two looks in a row that find no RUNNING trial and the same number of trials, the
    second CONFIRM_SECONDS (or `poll_seconds`, if less) after the first: at one look another worker may
    be between one trial's end and the next's start (milliseconds).
    Each look first marks FAIL the RUNNING trials whose heartbeat is older than the storage's grace
    period (`optuna.storages.fail_stale_trials`): a dead worker holds no one up for longer than that.

    Args:
        study: the study, its storage shared with the other workers.
        stopping: set (Ctrl-C) to stop waiting at once.
        poll_seconds: seconds between looks.
    """
    waiting_for, quiet_count = None, None  # quiet_count: trials at the last look that found none RUNNING
    while not stopping.is_set():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        running = [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        if not running:
            if quiet_count == len(trials):
                return
            quiet_count = len(trials)
        else:
            quiet_count = None
            if running != waiting_for:
                logger.info("waiting for trial(s) %s of study %s, run by other workers, before the report "
                            "(Ctrl-C: report now)", ", ".join(map(str, running)), study.study_name)
                waiting_for = running
        stopping.wait(poll_seconds if quiet_count is None else min(poll_seconds, CONFIRM_SECONDS))


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
         seed: int | None = None, show_progress_bar: bool = True,
         wait_for_workers: bool = True) -> tuple[optuna.Study, dict[str, Any], bool]:
    """Run `max_trials` training jobs of a study, `parallel` at a time, and write its outputs to `output`.

    Several workers (processes, on one machine or many) share a study through one `storage` and
    `study_name`: each runs its own `max_trials` (the study gets their sum), trial numbers come from
    the storage (unique in the study), and each, once its trials ended, waits for the others'
    (`wait_for_other_workers`), so that workers that end together report the same trials and best trial.

    Args:
        data: the ImageFolder root with train/, valid/ and test/.
        output: where the study database, trials/<training job>/, the table, best_hyperparameters.json
            and plots/ go.
        static: hyperparameters every trial gets (strings).
        objective: one of `launch.metrics.OBJECTIVES`.
        max_trials: trials this call runs (a study shared through `storage` gets every worker's).
        parallel: trials at a time (threads, each driving one training job process).
        pruner: one of PRUNERS.
        include_model: tune `model` over the registry too.
        search_space_json: JSON text of ranges that override or add to the defaults.
        storage: an SQLAlchemy database URL (`postgresql+psycopg://...` lets several machines share
            the study); default SQLite in `output`.
        study_name: the study to create, or to continue if the storage has it.
        seed: the TPE sampler's seed.
        show_progress_bar: Optuna's progress bar on stderr.
        wait_for_workers: after its own trials, wait for the trials other workers run before the report.

    Returns:
        (the study, `report.write_outputs`' answer, whether a signal stopped it early).

    Raises:
        ValueError: an unknown objective or pruner, fewer than 1 trial or job at a time, a bad
            search space, static hyperparameters the job refuses or that are also tuned, a missing
            channel, a bad storage URL or no driver for it, or an existing study of that name that
            optimises the other way.
        ConnectionError: the storage's database cannot be reached.
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
    rdb = make_storage(storage, output)
    (output / TRIALS_DIR).mkdir(exist_ok=True)
    study_name = study_name or f"ic-local-{time.strftime('%y%m%d-%H%M%S')}"
    study = optuna.create_study(
        storage=rdb, study_name=study_name, load_if_exists=True, direction=direction,
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
        if wait_for_workers:
            wait_for_other_workers(study, jobs.stopping)
    return study, write_outputs(study, output, objective), jobs.stopping.is_set()
