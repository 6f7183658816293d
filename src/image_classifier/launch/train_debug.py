"""Start one SageMaker training job with debugging and profiling on (boto3 CreateTrainingJob).

The job runs the training image with the given (or a tuning job's best) hyperparameters plus
`debug=true profile=true`: the container's smdebug hook, the project's own rules and profiler,
and the debugger and profiler reports in `output.tar.gz`, in any account. The request also
carries the common `DebugHookConfig` (`debugging.hook.hook_config`, the one the container
uses); `--builtin-rules` adds AWS's built-in rules and ProfilerReport, which run only in
accounts that still have SageMaker Debugger (their configurations from the SageMaker SDK v3).
"""

from __future__ import annotations

import argparse
import json
import logging
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

import boto3

from image_classifier.debugging.hook import DEBUG_OUTPUT_DIR, TENSORS_DIR, hook_config
from image_classifier.launch import metrics
from image_classifier.launch.common import add_training_job_arguments, parse_static
from image_classifier.launch.dry_run import DryRun
from image_classifier.launch.exit_codes import LAUNCHER, USAGE, exit_on
from image_classifier.launch.tune import CHANNELS, default_job_name
from image_classifier.launch.upload import parse_s3_uri
from image_classifier.sagemaker_env import PROCESSES_PER_HOST_HP

logger = logging.getLogger(__name__)

CREATING = {"sagemaker": ("CreateTrainingJob",)}  # what a dry run records instead of sending
TERMINAL = ("Completed", "Failed", "Stopped")
CONTAINER_TENSORS = "/opt/ml/output/tensors"  # smdebug's LocalPath on SageMaker
# The hooks, rules and reports assume one training process: no torchrun on a multi-GPU instance.
DEBUG_HYPERPARAMETERS = {"debug": "true", "profile": "true", PROCESSES_PER_HOST_HP: "1"}
# AWS's built-in rules, by the names of their configurations in smdebug_rulesconfig
BUILTIN_RULES = ("vanishing_gradient", "overfit", "overtraining", "poor_weight_initialization")
PROFILER_INTERVAL_MS = 500
REPORT_FOLDERS = (DEBUG_OUTPUT_DIR, "profiler")  # in output.tar.gz; tensors are left out of --download


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_debug.py", description=__doc__.splitlines()[0])
    add_training_job_arguments(parser)
    parser.add_argument("--best", default=None, metavar="JSON",
                        help="start from the hyperparameters in a tune.py best_hyperparameters.json")
    parser.add_argument("--hyperparameter", action="append", default=[], metavar="KEY=VALUE",
                        help="a hyperparameter, over --best's (repeatable)")
    parser.add_argument("--builtin-rules", action="store_true",
                        help=f"also AWS's built-in rules ({', '.join(BUILTIN_RULES)}) and ProfilerReport")
    parser.add_argument("--job-name", default=None, help="training job name (default: ic-<time>-<random>)")
    parser.add_argument("--dry-run", action="store_true", help="print the request, send nothing")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=False,
                        help="wait for the job, showing its status")
    parser.add_argument("--download", default=None, metavar="DIR",
                        help="with --wait: download the reports into DIR once the job ends")
    return parser


def hyperparameters_of(args: argparse.Namespace) -> dict[str, str]:
    """--best's hyperparameters, then --hyperparameter pairs, then debug=true, profile=true, one process a host.

    Raises:
        ValueError: --best is not a best_hyperparameters.json, or a pair has no `=`.
    """
    values: dict[str, str] = {}
    if args.best:
        best = json.loads(Path(args.best).read_text())
        if not isinstance(best.get("hyperparameters"), dict):
            raise ValueError(f"{args.best} has no \"hyperparameters\" object (write it with tune.py --wait)")
        values.update({k: str(v) for k, v in best["hyperparameters"].items()})
    values.update(parse_static(args.hyperparameter))
    values.update(DEBUG_HYPERPARAMETERS)
    return values


