"""moto_server with SageMaker's UpdateEndpoint, which moto 5.2.5 does not implement, and transform
jobs that really run when a test gives them a model server.

Run as `python -m tests.launch.emulator -H 127.0.0.1 -p PORT` (moto_server's own arguments).
Everything else is moto's. The added operation follows the API reference
(https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_UpdateEndpoint.html):

- only an endpoint that is InService can be updated (ValidationException otherwise), to an
  EndpointConfig that exists;
- the endpoint answers `Updating` to the first DescribeEndpoint after the update, then its
  final state, so that launchers' waits are exercised;
- DescribeEndpoint then shows the request's DeploymentConfig as `LastDeploymentConfig`;
- a failed update leaves the endpoint InService on its old EndpointConfig with a FailureReason
  ("If the status of the endpoint is Failed, or the status is InService but update operation
  fails, this provides the reason why it failed": API_EndpointMetadata). The emulator cannot run
  containers, so a test asks for a failure through the new config's first model: a container
  environment variable `EMULATOR_UPDATE_FAILS` whose value becomes the FailureReason.

moto answers DescribeModel with `"VpcConfig": {}`, DescribeEndpointConfig and DescribeEndpoint with
`"DataCaptureConfig": {}` where AWS leaves those keys out, and the SageMaker SDK v3's shapes refuse
the empty structures: the emulator leaves them out too.

moto records a transform job as Completed and runs nothing. When the job's model has a container
environment variable `EMULATOR_MODEL_SERVER` (the URL of a model server the test started), the
emulator does what Batch Transform does (API_CreateTransformJob, API_TransformOutput): the job is
InProgress while every object under the input S3Prefix is POSTed whole to `<server>/invocations`
with the job's ContentType and Accept, MaxConcurrentTransforms at a time; each answer is written
to `<S3OutputPath>/<key relative to the input prefix>.out`; then the job is Completed, or Failed
(with the first error as FailureReason) when any object was not answered with 200, whose `.out`
is not written.

moto filters ListModelPackages by ModelApprovalStatus before it pages; AWS may page first, so that
a page holds none of the matches and still has a NextToken (the MLOps project templates page on).
The emulator pages first, then filters the page: a client that reads only the first page misses
the packages of the later ones.

moto runs no pipeline: its executions are Succeeded at once, and it has no ListPipelineExecutionSteps.
The emulator adds a run of the definition's shape (API_DescribePipelineExecution,
API_ListPipelineExecutionSteps): the first DescribePipelineExecution answers `Executing`, then the
execution settles. Its steps are the definition's top-level steps; a Condition step applies its
first condition (its Type: GreaterThanOrEqualTo, GreaterThan, LessThan, LessThanOrEqualTo, Equals)
to its two values, and runs IfSteps or ElseSteps; a Fail step among those makes the execution
Failed, with its ErrorMessage (Std:Join resolved) as FailureReason. A value is a literal, a
parameter of the execution (or its default), a Std:Join of values, or a training step's final
metric (`Steps.NAME.FinalMetricDataList[...].Value`), taken as PIPELINE_METRIC: the emulator runs
no job. Any other reference, a parameter the definition does not declare among them, makes
DescribePipelineExecution answer ValidationException (400), as CreatePipeline would refuse it.
"""

from __future__ import annotations

import json
import operator
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import boto3
import requests
from moto.core.responses import ActionResult
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.models import SageMakerModelBackend
from moto.sagemaker.responses import SageMakerResponse

FAIL_ENV = "EMULATOR_UPDATE_FAILS"
SERVER_ENV = "EMULATOR_MODEL_SERVER"
PIPELINE_METRIC = 0.9  # every final metric of a pipeline's training step, as the emulator's condition reads it
_executions: dict[str, list[dict]] = {}  # pipeline execution ARN → its steps, once settled
_pending: dict[str, tuple] = {}  # endpoint ARN → (new FakeEndpointConfig, failure reason or None)


