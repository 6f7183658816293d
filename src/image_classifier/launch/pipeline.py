"""A SageMaker Pipeline that trains on the project's image, checks the test metric and registers the model.

The pipeline (its definition built with the SageMaker Python SDK v3: `sagemaker.mlops.workflow`):

    Train (TrainingStep: the training image, the channels train/valid/test under TrainingData,
           the project's metric definitions)
      └─ QualityCheck (ConditionStep: the job's final test metric >= the threshold parameter,
                       read from the training job's FinalMetricDataList)
           ├─ Register (ModelStep: a model package in the group, the serving image, the
           │            content types the server takes, PendingManualApproval by default)
           └─ BelowThreshold (FailStep: the execution fails, naming the metric and threshold)

Every value a team varies per run is a pipeline parameter (PARAMETERS), overridden at
StartPipelineExecution with `--start --param NAME=VALUE`. CreatePipeline / UpdatePipeline,
StartPipelineExecution and the waits are boto3's SageMaker client; `--dry-run` records the
requests that change something instead of sending them (launch/dry_run.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from image_classifier.launch import metrics, model_packages, registry
from image_classifier.launch.common import (
    BASE_JOB_NAME,
    MAX_RUNTIME,
    TRAINING_INSTANCE_TYPE,
    parse_static,
    positive_int,
)
from image_classifier.launch.dry_run import DryRun
from image_classifier.launch.exit_codes import FAILED, LAUNCHER, exit_on
from image_classifier.launch.model_packages import APPROVED, PENDING, REJECTED
from image_classifier.launch.registry import REALTIME_INSTANCE_TYPES, TRANSFORM_INSTANCE_TYPES
from image_classifier.launch.tune import CHANNELS
from image_classifier.serving import content_types
from image_classifier.training.config import TrainConfig

logger = logging.getLogger(__name__)

CHANGING = {"sagemaker": ("CreatePipeline", "UpdatePipeline", "StartPipelineExecution")}  # a dry run records these
TERMINAL = ("Succeeded", "Failed", "Stopped")  # PipelineExecutionStatus values after which nothing changes
STEP_DONE = ("Succeeded", "Failed", "Stopped")  # StepStatus values of a finished step
POLL_SECONDS = 30.0
# PipelineName's pattern in botocore's service model (CreatePipeline)
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}$")
ROLE_PATTERN = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")  # RoleArn's, same source
APPROVAL_STATUSES = (PENDING, APPROVED, REJECTED)  # ModelApprovalStatus at registration
# the final metrics the condition may check: those the training job logs after testing, higher is better
QUALITY_METRICS = tuple(m for m in metrics.FINAL_METRICS if m != "test_loss")


def _default(field: str):
    return TrainConfig.model_fields[field].default


@dataclass(frozen=True)
class Parameter:
    """A pipeline parameter: its name in the definition, its type (String, Integer or Float) and default."""

    name: str
    type: str
    default: Any
    help: str


# name → the parameter; hyperparameter defaults are TrainConfig's (training/config.py)
PARAMETERS = {p.name: p for p in (
    Parameter("TrainingData", "String", "", "S3 prefix holding the train/, valid/ and test/ channels"),
    Parameter("Model", "String", _default("model"), "hyperparameter model: the network"),
    Parameter("Epochs", "Integer", _default("epochs"), "hyperparameter epochs"),
    Parameter("LearningRate", "Float", _default("lr"), "hyperparameter lr: the peak learning rate"),
    Parameter("BatchSize", "Integer", _default("batch_size"), "hyperparameter batch-size, images per step"),
    Parameter("TrainingInstanceType", "String", TRAINING_INSTANCE_TYPE, "instance type of the training job"),
    Parameter("TrainingInstanceCount", "Integer", 1, "instances of the training job"),
    # a placeholder bar: set it from the test accuracy of the model in production (its evaluation report)
    Parameter("MinTestMetric", "Float", 0.8, "register only when the final test metric is at least this"),
    Parameter("ModelPackageGroupName", "String", "image-classifier", "model package group to register in"),
    Parameter("ModelApprovalStatus", "String", PENDING,
              f"approval status of the new model package: {', '.join(APPROVAL_STATUSES)}"),
)}
HYPERPARAMETERS = {"model": "Model", "epochs": "Epochs", "lr": "LearningRate", "batch-size": "BatchSize"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline.py", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="pipeline name (letters, digits, hyphens; <= 256)")
    parser.add_argument("--role", required=True,
                        help="IAM role ARN the pipeline runs as; its training job and model package use it too")
    parser.add_argument("--train-image", required=True, help="training image URI in ECR")
    parser.add_argument("--serve-image", required=True, help="serving image URI in ECR, registered with the model")
    parser.add_argument("--data", required=True, help="default of TrainingData: S3 prefix of the channels")
    parser.add_argument("--output", required=True, help="S3 prefix for the training jobs' model artifacts")
    parser.add_argument("--metric", default="test_accuracy", choices=QUALITY_METRICS,
                        help="the final test metric the condition checks against MinTestMetric (default: "
                             "%(default)s)")
    parser.add_argument("--max-runtime", type=positive_int, default=MAX_RUNTIME,
                        help="seconds the training job may run")
    parser.add_argument("--hyperparameter", action="append", default=[], metavar="KEY=VALUE",
                        help="a fixed hyperparameter of the training job, not a parameter (repeatable)")
    parser.add_argument("--region", default=None, help="AWS region (default: the AWS configuration's)")
    parser.add_argument("--upsert", action="store_true", help="create the pipeline, or update it if it exists")
    parser.add_argument("--start", action="store_true", help="start an execution (StartPipelineExecution)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help=f"with --start: a parameter's value for this execution (repeatable); "
                             f"names: {', '.join(PARAMETERS)}")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=False,
                        help="with --start: wait for the execution with a progress bar; exit 1 unless it succeeds")
    parser.add_argument("--definition-out", default=None, metavar="FILE", help="write the definition JSON here")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the requests that would change something, send none of them")
    return parser


def check(args: argparse.Namespace) -> list[dict[str, str]]:
    """Check the arguments together, before anything is built or sent; returns the --param overrides
    as StartPipelineExecution's PipelineParameters.

    Raises:
        ValueError: what does not fit, and how to mend it.
    """
    if not NAME_PATTERN.match(args.name):
        raise ValueError(f"pipeline name {args.name!r} must be 1-256 letters, digits and hyphens, starting and "
                         "ending with a letter or digit")
    if not ROLE_PATTERN.match(args.role):
        raise ValueError(f"--role takes an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME), got {args.role!r}")
    for flag, value in (("--data", args.data), ("--output", args.output)):
        if not value.startswith("s3://"):
            raise ValueError(f"{flag} takes an S3 URI (s3://bucket/prefix), got {value!r}")
    clash = set(parse_static(args.hyperparameter)) & set(HYPERPARAMETERS)
    if clash:
        raise ValueError(f"{', '.join(sorted(clash))} are pipeline parameters: give them per execution with "
                         f"--param {', '.join(HYPERPARAMETERS[k] + '=...' for k in sorted(clash))}")
    if (args.param or args.wait) and not args.start:
        raise ValueError("--param and --wait go with --start")
    if not (args.upsert or args.start or args.definition_out):
        raise ValueError("nothing to do: give --upsert, --start or --definition-out FILE")
    if args.definition_out and not Path(args.definition_out).parent.is_dir():
        raise ValueError(f"--definition-out {args.definition_out}: no folder {Path(args.definition_out).parent}")
    return overrides(args.param)


def overrides(pairs: list[str]) -> list[dict[str, str]]:
    """`["Epochs=10"]` → `[{"Name": "Epochs", "Value": "10"}]` (StartPipelineExecution's shape).

    Raises:
        ValueError: a pair without `=`, an unknown name, a value its parameter's type refuses, or one
            the request it goes into would (a group name, an instance type).
    """
    found = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in PARAMETERS:
            raise ValueError(f"--param takes NAME=VALUE with NAME one of {', '.join(PARAMETERS)}, got {pair!r}")
        kind = PARAMETERS[name].type
        try:
            {"Integer": int, "Float": float, "String": str}[kind](value)
        except ValueError:
            raise ValueError(f"--param {name} is a pipeline {kind}, got {value!r}") from None
        if name == "ModelApprovalStatus" and value not in APPROVAL_STATUSES:
            raise ValueError(f"--param ModelApprovalStatus takes one of {', '.join(APPROVAL_STATUSES)}, got {value!r}")
        if name == "TrainingData" and not value.startswith("s3://"):
            raise ValueError(f"--param TrainingData takes an S3 URI, got {value!r}")
        if name == "ModelPackageGroupName":
            model_packages.check_group(value)
        if name == "TrainingInstanceType":
            registry.instance_types([value], (TRAINING_INSTANCE_TYPE,), "TrainingInstanceType",
                                    "--param TrainingInstanceType")
        found.append({"Name": name, "Value": value})
    return found


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The SDK's pipeline parameters, by name, with TrainingData defaulting to --data."""
    from sagemaker.core.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString

    kinds = {"String": ParameterString, "Integer": ParameterInteger, "Float": ParameterFloat}
    defaults = {"TrainingData": args.data.rstrip("/")}
    return {name: kinds[p.type](name=name, default_value=defaults.get(name, p.default))
            for name, p in PARAMETERS.items()}


def _training_step(args: argparse.Namespace, session, parameters: dict[str, Any]):
    """The TrainingStep: the training image, the channels under TrainingData, the metric definitions."""
    from sagemaker.core.shapes import MetricDefinition
    from sagemaker.core.training.configs import Compute, InputData, OutputDataConfig, StoppingCondition
    from sagemaker.core.workflow.functions import Join
    from sagemaker.mlops.workflow.steps import TrainingStep
    from sagemaker.train.model_trainer import ModelTrainer

    # HyperParameters is a string → string map: CreatePipeline refuses an Integer or Float parameter there
    # ("Cannot assign property reference [Parameters.X] to argument of type [String]"); to_string() is a
    # Std:Join of the one value (a String parameter is itself)
    hyperparameters = {**parse_static(args.hyperparameter),
                       **{key: parameters[name].to_string() for key, name in HYPERPARAMETERS.items()}}
    trainer = ModelTrainer(
        training_image=args.train_image, role=args.role, base_job_name=BASE_JOB_NAME,
        sagemaker_session=session,
        compute=Compute(instance_type=parameters["TrainingInstanceType"],
                        instance_count=parameters["TrainingInstanceCount"]),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=args.max_runtime),
        output_data_config=OutputDataConfig(s3_output_path=args.output.rstrip("/")),
        hyperparameters=hyperparameters,
    ).with_metric_definitions([MetricDefinition(name=d["Name"], regex=d["Regex"])
                               for d in metrics.metric_definitions()])
    inputs = [InputData(channel_name=c, data_source=Join(on="/", values=[parameters["TrainingData"], c]))
              for c in CHANNELS]
    return TrainingStep(name="Train", step_args=trainer.train(input_data_config=inputs, wait=False))


