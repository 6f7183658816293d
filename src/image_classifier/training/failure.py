"""How a training job fails: its exit codes and SageMaker's failure file (`/opt/ml/output/failure`).

SageMaker shows the first 1024 characters of `output/failure` as the job's FailureReason.
Every writer of that file goes through `write_failure`: `train` (one process, or the launcher
of several) and each torchrun worker (the first to fail has the cause; the others fail
because it did). Standard library only, so that `train` can record even a broken install.
"""

from __future__ import annotations

from image_classifier.sagemaker_env import SageMakerEnv

MAX_FAILURE_REASON = 1024  # characters SageMaker keeps of output/failure
EXIT_FAILURE = 1
EXIT_SIGTERM = 143  # 128 + SIGTERM, the shell's convention


class TrainingInterrupted(Exception):
    """SIGTERM arrived: a checkpoint was saved and the job stopped (a restart resumes)."""


def failure_reason(exc: BaseException) -> str:
    """`exc` as one paragraph (no newlines) of at most MAX_FAILURE_REASON characters: `Type: message`."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= MAX_FAILURE_REASON else text[:MAX_FAILURE_REASON - 3] + "..."


def exit_code(exc: BaseException) -> int:
    """The process exit code of a job that raised `exc`: EXIT_SIGTERM when interrupted, else EXIT_FAILURE."""
    return EXIT_SIGTERM if isinstance(exc, TrainingInterrupted) else EXIT_FAILURE


def clear_failure(env: SageMakerEnv) -> None:
    """Remove a stale failure file: a reason from an earlier run is not this run's."""
    env.failure_path.unlink(missing_ok=True)


def write_failure(env: SageMakerEnv, reason: str, first: bool = False) -> None:
    """Write `reason` (UTF-8) to `env.failure_path`, creating `output/` if needed.

    Args:
        env: the container layout.
        reason: the text SageMaker shows as FailureReason (see `failure_reason`).
        first: keep a reason already there (the first writer has the cause): for the workers
            of a job of several processes, and for the launcher after them. Else overwrite.
    """
    env.output_dir.mkdir(parents=True, exist_ok=True)
    if not first:
        env.failure_path.write_text(reason, encoding="utf-8")
        return
    try:
        with env.failure_path.open("x", encoding="utf-8") as f:
            f.write(reason)
    except FileExistsError:
        pass
