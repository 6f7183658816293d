"""The training job entry point: `python -m image_classifier.train` (the container's `train`).

Follows SageMaker's training contract: reads `/opt/ml/input`, writes `/opt/ml/model`,
`/opt/ml/output/data` and `/opt/ml/checkpoints`; on any failure writes a one-paragraph reason
(at most 1024 characters, SageMaker's FailureReason) to `/opt/ml/output/failure` and exits
non-zero. SIGTERM (spot interruption, StopTrainingJob) saves a checkpoint and exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
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
WORKER_ENV = "RANK"  # set by torchrun in each worker process (training/distributed.py)


def failure_reason(exc: BaseException) -> str:
    """One paragraph (no newlines), at most MAX_FAILURE_REASON characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= MAX_FAILURE_REASON else text[:MAX_FAILURE_REASON - 3] + "..."


def configure_logging() -> None:
    rank = f"[rank {os.environ[WORKER_ENV]}] " if WORKER_ENV in os.environ else ""
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                        format=f"%(asctime)s %(levelname)s {rank}%(name)s: %(message)s")


def main() -> int:
    """Run one training job on the `/opt/ml` layout; return the process exit code.

    A job of several processes (several hosts, several GPUs, see `training.distributed.plan`)
    re-runs this module under torchrun, and each worker then runs the ordinary job in the
    job's process group.
    """
    configure_logging()
    env = SageMakerEnv.from_environ()
    worker = WORKER_ENV in os.environ  # torchrun's; the launching `train` has cleared output/failure
    if not worker:
        env.failure_path.unlink(missing_ok=True)  # a stale reason from an earlier run is not this run's
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        # imported here so that even an import failure (a broken install) leaves a failure file
        from image_classifier.training import distributed
        from image_classifier.training.config import TrainConfig
        from image_classifier.training.job import run

        if not worker and (job := distributed.plan(env)).world_size > 1:
            return distributed.launch(env, job)
        config = TrainConfig.from_hyperparameters(env.hyperparameters())
        with distributed.process_group():
            run(env, config, should_stop=distributed.agreed(stop.is_set))
        return 0
    except Exception as exc:  # the training contract: every failure becomes output/failure
        interrupted = isinstance(exc, TrainingInterrupted)
        if not interrupted:
            logger.error("training job failed:\n%s", traceback.format_exc())
        else:
            logger.warning("%s", exc)
        env.output_dir.mkdir(parents=True, exist_ok=True)
        if not worker:
            env.failure_path.write_text(failure_reason(exc), encoding="utf-8")
        else:  # the first worker to fail has the cause; the others fail because it did
            with contextlib.suppress(FileExistsError), env.failure_path.open("x", encoding="utf-8") as f:
                f.write(failure_reason(exc))
        return EXIT_SIGTERM if interrupted else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