def _registration_step(args: argparse.Namespace, session, parameters: dict[str, Any], train):
    """The ModelStep that registers the training job's model.tar.gz with the serving image."""
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.serve.model_builder import ModelBuilder

    builder = ModelBuilder(image_uri=args.serve_image, role_arn=args.role, sagemaker_session=session,
                           s3_model_data_url=train.properties.ModelArtifacts.S3ModelArtifacts,
                           instance_type=REALTIME_INSTANCE_TYPES[0])
    # ModelBuilder.register asks for a bucket to upload inference code to, which a BYOC model has none of;
    # without one it calls STS and creates SageMaker's default bucket. The output bucket answers it: nothing goes there.
    builder.bucket = args.output[len("s3://"):].split("/", 1)[0]
    return ModelStep(name="Register", step_args=builder.register(
        model_package_group_name=parameters["ModelPackageGroupName"],
        content_types=list(content_types.REQUEST_TYPES), response_types=list(content_types.RESPONSE_TYPES),
        inference_instances=list(REALTIME_INSTANCE_TYPES), transform_instances=list(TRANSFORM_INSTANCE_TYPES),
        approval_status=parameters["ModelApprovalStatus"],
        # as register.py --training-job records it: the job to register again for the figures (ModelMetrics)
        customer_metadata_properties={"TrainingJobName": train.properties.TrainingJobName}))


