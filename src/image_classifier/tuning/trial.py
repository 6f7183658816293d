"""One tuning trial: a real training job on its own `/opt/ml` tree, its log read for metrics and pruning.

The trial lays out `<workdir>/trials/<training job>/` as SageMaker would (`local.lay_out`), runs
`python -m image_classifier.train` on it (`local.start_job`), and reads the job's stdout line by line with the
cloud metric definitions (`launch.metrics`). Each epoch line's objective is reported to Optuna;
when the pruner says so, the job gets SIGTERM (it saves a checkpoint and exits 143, as on a
StopTrainingJob) and the trial ends PRUNED. The trial's value is the last value of the objective
the job logged, as SageMaker's FinalHyperParameterTuningJobObjectiveMetric.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from image_classifier import local
from image_classifier.launch import metrics
from image_classifier.launch.search_space import suggest
from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.training import features
from image_classifier.training.checkpoints import CHECKPOINT_FILE

logger = logging.getLogger(__name__)

TRIALS_DIR = "trials"            # <workdir>/trials/<training job>/: one /opt/ml tree per trial
LOG_FILE = "train.log"           # the job's whole stdout and stderr, in the trial's folder
TAIL_LINES = 20                  # lines of the log a failed trial keeps as its reason
STOP_GRACE_SECONDS = 60.0        # after SIGTERM, seconds a job has to save and exit before SIGKILL

# every name=value the job logs, with the regexes SageMaker reads them with
_PATTERNS = {name: re.compile(metrics.metric_regex(name))
             for name in ("epoch", *metrics.EPOCH_METRICS, *metrics.FINAL_METRICS)}


class TrialFailed(RuntimeError):
    """The training job exited non-zero, or logged no value of the objective."""


class TuningInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) or SIGTERM reached the tuner: the trial's job was stopped or never started."""


def parse_metrics(line: str) -> dict[str, float]:
    """The metrics in one log line, read with `launch.metrics.metric_regex` as SageMaker does.

    Args:
        line: a line of the training job's log.

    Returns:
        metric name → value; `epoch` too on an epoch line; empty for other lines.
    """
    return {name: float(match.group(1)) for name, pattern in _PATTERNS.items() if (match := pattern.search(line))}


def link_feature_cache(env: SageMakerEnv, workdir: Path) -> Path:
    """Make the trial's `<checkpoint dir>/feature-cache` a symlink to the study's one shared folder.

    Jobs with a frozen backbone cache its features there (locked, so parallel trials compute
    them once); every trial of the study then reuses them.

    Args:
        env: the trial's layout.
        workdir: the tuning output folder; the shared folder is `<workdir>/feature-cache`.

    Returns:
        the symlink (`local.link_feature_cache`).
    """
    return local.link_feature_cache(env, workdir / features.CACHE_DIR)


class Jobs:
    """The running training jobs of a study, so that a signal can stop every one of them."""

    def __init__(self, grace_seconds: float = STOP_GRACE_SECONDS):
        self.stopping = threading.Event()  # set once the tuner was told to stop: no new job starts
        self.grace_seconds = grace_seconds
        self._lock = threading.RLock()  # a signal handler may run while this thread holds it
        self._running: set[subprocess.Popen] = set()

    def start(self, base_dir: Path, extra_environ: dict[str, str]) -> subprocess.Popen:
        """Start the training job on the tree at `base_dir` (`local.start_job`) in its own session
        (a Ctrl-C at the terminal reaches the tuner, not it); its stdout and stderr in one text pipe.

        Raises:
            TuningInterrupted: the tuner is stopping.
        """
        with self._lock:
            if self.stopping.is_set():
                raise TuningInterrupted("the tuner is stopping: no new training job")
            process = local.start_job(base_dir, extra_environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, bufsize=1, start_new_session=True)
            self._running.add(process)
        if self.stopping.is_set():  # a signal came while it started
            self.stop(process)
        return process

    def finished(self, process: subprocess.Popen) -> None:
        """Forget a job that exited."""
        with self._lock:
            self._running.discard(process)

    def stop(self, process: subprocess.Popen) -> None:
        """SIGTERM to the job, as StopTrainingJob sends; SIGKILL to its process group after the grace time."""
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        timer = threading.Timer(self.grace_seconds, self.kill, (process,))
        timer.daemon = True
        timer.start()

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        """SIGKILL to the job and its children (DataLoader workers), if it still runs."""
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop_all(self, kill: bool = False) -> int:
        """Stop (or, with `kill`, SIGKILL) every running job and start no more.

        Returns:
            how many jobs were running.
        """
        with self._lock:
            self.stopping.set()
            running = list(self._running)
        for process in running:
            self.kill(process) if kill else self.stop(process)
        return len(running)


