"""The training job entry point: `python -m image_classifier.train` (the container's `train`).

Follows SageMaker's training contract: reads `/opt/ml/input`, writes `/opt/ml/model`,
`/opt/ml/output/data` and `/opt/ml/checkpoints`; on any failure writes a one-paragraph reason
(at most 1024 characters, SageMaker's FailureReason) to `/opt/ml/output/failure` and exits
non-zero (see `training.failure`). SIGTERM (spot interruption, StopTrainingJob) saves a
checkpoint and exits 143.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback

from image_classifier.sagemaker_env import RANK_ENV, SageMakerEnv, is_torchrun_worker
from image_classifier.training.failure import (
    TrainingInterrupted,
    clear_failure,
    exit_code,
    failure_reason,
    write_failure,
)

logger = logging.getLogger("image_classifier.train")



def configure_logging() -> None:
    rank = f"[rank {os.environ[RANK_ENV]}] " if is_torchrun_worker() else ""
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
    worker = is_torchrun_worker()  # the launching `train` has cleared output/failure
    if not worker:
        clear_failure(env)
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
        if isinstance(exc, TrainingInterrupted):
            logger.warning("%s", exc)
        else:
            logger.error("training job failed:\n%s", traceback.format_exc())
        # a worker: the first to fail has the cause; the others fail because it did
        write_failure(env, failure_reason(exc), first=worker)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