def build_pipeline(args: argparse.Namespace, boto_session: boto3.Session):
    """The SDK v3 Pipeline for `args` (a PipelineSession: building it starts no job)."""
    if boto3.DEFAULT_SESSION is None or not boto3.DEFAULT_SESSION.region_name:
        # sagemaker.mlops's import makes a client of boto3's default session (sagemaker.ai_registry,
        # 3.27), which needs a region: give it the launcher's, or --region alone would not do
        boto3.setup_default_session(region_name=boto_session.region_name)
    from sagemaker.core.workflow.conditions import ConditionGreaterThanOrEqualTo
    from sagemaker.core.workflow.functions import Join
    from sagemaker.core.workflow.pipeline_context import PipelineSession
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.fail_step import FailStep
    from sagemaker.mlops.workflow.pipeline import Pipeline

    config = None
    if args.dry_run:  # the SDK's telemetry (a GET to AWS, and sts:GetCallerIdentity) off: a dry run sends nothing
        from sagemaker.core.config import load_sagemaker_config

        config = load_sagemaker_config()
        config.setdefault("SchemaVersion", "1.0")
        modules = config.setdefault("SageMaker", {}).setdefault("PythonSDK", {}).setdefault("Modules", {})
        modules["TelemetryOptOut"] = True
    session = PipelineSession(boto_session=boto_session, sagemaker_config=config)
    parameters = _parameters(args)
    train = _training_step(args, session, parameters)
    register = _registration_step(args, session, parameters, train)
    threshold = parameters["MinTestMetric"]
    fail = FailStep(name="BelowThreshold", error_message=Join(on=" ", values=[
        f"{args.metric} of the training job is below MinTestMetric", threshold, "- no model package registered"]))
    # a training step's final metrics, by name (FinalMetricDataList of DescribeTrainingJob); a
    # PropertyFile with JsonGet reads only a processing step's outputs
    passed = ConditionGreaterThanOrEqualTo(left=train.properties.FinalMetricDataList[args.metric].Value,
                                           right=threshold)
    check_step = ConditionStep(name="QualityCheck", conditions=[passed], if_steps=[register], else_steps=[fail])
    return Pipeline(name=args.name, parameters=list(parameters.values()), steps=[train, check_step],
                    sagemaker_session=session, pipeline_experiment_config=None)


