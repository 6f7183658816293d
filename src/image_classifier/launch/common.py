"""What the launchers share: KEY=VALUE arguments, counts, and the arguments of a training job."""

from __future__ import annotations

import argparse

BASE_JOB_NAME = "image-classifier"  # the prefix SageMaker gives the training jobs' names
TRAINING_INSTANCE_TYPE = "ml.g4dn.xlarge"  # a training job's default instance: one T4 GPU
MAX_RUNTIME = 3600  # a training job's default limit, seconds


def parse_static(pairs: list[str]) -> dict[str, str]:
    """`["freeze=none", "model=resnet18"]` → a dict. Raises: ValueError: a pair without `=`."""
    static = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--hyperparameter takes KEY=VALUE, got {pair!r}")
        static[key] = value
    return static


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1. Raises: argparse.ArgumentTypeError: otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def add_training_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of every launcher that starts training jobs: image, role, region, channels, output, instances."""
    parser.add_argument("--image", required=True, help="training image URI in ECR")
    parser.add_argument("--role", required=True, help="IAM role ARN the training jobs run as")
    parser.add_argument("--region", default=None, help="AWS region (default: the AWS configuration's)")
    parser.add_argument("--data", required=True, help="S3 prefix holding the train/, valid/ and test/ channels")
    parser.add_argument("--output", required=True, help="S3 prefix for the model artifacts and outputs")
    parser.add_argument("--instance-type", default=TRAINING_INSTANCE_TYPE)
    parser.add_argument("--instance-count", type=positive_int, default=1,
                        help="instances per training job (default: %(default)s); with more than one, or with "
                             "several GPUs, the container trains data-parallel under torchrun "
                             "(training/distributed.py) on every channel replicated to each instance")
    parser.add_argument("--max-runtime", type=int, default=MAX_RUNTIME, help="seconds a training job may run")