def update_endpoint(self: SageMakerResponse) -> ActionResult:
    backend = self.sagemaker_backend
    name, config_name = self._get_param("EndpointName"), self._get_param("EndpointConfigName")
    endpoint = backend.endpoints.get(name)
    if endpoint is None:
        raise ValidationError(message=f"Could not find endpoint \"{name}\".")
    if endpoint.endpoint_status != "InService":
        raise ValidationError(message=f"Cannot update in-progress endpoint \"{endpoint.arn}\".")
    config = backend.endpoint_configs.get(config_name)
    if config is None:
        raise ValidationError(message=f"Could not find endpoint configuration \"{config_name}\".")
    model = backend._models.get(config.production_variants[0].get("ModelName"))
    failure = ((model.primary_container or {}) if model else {}).get("Environment", {}).get(FAIL_ENV)
    endpoint.endpoint_status = "Updating"
    _pending[endpoint.arn] = (config, failure)
    endpoint.last_deployment_config = self._get_param("DeploymentConfig")
    return ActionResult({"EndpointArn": endpoint.arn})


def describe_endpoint(self: SageMakerResponse) -> ActionResult:
    endpoint = self.sagemaker_backend.endpoints.get(self._get_param("EndpointName"))
    answer = _original_describe_endpoint(self)
    if endpoint is not None and endpoint.arn in _pending:  # answered `Updating` once: settle it now
        config, failure = _pending.pop(endpoint.arn)
        endpoint.endpoint_status = "InService"
        endpoint.failure_reason = failure
        if not failure:
            endpoint.endpoint_config_name = config.endpoint_config_name
            endpoint.production_variants = endpoint._process_production_variants(config.production_variants)
    return answer


def create_transform_job(self: SageMakerResponse) -> ActionResult:
    answer = _original_create_transform_job(self)
    backend = self.sagemaker_backend
    job = backend.transform_jobs[self._get_param("TransformJobName")]
    model = backend._models.get(job.model_name)
    server = ((model.primary_container or {}) if model else {}).get("Environment", {}).get(SERVER_ENV)
    if server:
        job.transform_job_status = "InProgress"
        threading.Thread(target=_run_transform, args=(job, server, f"http://{self.headers['Host']}"),
                         daemon=True).start()
    return answer


def _split(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    return bucket, prefix


def _run_transform(job, server: str, emulator: str) -> None:
    s3 = boto3.client("s3", endpoint_url=emulator, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    bucket, prefix = _split(job.transform_input["DataSource"]["S3DataSource"]["S3Uri"])
    out_bucket, out_prefix = _split(job.transform_output["S3OutputPath"])
    keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])]
    headers = {"Content-Type": job.transform_input.get("ContentType", "application/octet-stream"),
               "Accept": job.transform_output.get("Accept", "application/json")}
    errors = []

    def one(key: str) -> None:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        response = requests.post(f"{server}/invocations", data=body, headers=headers, timeout=120)
        if response.status_code != 200:
            errors.append(f"{key}: {response.status_code} {response.text[:200]}")
            return
        relative = key[len(prefix):].lstrip("/")
        s3.put_object(Bucket=out_bucket, Key=f"{out_prefix.rstrip('/')}/{relative}.out", Body=response.content)

    with ThreadPoolExecutor(max_workers=job.max_concurrent_transforms or 1) as pool:
        list(pool.map(one, keys))
    job.failure_reason = errors[0] if errors else ""
    job.transform_job_status = "Failed" if errors else "Completed"


# a Condition's Type → how it compares its LeftValue with its RightValue
COMPARISONS = {"GreaterThanOrEqualTo": operator.ge, "GreaterThan": operator.gt, "LessThan": operator.lt,
               "LessThanOrEqualTo": operator.le, "Equals": operator.eq}
FINAL_METRIC = re.compile(r"Steps\.(?P<step>[^.]+)\.FinalMetricDataList\[[^\]]+\]\.Value")


def _value(value, parameters: dict, steps: set[str] = frozenset()):
    """A definition's value: a literal, a parameter (`{"Get": "Parameters.X"}`), a training step's final
    metric (PIPELINE_METRIC) or a Std:Join of them. Raises: ValidationError: a reference to nothing."""
    if isinstance(value, dict) and "Get" in value:
        get = value["Get"]
        name = get.removeprefix("Parameters.")
        if get.startswith("Parameters.") and name in parameters:
            return parameters[name]
        metric = FINAL_METRIC.fullmatch(get)
        if metric and metric["step"] in steps:
            return PIPELINE_METRIC
        raise ValidationError(message=f"the emulator cannot resolve {get}: no such parameter, or not a "
                                      "training step's final metric")
    if isinstance(value, dict) and "Std:Join" in value:
        join = value["Std:Join"]
        return join["On"].join(str(_value(v, parameters, steps)) for v in join["Values"])
    return value