def definition(args: argparse.Namespace, boto_session: boto3.Session) -> dict[str, Any]:
    """The pipeline definition (the JSON of CreatePipeline's PipelineDefinition), as a dict."""
    return json.loads(build_pipeline(args, boto_session).definition())


def upsert(sm, args: argparse.Namespace, body: str, dry_run: DryRun | None) -> str:
    """UpdatePipeline if a pipeline of that name exists (DescribePipeline: a read), else CreatePipeline.

    Returns:
        the pipeline's ARN ("" on a dry run).
    """
    request = {"PipelineName": args.name, "PipelineDefinition": body, "RoleArn": args.role,
               "PipelineDescription": "image-classifier: train, check the test metric, register"}
    try:
        sm.describe_pipeline(PipelineName=args.name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("ResourceNotFound", "ValidationException"):
            raise
        answer = sm.create_pipeline(**request)  # botocore fills in ClientRequestToken
    else:
        answer = sm.update_pipeline(**request)
    return "" if dry_run else answer["PipelineArn"]


def wait(sm, arn: str, poll_seconds: float | None = None) -> dict[str, Any]:
    """Poll the execution (DescribePipelineExecution, ListPipelineExecutionSteps) every `poll_seconds`
    (default POLL_SECONDS) with a progress bar of finished steps until it ends.

    Returns:
        its last DescribePipelineExecution answer, with its steps (ListPipelineExecutionSteps) as "Steps".
    """
    from tqdm import tqdm

    poll_seconds = POLL_SECONDS if poll_seconds is None else poll_seconds
    with tqdm(desc=arn.rsplit("/", 1)[-1], total=3, unit="step") as bar:  # Train, QualityCheck, one branch
        while True:
            execution = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
            pages = sm.get_paginator("list_pipeline_execution_steps").paginate(PipelineExecutionArn=arn)
            steps = [s for page in pages for s in page["PipelineExecutionSteps"]]
            bar.n = sum(s["StepStatus"] in STEP_DONE for s in steps)
            running = [s["StepName"] for s in steps if s["StepStatus"] not in STEP_DONE]
            bar.set_postfix(status=execution["PipelineExecutionStatus"], step=",".join(running) or "-")
            bar.refresh()
            if execution["PipelineExecutionStatus"] in TERMINAL:
                return {**execution, "Steps": steps}
            time.sleep(poll_seconds)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the definition, then upsert and start as asked (on a dry run, only record the requests).

    Returns:
        `{"PipelineArn", "PipelineExecutionArn", "DefinitionFile"}` as far as done, or the requests on
        a dry run.

    Raises:
        ValueError: a bad argument (nothing sent); botocore's ClientError: AWS refused.
    """
    parameters = check(args)
    boto_session = boto3.Session(region_name=args.region)
    dry_run = DryRun(boto_session, CHANGING) if args.dry_run else None  # before the clients are made
    body = json.dumps(definition(args, boto_session))
    result: dict[str, Any] = {}
    if args.definition_out:
        Path(args.definition_out).write_text(json.dumps(json.loads(body), indent=2) + "\n")
        result["DefinitionFile"] = args.definition_out
    sm = boto_session.client("sagemaker")
    if args.upsert:
        result["PipelineArn"] = upsert(sm, args, body, dry_run)
    if args.start:
        answer = sm.start_pipeline_execution(PipelineName=args.name, PipelineParameters=parameters)
        result["PipelineExecutionArn"] = answer.get("PipelineExecutionArn", "")
    if dry_run:
        return {"requests": [{"operation": r.operation, **r.params} for r in dry_run.requests]}
    return result


@exit_on(LAUNCHER)
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2, default=str))
    if not (args.wait and result.get("PipelineExecutionArn")):
        return 0
    execution = wait(boto3.Session(region_name=args.region).client("sagemaker"), result["PipelineExecutionArn"])
    status = execution["PipelineExecutionStatus"]
    failed = [f"{s['StepName']}: {s.get('FailureReason', s['StepStatus'])}" for s in execution["Steps"]
              if s["StepStatus"] == "Failed"]
    print(f"pipeline execution {status}" + (f" ({'; '.join(failed)})" if failed else ""))
    return 0 if status == "Succeeded" else FAILED