@dataclass
class TrialJob:
    """The Optuna objective: one call runs one trial's training job and returns its objective value.

    Attributes:
        data_dir: the ImageFolder root with train/, valid/ and test/.
        workdir: the tuning output folder; trials go to `<workdir>/trials/<training job>/`
            (studies, and workers of one study, sharing the folder do not overwrite each other's
            trials: trial numbers are unique in a study). The trial's user attributes `trial_dir`
            and `host` say where its model is.
        objective: one of `launch.metrics.OBJECTIVES`.
        distributions: the search space, as `search_space.to_optuna` gives it.
        static: hyperparameters every trial gets (strings).
        name_prefix: trial `n`'s training job is `<name_prefix>-<n, 3 digits>`.
        jobs: the study's running jobs.
        threads: OMP_NUM_THREADS of each job, unless the environment sets it (None: leave torch's default).
    """

    data_dir: Path
    workdir: Path
    objective: str
    distributions: dict[str, Any]
    static: dict[str, str] = field(default_factory=dict)
    name_prefix: str = "trial"
    jobs: Jobs = field(default_factory=Jobs)
    threads: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        """Run the trial's job to its end (or until pruned).

        Returns:
            the last value of the objective the job logged.

        Raises:
            optuna.TrialPruned: the pruner stopped the job.
            TrialFailed: the job exited non-zero or logged no objective value.
            TuningInterrupted: the tuner is stopping (the study stops after the running trials).
        """
        if self.jobs.stopping.is_set():
            self._interrupted(trial, "the tuner is stopping: trial not started")
        hyperparameters = {**self.static, **suggest(trial, self.distributions)}
        name = f"{self.name_prefix}-{trial.number:03d}"
        base = self.workdir / TRIALS_DIR / name
        env = local.lay_out(base, self.data_dir, hyperparameters)
        link_feature_cache(env, self.workdir)
        for key, value in {"training_job": name, "trial_dir": str(base.resolve()), "host": socket.gethostname(),
                           "hyperparameters": hyperparameters}.items():
            trial.set_user_attr(key, value)
        logger.info("trial %d: training job %s in %s with %s", trial.number, name, base, hyperparameters)
        try:
            value, pruned_at, tail, exit_code = self._run(trial, env, base / LOG_FILE)
        except TuningInterrupted as exc:
            self._interrupted(trial, str(exc))
        finally:
            (env.checkpoint_dir / CHECKPOINT_FILE).unlink(missing_ok=True)  # hundreds of MB, no use once it ended
        trial.set_user_attr("exit_code", exit_code)
        if pruned_at is not None:
            raise optuna.TrialPruned(f"stopped after epoch {pruned_at}: {self.objective}={value:.6g}")
        if self.jobs.stopping.is_set() and exit_code != 0:
            self._interrupted(trial, f"training job {name} stopped (exit code {exit_code}): the tuner is stopping")
        if exit_code != 0:
            reason = env.failure_path.read_text().strip() if env.failure_path.is_file() else "\n".join(tail)
            trial.set_user_attr("failure", reason)
            raise TrialFailed(f"training job {name} exited with code {exit_code}: {reason}")
        if value is None:
            trial.set_user_attr("failure", f"no {self.objective} in the log")
            raise TrialFailed(f"training job {name} logged no {self.objective} (see {base / LOG_FILE})")
        return value

    @staticmethod
    def _interrupted(trial: optuna.Trial, message: str) -> None:
        """End the trial FAIL and the study after its running trials.

        Raises:
            TuningInterrupted: always.
        """
        trial.set_user_attr("failure", f"interrupted: {message}")
        trial.study.stop()
        raise TuningInterrupted(message)

    def _environ(self) -> dict[str, str]:
        """What the job's environment adds to the tuner's (`local.child_environ`)."""
        environ = {"PYTHONUNBUFFERED": "1"}  # each log line reaches the tuner when written
        if self.threads and "OMP_NUM_THREADS" not in os.environ:
            environ["OMP_NUM_THREADS"] = str(self.threads)  # parallel jobs share the cores
        return environ

    def _run(self, trial: optuna.Trial, env: SageMakerEnv,
             log_path: Path) -> tuple[float | None, int | None, list[str], int]:
        """Run the job, reporting each epoch's objective and stopping it when the pruner says so.

        Returns:
            (last objective value, epoch pruned at or None, last lines of the log, exit code).
        """
        process = self.jobs.start(env.base_dir, self._environ())
        value, pruned_at, tail = None, None, collections.deque(maxlen=TAIL_LINES)
        try:
            with open(log_path, "w", buffering=1) as log:  # line by line: readable while it runs
                for line in process.stdout:
                    log.write(line)
                    tail.append(line.rstrip("\n"))
                    found = parse_metrics(line)
                    if self.objective not in found:
                        continue
                    value = found[self.objective]
                    if "epoch" in found and pruned_at is None:
                        trial.report(value, int(found["epoch"]))
                        if trial.should_prune():
                            pruned_at = int(found["epoch"])
                            self.jobs.stop(process)  # read on to the end: the job saves and exits
            return value, pruned_at, list(tail), process.wait()
        finally:
            self.jobs.kill(process)  # only if the tuner itself failed while the job ran
            process.wait()
            process.stdout.close()
            self.jobs.finished(process)