def _run_pipeline(execution) -> tuple[list[dict], str]:
    """The steps an execution runs (StepName, StepStatus, FailureReason) and its failure reason, if any."""
    definition = json.loads(execution.pipeline_definition_for_execution)
    parameters = {p["Name"]: p.get("DefaultValue") for p in definition.get("Parameters", [])}
    given = {p["Name"]: p["Value"] for p in execution.pipeline_parameters or []}
    unknown = sorted(set(given) - set(parameters))
    if unknown:
        raise ValidationError(message=f"the pipeline has no parameter {', '.join(unknown)}")
    parameters.update(given)
    training = {s["Name"] for s in definition["Steps"] if s["Type"] == "Training"}
    steps, failure = [], ""
    for step in definition["Steps"]:
        steps.append({"StepName": step["Name"], "StepStatus": "Succeeded"})
        if step["Type"] != "Condition":
            continue
        condition = step["Arguments"]["Conditions"][0]
        left, right = (float(_value(condition[side], parameters, training)) for side in ("LeftValue", "RightValue"))
        if condition["Type"] not in COMPARISONS:
            raise ValidationError(message=f"the emulator has no condition {condition['Type']}")
        passed = COMPARISONS[condition["Type"]](left, right)
        for branch in step["Arguments"]["IfSteps" if passed else "ElseSteps"]:
            if branch["Type"] == "Fail":
                failure = str(_value(branch["Arguments"].get("ErrorMessage", ""), parameters, training))
                steps.append({"StepName": branch["Name"], "StepStatus": "Failed", "FailureReason": failure})
            else:
                steps.append({"StepName": branch["Name"], "StepStatus": "Succeeded"})
    return steps, failure


def describe_pipeline_execution(self: SageMakerResponse) -> ActionResult:
    from moto.sagemaker.utils import get_pipeline_execution_from_arn

    arn = self._get_param("PipelineExecutionArn")
    execution = get_pipeline_execution_from_arn(self.sagemaker_backend.pipelines, arn)
    answer = _original_describe_pipeline_execution(self).result
    if arn not in _executions:  # the first answer: `Executing`, no step run yet; the next settles it
        _executions[arn] = []
        return ActionResult({**answer, "PipelineExecutionStatus": "Executing"})
    if not _executions[arn]:
        _executions[arn], failure = _run_pipeline(execution)
        execution.pipeline_execution_status = "Failed" if failure else "Succeeded"
        execution.pipeline_execution_failure_reason = failure
    return ActionResult({**answer, "PipelineExecutionStatus": execution.pipeline_execution_status,
                         "FailureReason": execution.pipeline_execution_failure_reason or ""})


def list_pipeline_execution_steps(self: SageMakerResponse) -> ActionResult:
    now = datetime.now(timezone.utc)
    steps = _executions.get(self._get_param("PipelineExecutionArn"), [])
    return ActionResult({"PipelineExecutionSteps": [{**s, "StartTime": now} for s in reversed(steps)]})


def list_model_packages(self: SageMakerModelBackend, model_approval_status: str | None = None, **kwargs):
    """moto's ListModelPackages, paged before the approval status filters the page."""
    page, token = _original_list_model_packages(self, model_approval_status=None, **kwargs)
    return [p for p in page if model_approval_status in (None, p.model_approval_status)], token


def _without_empty_structures(describe):
    def answer(self: SageMakerResponse) -> ActionResult:
        result = describe(self).result
        return ActionResult({key: value for key, value in result.items() if value != {}})
    return answer


SageMakerResponse.describe_model = _without_empty_structures(SageMakerResponse.describe_model)
SageMakerResponse.describe_endpoint_config = _without_empty_structures(SageMakerResponse.describe_endpoint_config)
_original_describe_endpoint = SageMakerResponse.describe_endpoint
_original_create_transform_job = SageMakerResponse.create_transform_job
SageMakerResponse.update_endpoint = update_endpoint
SageMakerResponse.describe_endpoint = _without_empty_structures(describe_endpoint)
SageMakerResponse.create_transform_job = create_transform_job
_original_describe_pipeline_execution = SageMakerResponse.describe_pipeline_execution
SageMakerResponse.describe_pipeline_execution = describe_pipeline_execution
SageMakerResponse.list_pipeline_execution_steps = list_pipeline_execution_steps
_original_list_model_packages = SageMakerModelBackend.list_model_packages
SageMakerModelBackend.list_model_packages = list_model_packages

if __name__ == "__main__":
    from moto.server import main

    sys.exit(main())
