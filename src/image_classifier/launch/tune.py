"""Start a SageMaker hyperparameter tuning job on the project's training image (SageMaker SDK v3).

The training jobs are the container's `train`, with the channels `train`, `valid` and `test`
under one S3 prefix; the objective and every metric come from `launch.metrics`, the ranges
from `launch.search_space`.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import boto3

from image_classifier.launch import metrics, search_space
from image_classifier.launch.common import BASE_JOB_NAME, add_training_job_arguments, parse_static
from image_classifier.launch.dry_run import DryRun, Stopped
from image_classifier.launch.exit_codes import FAILED, LAUNCHER, exit_on
from image_classifier.training.config import SAGEMAKER_KEYS

logger = logging.getLogger(__name__)

STRATEGIES = ("Bayesian", "Random", "Hyperband")
CHANNELS = ("train", "valid", "test")
CREATE_OPERATION = "CreateHyperParameterTuningJob"
TERMINAL = ("Completed", "Failed", "Stopped", "DeleteFailed")


def default_job_name() -> str:
    """`ic-YYMMDD-HHMMSS-xxxx`: unique per second and then some (tuning job names: <= 32 characters)."""
    return f"ic-{time.strftime('%y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tune.py", description=__doc__.splitlines()[0])
    add_training_job_arguments(parser)
    parser.add_argument("--objective", default="valid_accuracy", choices=tuple(metrics.OBJECTIVES))
    parser.add_argument("--strategy", default="Bayesian", choices=STRATEGIES)
    parser.add_argument("--max-jobs", type=int, default=8)
    parser.add_argument("--max-parallel-jobs", type=int, default=2)
    parser.add_argument("--include-model", action="store_true", help="tune the model too (all of the registry)")
    parser.add_argument("--ranges", default=None, help="JSON file of ranges that override or add to the defaults")
    parser.add_argument("--hyperparameter", action="append", default=[], metavar="KEY=VALUE",
                        help="a static hyperparameter of every training job (repeatable)")
    parser.add_argument("--spot", action="store_true", help="managed spot training, with checkpoints")
    parser.add_argument("--checkpoint-s3-uri", default=None, help="with --spot (default: <output>/checkpoints)")
    parser.add_argument("--job-name", default=None,
                        help="tuning job name, at most 32 characters (default: image-classifier-<time>-<random>)")
    parser.add_argument("--dry-run", action="store_true", help="print the request, send nothing")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=False,
                        help="wait for the tuning job, showing progress, then print every training job")
    parser.add_argument("--best-out", default="best_hyperparameters.json",
                        help="with --wait: where the best hyperparameters go (default: %(default)s)")
    return parser


def make_tuner(args: argparse.Namespace, boto_session: boto3.Session):
    """The SDK v3 ModelTrainer and HyperparameterTuner for `args`."""
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter
    from sagemaker.core.training.configs import CheckpointConfig, Compute, OutputDataConfig, StoppingCondition
    from sagemaker.train.model_trainer import ModelTrainer
    from sagemaker.train.tuner import HyperparameterTuner

    ranges = search_space.search_space(args.include_model, Path(args.ranges).read_text() if args.ranges else None)
    sdk_ranges = {}
    for r in ranges:
        if isinstance(r, search_space.CategoricalRange):
            sdk_ranges[r.name] = CategoricalParameter(list(r.values))
        else:
            cls = ContinuousParameter if isinstance(r, search_space.ContinuousRange) else IntegerParameter
            sdk_ranges[r.name] = cls(r.min, r.max, scaling_type=r.scaling)
    output = args.output.rstrip("/")
    spot = {}
    if args.spot:
        spot = {"checkpoint_config": CheckpointConfig(s3_uri=args.checkpoint_s3_uri or f"{output}/checkpoints",
                                                      local_path="/opt/ml/checkpoints")}
    trainer = ModelTrainer(
        training_image=args.image, role=args.role, base_job_name=BASE_JOB_NAME,
        sagemaker_session=Session(boto_session=boto_session),
        compute=Compute(instance_type=args.instance_type, instance_count=args.instance_count,
                        enable_managed_spot_training=args.spot),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=args.max_runtime,
            **({"max_wait_time_in_seconds": 2 * args.max_runtime} if args.spot else {})),
        output_data_config=OutputDataConfig(s3_output_path=output),
        hyperparameters=parse_static(args.hyperparameter), **spot)
    return HyperparameterTuner(
        model_trainer=trainer, objective_metric_name=args.objective,
        objective_type=metrics.objective_type(args.objective), hyperparameter_ranges=sdk_ranges,
        metric_definitions=metrics.metric_definitions(), strategy=args.strategy,
        max_jobs=args.max_jobs, max_parallel_jobs=args.max_parallel_jobs,
        # Hyperband stops trials itself; SageMaker refuses it with early stopping "Auto"
        early_stopping_type="Off" if args.strategy == "Hyperband" else "Auto",
        base_tuning_job_name="image-classifier")


def start(args: argparse.Namespace) -> dict[str, Any]:
    """Create the tuning job (or, with --dry-run, only build its request).

    Returns:
        `{"HyperParameterTuningJobName": ...}`, or the request's parameters on a dry run.
    """
    from sagemaker.core.training.configs import InputData

    boto_session = boto3.Session(region_name=args.region)
    data = args.data.rstrip("/")
    inputs = [InputData(channel_name=c, data_source=f"{data}/{c}") for c in CHANNELS]
    if args.dry_run:
        dry_run = DryRun(boto_session, {"sagemaker": (CREATE_OPERATION,)}, stop=True)
        try:
            make_tuner(args, boto_session).tune(inputs=inputs, job_name=args.job_name or default_job_name(),
                                                wait=False)
        except Stopped:
            return dry_run.requests[-1].params
        raise RuntimeError(f"dry run: the SDK made no {CREATE_OPERATION} request")
    tuner = make_tuner(args, boto_session)
    tuner.tune(inputs=inputs, job_name=args.job_name or default_job_name(), wait=False)
    return {"HyperParameterTuningJobName": tuner.latest_tuning_job.hyper_parameter_tuning_job_name}


def wait(sm_client, name: str, poll_seconds: float = 30.0) -> dict[str, Any]:
    """Poll the tuning job with a progress bar until it ends; return its last description."""
    from tqdm import tqdm

    with tqdm(desc=name, unit="job") as bar:
        while True:
            job = sm_client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
            counters = job["TrainingJobStatusCounters"]
            bar.total = job["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"]
            bar.n = counters["Completed"] + counters["Stopped"] + counters["NonRetryableError"]
            best = job.get("BestTrainingJob", {}).get("FinalHyperParameterTuningJobObjectiveMetric", {})
            bar.set_postfix(status=job["HyperParameterTuningJobStatus"], best=best.get("Value"))
            if job["HyperParameterTuningJobStatus"] in TERMINAL:
                return job
            time.sleep(poll_seconds)


def training_jobs(sm_client, name: str) -> list[dict[str, Any]]:
    """Every training job of the tuning job (ListTrainingJobsForHyperParameterTuningJob, all pages)."""
    pages = sm_client.get_paginator("list_training_jobs_for_hyper_parameter_tuning_job").paginate(
        HyperParameterTuningJobName=name)
    return [summary for page in pages for summary in page["TrainingJobSummaries"]]


def format_table(summaries: list[dict[str, Any]], objective: str) -> str:
    """One row per training job: name, status, the objective's final value, tuned hyperparameters."""
    rows = [f"{'training job':<40} {'status':<10} {objective:>14}  hyperparameters"]
    for s in sorted(summaries, key=lambda s: s["TrainingJobName"]):
        value = s.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value")
        shown = f"{value:.4f}" if value is not None else "-"
        tuned = " ".join(f"{k}={v}" for k, v in sorted(s.get("TunedHyperParameters", {}).items()))
        rows.append(f"{s['TrainingJobName']:<40} {s['TrainingJobStatus']:<10} {shown:>14}  {tuned}")
    return "\n".join(rows)


