"""Score every image under an S3 prefix with a SageMaker Batch Transform job, then gather one CSV.

The job runs the serving image (the same container as the endpoint) on `--instance-count`
instances: SageMaker POSTs each S3 object, one image per request as `application/x-image`, to
the container's `/invocations` and writes each answer to `<output>/<key relative to the
input prefix>.out` (API_TransformOutput). This launcher:

1. checks the input before anything is created: every object an image, none over the
   container's payload limit (a single one would fail the whole job after its instances
   started);
2. creates the Model (or takes `--model-name`) and the transform job, with
   MaxConcurrentTransforms, MaxPayloadInMB and BatchStrategy computed from the model's own
   container environment by the function that answers the container's
   `/execution-parameters` (`sagemaker_env.execution_parameters`): they cannot disagree;
3. waits with a progress bar that counts the `.out` objects written so far;
4. gathers the `.out` files into the CSV that `image-classifier transform` writes locally
   (`image_classifier.transform.ResultsCsv`: key, top-1 label, class_id, probability, top-k
   JSON): resumable, so `--gather JOB` after an interruption adds only what is missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
from botocore.exceptions import ClientError
from tqdm import tqdm

from image_classifier.launch.common import parse_static
from image_classifier.launch.deploy import model_data_of
from image_classifier.launch.dry_run import DryRun
from image_classifier.launch.exit_codes import CLIENT_ERROR, FAILED, INTERRUPTED, LAUNCHER, aws_error, exit_on
from image_classifier.launch.upload import parse_s3_uri
from image_classifier.sagemaker_env import SageMakerEnv, execution_parameters
from image_classifier.serving import content_types
from image_classifier.transform import IMAGE_SUFFIXES, ResultsCsv

logger = logging.getLogger(__name__)

INSTANCE_TYPE = "ml.m5.xlarge"  # the job's default instance (registry.py registers packages for it too)
OUT_SUFFIX = ".out"  # what Batch Transform appends to each input object's name
# the API's names for the container's /execution-parameters BatchStrategy values
BATCH_STRATEGIES = {"SINGLE_RECORD": "SingleRecord", "MULTI_RECORD": "MultiRecord"}
FINAL_STATUSES = ("Completed", "Failed", "Stopped")
CREATING = {"sagemaker": ("CreateModel", "CreateTransformJob")}  # what a dry run records instead of sending


@dataclass(frozen=True)
class InputObject:
    """One S3 object of the input prefix: its `s3://` URI, its key relative to the prefix, its size in bytes."""

    uri: str
    relative: str
    size: int


def list_inputs(s3_client, input_uri: str) -> list[InputObject]:
    """Every object under `input_uri` (an S3Prefix, as the transform job will read it), sorted by key.

    Raises:
        ValueError: not an s3:// URI.
    """
    bucket, prefix = parse_s3_uri(input_uri)
    # S3Prefix matches keys by prefix, as ListObjectsV2 does: `data/test` also takes `data/test-2/`
    raw_prefix = input_uri[len(f"s3://{bucket}/"):] if input_uri.startswith(f"s3://{bucket}/") else ""
    found = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=raw_prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/"):  # a console "folder" marker, not data
                continue
            relative = obj["Key"][len(prefix):].lstrip("/") if obj["Key"].startswith(prefix) else obj["Key"]
            found.append(InputObject(f"s3://{bucket}/{obj['Key']}", relative, obj["Size"]))
    return sorted(found, key=lambda o: o.uri)


def check_inputs(inputs: list[InputObject], max_payload_bytes: int) -> None:
    """Refuse input that would fail the job after its instances started.

    Raises:
        ValueError: no objects; objects that are not images (by suffix: the container answers
            400 to anything Pillow cannot open, and one failed object fails the job); objects over
            `max_payload_bytes` (the container answers 413). The message lists up to 5 of each.
    """
    if not inputs:
        raise ValueError("no objects under the input prefix")
    problems = []
    not_images = [o.uri for o in inputs if PurePosixPath(o.relative).suffix.lower() not in IMAGE_SUFFIXES]
    if not_images:
        problems.append(f"{len(not_images)} object(s) are not images ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                        f"e.g. {', '.join(not_images[:5])}")
    too_big = [f"{o.uri} ({o.size} bytes)" for o in inputs if o.size > max_payload_bytes]
    if too_big:
        problems.append(f"{len(too_big)} object(s) are over the container's payload limit of {max_payload_bytes} "
                        f"bytes (raise it with --env SAGEMAKER_MAX_PAYLOAD_IN_MB=N, or shrink the images), "
                        f"e.g. {', '.join(too_big[:5])}")
    if problems:
        raise ValueError("the transform job would fail: " + "; ".join(problems))


def job_settings(container_environment: dict[str, str]) -> dict[str, Any]:
    """MaxConcurrentTransforms, MaxPayloadInMB and BatchStrategy for CreateTransformJob.

    Computed from the environment the container will run with (the Model's environment, then
    the job's, which SageMaker merges over it) by `sagemaker_env.execution_parameters`, the
    function behind the container's own `GET /execution-parameters`.
    """
    server = SageMakerEnv.from_environ(container_environment).server
    params = execution_parameters(server.model_server_workers, server.model_server_threads, server.max_payload_bytes)
    return {"MaxConcurrentTransforms": params["MaxConcurrentTransforms"],
            "MaxPayloadInMB": params["MaxPayloadInMB"],
            "BatchStrategy": BATCH_STRATEGIES[params["BatchStrategy"]]}


def transform_job_request(args: argparse.Namespace, model_name: str, job_name: str, settings: dict[str, Any],
                          environment: dict[str, str]) -> dict[str, Any]:
    """The CreateTransformJob request: one image per S3 object, sent whole (no split, no compression);
    `environment` is the job's own, merged by SageMaker over the Model's (none when empty)."""
    request = {
        "TransformJobName": job_name, "ModelName": model_name, **settings,
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": args.input}},
                           "ContentType": content_types.X_IMAGE, "CompressionType": "None", "SplitType": "None"},
        "TransformOutput": {"S3OutputPath": args.output, "Accept": content_types.JSON, "AssembleWith": "None"},
        "TransformResources": {"InstanceType": args.instance_type, "InstanceCount": args.instance_count},
    }
    if environment:
        request["Environment"] = environment
    return request


def wait(sm_client, s3_client, job_name: str, output_uri: str, total: int, poll: float = 30.0) -> dict[str, Any]:
    """Poll DescribeTransformJob every `poll` seconds until it ends; a bar counts the `.out` objects.

    Returns:
        the last DescribeTransformJob answer.
    """
    with tqdm(total=total, unit="image", desc=job_name) as bar:
        while True:
            job = sm_client.describe_transform_job(TransformJobName=job_name)
            bar.update(min(total, len(list_answers(s3_client, output_uri))) - bar.n)
            bar.set_postfix_str(job["TransformJobStatus"])
            if job["TransformJobStatus"] in FINAL_STATUSES:
                return job
            time.sleep(poll)


def list_answers(s3_client, output_uri: str) -> dict[str, str]:
    """The `.out` objects under `output_uri`: their key relative to it, without `.out` → their full key."""
    bucket, prefix = parse_s3_uri(output_uri)
    answers = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(OUT_SUFFIX):
                answers[obj["Key"][len(prefix):].lstrip("/")[: -len(OUT_SUFFIX)]] = obj["Key"]
    return answers


def answer_key(input_obj: InputObject, answers: dict[str, str]) -> str | None:
    """The key of `input_obj`'s answer among `answers` (from `list_answers`), or None.

    Batch Transform writes it at the input's key relative to the input prefix, plus `.out`
    (API_TransformOutput). The same page's example also shows the input prefix's last folder
    kept and a subfolder dropped, so a unique match on the trailing path is taken as well.
    """
    if input_obj.relative in answers:
        return answers[input_obj.relative]
    matches = [key for relative, key in answers.items()
               if relative.endswith("/" + input_obj.relative) or input_obj.relative.endswith("/" + relative)]
    return matches[0] if len(matches) == 1 else None


def gather(s3_client, inputs: list[InputObject], output_uri: str, results: Path) -> tuple[int, list[str]]:
    """Write one CSV row per input object whose `.out` answer exists; skip rows already in `results`.

    Each `.out` holds the container's JSON answer for one image, `{"predictions": [{"label",
    "class_id", "probability"}, ...]}`; an answer that is not that becomes the row's error.

    Returns:
        (rows written now, the input URIs that have no `.out` object).
    """
    bucket, _ = parse_s3_uri(output_uri)
    answers = list_answers(s3_client, output_uri)
    keys = {o.uri: answer_key(o, answers) for o in inputs}
    claims = Counter(keys.values())
    written, missing = 0, []
    with ResultsCsv(results) as csv_file:
        for input_obj in tqdm([o for o in inputs if o.uri not in csv_file.done], unit="object", desc="gather"):
            key = keys[input_obj.uri]
            if key is None or claims[key] > 1:  # an answer two inputs could claim belongs to neither
                missing.append(input_obj.uri)
                continue
            body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
            try:
                predictions, error = json.loads(body)["predictions"], None
            except (ValueError, KeyError, TypeError):
                predictions, error = None, f"unreadable answer: {body[:200]!r}"
            csv_file.append(input_obj.uri, predictions, error)
            written += 1
    return written, missing


def _container_environment(sm_client, args: argparse.Namespace) -> dict[str, str]:
    """The environment the container will see: the Model's (described, or `--env` for a new one), then the job's."""
    if args.model_name:
        model = sm_client.describe_model(ModelName=args.model_name)
        base = (model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]).get("Environment", {})
        return {**base, **parse_static(args.env)}
    return parse_static(args.env)


def _create_model_request(args: argparse.Namespace, sm_client, model_name: str) -> dict[str, Any]:
    if not (args.image and args.role):
        raise ValueError("give --model-name NAME, or --image and --role with --model-data or --training-job")
    return {"ModelName": model_name, "ExecutionRoleArn": args.role,
            "PrimaryContainer": {"Image": args.image, "ModelDataUrl": model_data_of(sm_client, args),
                                 "Environment": parse_static(args.env)}}


def run(args: argparse.Namespace, boto_session: boto3.Session) -> int:
    """Check the input, create the model and the job, wait, gather. Returns the exit code."""
    sm, s3 = boto_session.client("sagemaker"), boto_session.client("s3")
    for uri in (args.input, args.output):
        parse_s3_uri(uri)
    environment = _container_environment(sm, args)
    settings = job_settings(environment)
    inputs = list_inputs(s3, args.input)
    check_inputs(inputs, SageMakerEnv.from_environ(environment).server.max_payload_bytes)
    suffix = time.strftime("%Y%m%d-%H%M%S")
    job_name = args.job_name or f"{args.name}-{suffix}"
    model_name = args.model_name or f"{args.name}-{suffix}"
    model_request = None if args.model_name else _create_model_request(args, sm, model_name)
    # a new Model carries --env itself; only an existing Model's job needs it on the job
    job_request = transform_job_request(args, model_name, job_name, settings,
                                        parse_static(args.env) if args.model_name else {})
    if args.dry_run:
        dry_run = DryRun(boto_session, CREATING)
        sm = boto_session.client("sagemaker")  # made after the DryRun: a client takes the session's handlers
        for operation, request in (("create_model", model_request), ("create_transform_job", job_request)):
            if request is not None:
                getattr(sm, operation)(**request)
        print(json.dumps([{r.operation: r.params} for r in dry_run.requests], indent=2))
        print(f"{len(inputs)} object(s) under {args.input} would be transformed")
        return 0
    if model_request is not None:
        sm.create_model(**model_request)
    try:
        sm.create_transform_job(**job_request)
    except ClientError:
        if model_request is not None:  # nothing uses it: leave no orphan behind
            sm.delete_model(ModelName=model_name)
        raise
    print(f"transform job {job_name}: {len(inputs)} object(s) from {args.input} to {args.output}")
    if not args.wait:
        print(f"not waiting; gather later with: batch_transform.py --gather {job_name} --results {args.results}")
        return 0
    try:
        job = wait(sm, s3, job_name, args.output, len(inputs), args.poll)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; the job goes on. Gather later with: batch_transform.py --gather {job_name} "
              f"--results {args.results}; stop it with: aws sagemaker stop-transform-job "
              f"--transform-job-name {job_name}", file=sys.stderr)
        return INTERRUPTED
    return _report(job, *gather(s3, inputs, args.output, args.results), args.results)


def gather_job(args: argparse.Namespace, boto_session: boto3.Session) -> int:
    """`--gather JOB`: gather the `.out` files of a transform job that ran (or runs) already."""
    sm, s3 = boto_session.client("sagemaker"), boto_session.client("s3")
    job = sm.describe_transform_job(TransformJobName=args.gather)
    input_uri = job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
    output_uri = job["TransformOutput"]["S3OutputPath"]
    return _report(job, *gather(s3, list_inputs(s3, input_uri), output_uri, args.results), args.results)


def _report(job: dict[str, Any], written: int, missing: list[str], results: Path) -> int:
    status = job["TransformJobStatus"]
    print(f"{job['TransformJobName']}: {status}; {written} row(s) added to {results}")
    if job.get("FailureReason"):
        print(f"failure reason: {job['FailureReason']}", file=sys.stderr)
    if missing:
        print(f"{len(missing)} object(s) have no answer (.out) yet, e.g. {', '.join(missing[:5])}; "
              f"once the job wrote them, gather again with --gather {job['TransformJobName']}", file=sys.stderr)
    return 0 if status == "Completed" and not missing else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batch_transform.py", description=__doc__.splitlines()[0])
    parser.add_argument("--input", help="S3 prefix of the images, one image per object, e.g. s3://bucket/dogImages/test/")
    parser.add_argument("--output", help="S3 prefix the job writes its .out answers to")
    parser.add_argument("--results", type=Path, default=Path("results.csv"),
                        help="the CSV gathered from the answers (default: %(default)s; rows already there are kept)")
    parser.add_argument("--gather", metavar="JOB", help="only gather the answers of this transform job into --results")
    parser.add_argument("--region", default=None, help="AWS region (default: the AWS configuration's)")
    parser.add_argument("--name", default="image-classifier", help="prefix of the job's and model's names")
    parser.add_argument("--job-name", help="the transform job's name (default: NAME-<timestamp>)")
    parser.add_argument("--model-name",
                        help="an existing SageMaker Model (e.g. one deploy.py made) instead of a new one")
    parser.add_argument("--image", help="serving image URI in ECR (for a new Model)")
    parser.add_argument("--role", help="IAM role ARN the Model runs as (for a new Model)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-data", help="S3 URI of model.tar.gz (for a new Model)")
    source.add_argument("--training-job", help="take the model artifacts of this training job (for a new Model)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="container environment, e.g. MODEL_SERVER_WORKERS=2; it also sets the job's "
                             "MaxConcurrentTransforms (workers × threads) and MaxPayloadInMB (repeatable)")
    parser.add_argument("--instance-type", default=INSTANCE_TYPE)
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--poll", type=float, default=30.0, help="seconds between status checks while waiting")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="wait for the job and gather its answers (default)")
    parser.add_argument("--dry-run", action="store_true", help="check the input and print the requests, send nothing")
    return parser


@exit_on({**LAUNCHER, CLIENT_ERROR: (FAILED, aws_error)})
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.gather and not (args.input and args.output):
        parser.error("give --input and --output (or --gather JOB)")
    boto_session = boto3.Session(region_name=args.region)
    return gather_job(args, boto_session) if args.gather else run(args, boto_session)
