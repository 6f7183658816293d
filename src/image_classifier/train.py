"""The training job entry point: `python -m image_classifier.train` (the container's `train`).

Follows SageMaker's training contract: reads `/opt/ml/input`, writes `/opt/ml/model`,
`/opt/ml/output/data` and `/opt/ml/checkpoints`; on any failure writes a one-paragraph reason
(at most 1024 characters, SageMaker's FailureReason) to `/opt/ml/output/failure` and exits
non-zero. SIGTERM (spot interruption, StopTrainingJob) saves a checkpoint and exits.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import traceback

from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.training import TrainingInterrupted

logger = logging.getLogger("image_classifier.train")

MAX_FAILURE_REASON = 1024  # characters SageMaker keeps of output/failure
EXIT_FAILURE = 1
EXIT_SIGTERM = 143  # 128 + SIGTERM, the shell's convention


def failure_reason(exc: BaseException) -> str:
    """One paragraph (no newlines), at most MAX_FAILURE_REASON characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= MAX_FAILURE_REASON else text[:MAX_FAILURE_REASON - 3] + "..."


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> int:
    """Run one training job on the `/opt/ml` layout; return the process exit code."""
    configure_logging()
    env = SageMakerEnv.from_environ()
    env.failure_path.unlink(missing_ok=True)  # a stale reason from an earlier run is not this run's
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        # imported here so that even an import failure (a broken install) leaves a failure file
        from image_classifier.training.config import TrainConfig
        from image_classifier.training.job import run

        config = TrainConfig.from_hyperparameters(env.hyperparameters())
        run(env, config, should_stop=stop.is_set)
        return 0
    except Exception as exc:  # the training contract: every failure becomes output/failure
        interrupted = isinstance(exc, TrainingInterrupted)
        if not interrupted:
            logger.error("training job failed:\n%s", traceback.format_exc())
        else:
            logger.warning("%s", exc)
        env.output_dir.mkdir(parents=True, exist_ok=True)
        env.failure_path.write_text(failure_reason(exc), encoding="utf-8")
        return EXIT_SIGTERM if interrupted else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