def best_hyperparameters(job: dict[str, Any]) -> dict[str, Any]:
    """The best training job's hyperparameters, static and tuned, as best_hyperparameters.json holds them.

    Raises:
        ValueError: the tuning job has no best training job (none succeeded).
    """
    best = job.get("BestTrainingJob")
    if not best:
        raise ValueError(f"tuning job {job['HyperParameterTuningJobName']} has no best training job")
    static = job.get("TrainingJobDefinition", {}).get("StaticHyperParameters", {})
    hyperparameters = {k: v for k, v in static.items() if not k.startswith(SAGEMAKER_KEYS)}
    hyperparameters.update(best["TunedHyperParameters"])
    objective = best.get("FinalHyperParameterTuningJobObjectiveMetric", {})
    return {"tuning_job": job["HyperParameterTuningJobName"], "training_job": best["TrainingJobName"],
            "objective": objective.get("MetricName"), "objective_value": objective.get("Value"),
            "hyperparameters": hyperparameters}


@exit_on(LAUNCHER)
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    result = start(args)
    print(json.dumps(result, indent=2, default=str))
    if args.dry_run or not args.wait:
        return 0
    sm_client = boto3.Session(region_name=args.region).client("sagemaker")
    job = wait(sm_client, result["HyperParameterTuningJobName"])
    print(format_table(training_jobs(sm_client, job["HyperParameterTuningJobName"]), args.objective))
    try:
        best = best_hyperparameters(job)
    except ValueError as exc:  # the job ran: not a usage error
        print(f"error: {exc}", file=sys.stderr)
        return FAILED
    with open(args.best_out, "w") as f:
        json.dump(best, f, indent=2)
    print(f"best hyperparameters ({best['objective']}={best['objective_value']}) written to {args.best_out}")
    return 0 if job["HyperParameterTuningJobStatus"] == "Completed" else 1