def job_paths(output: str, job_name: str) -> dict[str, str]:
    """Where a job's outputs land in S3, as SageMaker lays them out under `OutputDataConfig.S3OutputPath`."""
    base = f"{output.rstrip('/')}/{job_name}"
    return {"model": f"{base}/output/model.tar.gz", "output": f"{base}/output/output.tar.gz",
            "tensors": f"{base}/debug-output", "builtin_rules": f"{base}/rule-output",
            "profiler": f"{base}/profiler-output"}


def training_job_request(args: argparse.Namespace, job_name: str, region: str) -> dict[str, Any]:
    """The CreateTrainingJob request for `args` (the API's PascalCase shapes, as boto3 takes them).

    Raises:
        ValueError: --instance-count above 1 (debugging and profiling run in one process).
    """
    if args.instance_count != 1:
        raise ValueError(f"--instance-count {args.instance_count}: a debug job trains in one process on one "
                         f"instance (the debugger's hook and rules and the profiler assume one); use 1")
    data, output = args.data.rstrip("/"), args.output.rstrip("/")
    hook = hook_config(CONTAINER_TENSORS, job_paths(output, job_name)["tensors"])
    request: dict[str, Any] = {
        "TrainingJobName": job_name, "HyperParameters": hyperparameters_of(args),
        "AlgorithmSpecification": {
            "TrainingInputMode": "File", "TrainingImage": args.image,
            "MetricDefinitions": [{"Name": d["Name"], "Regex": d["Regex"]} for d in metrics.metric_definitions()]},
        "RoleArn": args.role,
        "InputDataConfig": [{"ChannelName": c, "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"{data}/{c}", "S3DataDistributionType": "FullyReplicated"}}}
            for c in CHANNELS],
        "OutputDataConfig": {"S3OutputPath": output},
        "ResourceConfig": {"InstanceType": args.instance_type, "InstanceCount": args.instance_count,
                           "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": args.max_runtime},
        "DebugHookConfig": {
            "S3OutputPath": hook["S3OutputPath"], "LocalPath": hook["LocalPath"],
            "HookParameters": hook["HookParameters"],
            "CollectionConfigurations": [
                {"CollectionName": c["CollectionName"], "CollectionParameters": c["CollectionParameters"]}
                for c in hook["CollectionConfigurations"]]},
    }
    if args.builtin_rules:
        request.update(builtin_rules(output, region))
    return request


def builtin_rules(output: str, region: str) -> dict[str, Any]:
    """The request's DebugRuleConfigurations, ProfilerConfig and ProfilerRuleConfigurations for AWS's
    built-in rules (BUILTIN_RULES) and ProfilerReport, from the SageMaker SDK v3's rule configurations
    and the region's rule image (what the SDK adds: AWS's rule parameters and images)."""
    from sagemaker.core.debugger import ProfilerRule, Rule, get_rule_container_image_uri, rule_configs

    image = get_rule_container_image_uri(None, region)
    rules = [Rule.sagemaker(getattr(rule_configs, name)()).to_debugger_rule_config_dict() for name in BUILTIN_RULES]
    report = ProfilerRule.sagemaker(rule_configs.ProfilerReport()).to_profiler_rule_config_dict()
    return {
        "DebugRuleConfigurations": [
            {"RuleConfigurationName": r["RuleConfigurationName"], "RuleEvaluatorImage": image,
             "RuleParameters": r["RuleParameters"]} for r in rules],
        "ProfilerConfig": {"S3OutputPath": output, "ProfilingIntervalInMilliseconds": PROFILER_INTERVAL_MS},
        "ProfilerRuleConfigurations": [
            {"RuleConfigurationName": report["RuleConfigurationName"], "RuleEvaluatorImage": image,
             "RuleParameters": report["RuleParameters"]}],
    }


def start(args: argparse.Namespace) -> dict[str, Any]:
    """Create the training job with boto3 (or, with --dry-run, only record its request).

    Returns:
        `{"TrainingJobName": ..., "outputs": {...}}`, or the API request on a dry run.

    Raises:
        ValueError: a bad argument or --best file; ClientError: AWS refused the request.
    """
    boto_session = boto3.Session(region_name=args.region)
    job_name = args.job_name or default_job_name()
    request = training_job_request(args, job_name, boto_session.region_name)
    dry_run = DryRun(boto_session, CREATING) if args.dry_run else None  # before the client is made
    boto_session.client("sagemaker").create_training_job(**request)
    if dry_run:
        return dry_run.params()[-1]
    return {"TrainingJobName": job_name, "outputs": where_outputs_land(args.output, job_name, args.builtin_rules)}


def where_outputs_land(output: str, job_name: str, builtin_rules: bool) -> dict[str, str]:
    """The S3 places a user looks at after the job, for the printout."""
    paths = job_paths(output, job_name)
    places = {
        "model artifacts": paths["model"],
        "debugger and profiler reports": f"{paths['output']} ({DEBUG_OUTPUT_DIR}/, profiler/)",
        "tensors": f"{paths['output']} ({DEBUG_OUTPUT_DIR}/{TENSORS_DIR}/); with SageMaker Debugger also "
                   f"{paths['tensors']}",
    }
    if builtin_rules:
        places["built-in rules' output"] = paths["builtin_rules"]
        places["ProfilerReport"] = f"{paths['builtin_rules']}/ProfilerReport/profiler-output/"
    return places


def wait(sm_client, name: str, poll_seconds: float = 30.0) -> dict[str, Any]:
    """Poll the training job, showing its (secondary) status, until it ends; return its description."""
    from tqdm import tqdm

    with tqdm(desc=name, bar_format="{desc}: {postfix} [{elapsed}]") as bar:
        while True:
            job = sm_client.describe_training_job(TrainingJobName=name)
            bar.set_postfix(status=job["TrainingJobStatus"], stage=job.get("SecondaryStatus"))
            if job["TrainingJobStatus"] in TERMINAL:
                return job
            time.sleep(poll_seconds)


def download_reports(s3_client, output: str, job_name: str, directory: Path) -> list[Path]:
    """Fetch the job's reports into `directory`: output.tar.gz's report folders (not the tensors)
    and whatever the built-in rules wrote. Returns the files written.

    Raises:
        botocore.exceptions.ClientError: output.tar.gz is not there (the job did not end).
    """
    paths = job_paths(output, job_name)
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / "output.tar.gz"
    bucket, key = parse_s3_uri(paths["output"])
    s3_client.download_file(bucket, key, str(archive))
    written = []
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and _is_report(m.name)]
        tar.extractall(directory, members=members, filter="data")  # "data": no absolute paths, links, ..
        written += [directory / m.name for m in members]
    archive.unlink()
    bucket, prefix = parse_s3_uri(paths["builtin_rules"])
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            relative = PurePosixPath(obj["Key"]).relative_to(PurePosixPath(prefix).parent)
            if ".." in relative.parts:
                continue
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            s3_client.download_file(bucket, obj["Key"], str(target))
            written.append(target)
    return sorted(written)


def _is_report(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return bool(parts) and parts[0] in REPORT_FOLDERS and TENSORS_DIR not in parts[1:2]


@exit_on({**LAUNCHER, OSError: USAGE})  # OSError: --best cannot be read
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    result = start(args)
    print(json.dumps(result, indent=2, default=str))
    if args.dry_run or not args.wait:
        return 0
    boto_session = boto3.Session(region_name=args.region)
    job = wait(boto_session.client("sagemaker"), result["TrainingJobName"])
    print(f"training job {job['TrainingJobName']}: {job['TrainingJobStatus']}"
          + (f" ({job['FailureReason']})" if job.get("FailureReason") else ""))
    if args.download:
        files = download_reports(boto_session.client("s3"), args.output, result["TrainingJobName"],
                                 Path(args.download))
        print("\n".join(str(f) for f in files))
    return 0 if job["TrainingJobStatus"] == "Completed" else 1
