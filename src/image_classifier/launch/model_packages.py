"""Model packages of SageMaker's Model Registry as what `deploy.py` deploys: `--model-package ARN`
and `--latest-approved GROUP`.

A model package (a version in a model package group) names the serving image and the model data
(its InferenceSpecification; `scripts/register.py` makes them). Deploying one creates a Model
whose container is `{"ModelPackageName": ARN}`, as SageMaker documents for deploying from the
registry (https://docs.aws.amazon.com/sagemaker/latest/dg/model-registry-deploy.html): SageMaker
takes the image and the model data from the package, and the Model keeps the package's ARN (its
lineage). Only an Approved package is deployed: approving is what the registry is for.
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
from collections.abc import Callable
from typing import Any

import boto3
import botocore.session

from image_classifier.launch import variants

logger = logging.getLogger(__name__)

APPROVED, PENDING, REJECTED = "Approved", "PendingManualApproval", "Rejected"  # ModelApprovalStatus
# what deploy.py's checks see of a package before it is read: its container's image and model data
STAND_IN_IMAGE, STAND_IN_DATA = "the model package's image", "s3://the-model-package/model.tar.gz"
# the shapes of botocore's service model a package's ARN is sent as: UpdateModelPackage's ModelPackageArn,
# DescribeModelPackage's and CreateModel's ModelPackageName (a group name of at most 63 characters, a version)
ARN_SHAPES = ("ModelPackageArn", "VersionedArnOrName")


def add_arguments(source: argparse._MutuallyExclusiveGroup) -> None:
    """Add `--model-package` and `--latest-approved` to deploy.py's group of model sources."""
    source.add_argument("--model-package", metavar="ARN",
                        help="deploy this Approved model package (Model Registry, scripts/register.py) as the one "
                             "variant: its image and model data")
    source.add_argument("--latest-approved", metavar="GROUP",
                        help="deploy the newest Approved model package of this model package group as the one "
                             "variant")


@functools.cache
def _arn_checks() -> tuple[tuple[re.Pattern, int], ...]:
    """(pattern, most characters) of each of ARN_SHAPES, from botocore's service model."""
    model = botocore.session.get_session().get_service_model("sagemaker")
    return tuple((re.compile(model.shape_for(shape).metadata["pattern"]), model.shape_for(shape).metadata["max"])
                 for shape in ARN_SHAPES)


def check_arn(arn: str) -> str:
    """`arn` if it is a model package's ARN that every request taking one takes.

    Raises:
        ValueError: otherwise (the message shows one).
    """
    if not all(pattern.fullmatch(arn) and len(arn) <= most for pattern, most in _arn_checks()):
        raise ValueError(f"not a model package ARN: {arn!r} (expected "
                         "arn:aws:sagemaker:REGION:ACCOUNT:model-package/GROUP/VERSION, GROUP 1-63 letters, digits and "
                         "hyphens)")
    return arn


def check_group(name: str) -> str:
    """`name` if it is a valid model package group name. Raises: ValueError: otherwise."""
    if not variants.is_name(name):
        raise ValueError(f"model package group name {name!r} must be 1-63 letters, digits and hyphens, "
                         "starting and ending with a letter or digit")
    return name


def latest_approved(sm, group: str, page_size: int = 10) -> str:
    """The ARN of the newest Approved model package of `group` (ListModelPackages, by CreationTime,
    `page_size` summaries a request).

    Raises:
        ValueError: the group holds no Approved package (the message says how to approve one).
    """
    # a page of a filtered list may be empty and still have a NextToken: page on to the first summary
    pages = sm.get_paginator("list_model_packages").paginate(
        ModelPackageGroupName=group, ModelApprovalStatus=APPROVED, SortBy="CreationTime", SortOrder="Descending",
        PaginationConfig={"PageSize": page_size})
    for page in pages:
        for summary in page.get("ModelPackageSummaryList", []):
            return summary["ModelPackageArn"]
    raise ValueError(f"model package group {group} holds no Approved model package: approve one with "
                     "scripts/register.py --approve-arn ARN")


def approved_package(sm, arn: str) -> dict[str, Any]:
    """DescribeModelPackage of `arn`, checked to be Approved. Raises: ValueError: it is not Approved."""
    package = sm.describe_model_package(ModelPackageName=arn)
    status = package.get("ModelApprovalStatus")
    if status != APPROVED:
        raise ValueError(f"model package {arn} is {status}, not Approved: approve it first with "
                         f"scripts/register.py --approve-arn {arn}")
    return package


def resolve(boto_session: boto3.Session, args: argparse.Namespace,
            check: Callable[[argparse.Namespace], object]) -> None:
    """For `--model-package` / `--latest-approved`: check them, find the Approved package, and set
    `args.model_package` (its ARN), `args.image` and `args.model_data` (its first container's), which
    deploy.py then deploys as usual. Without either, nothing happens.

    Args:
        boto_session: the session of the reads (ListModelPackages, DescribeModelPackage).
        args: deploy.py's arguments, changed in place.
        check: deploy.py's check of all its arguments (`deploy.plan`), run before any request with
            stand-ins for the image and the model data the package will give.

    Raises:
        ValueError: a malformed ARN or group name, `--image` given too (the package names its image),
            what `check` refuses (all three before any request); no Approved package; a package
            without a ModelDataUrl.
    """
    if not (args.model_package or args.latest_approved):
        return
    if args.model_package:
        check_arn(args.model_package)
    else:
        check_group(args.latest_approved)
    if args.image:
        raise ValueError("a model package names its serving image: leave out --image")
    if not args.role:
        raise ValueError("--role is needed to deploy: the IAM role the endpoint runs as")
    check(argparse.Namespace(**{**vars(args), "image": STAND_IN_IMAGE, "model_data": STAND_IN_DATA}))
    sm = boto_session.client("sagemaker")
    arn = args.model_package or latest_approved(sm, args.latest_approved)
    container = approved_package(sm, arn)["InferenceSpecification"]["Containers"][0]
    if "ModelDataUrl" not in container:  # e.g. uncompressed model data, a ModelDataSource
        raise ValueError(f"model package {arn} names no model.tar.gz (its container has no ModelDataUrl): "
                         "register one with scripts/register.py --model-data s3://.../model.tar.gz")
    logger.info("deploying model package %s: %s with %s", arn, container["Image"], container["ModelDataUrl"])
    args.model_package, args.image, args.model_data = arn, container["Image"], container["ModelDataUrl"]


def container(args: argparse.Namespace, model_data: str) -> dict[str, Any]:
    """A Model's container: the model package when one is deployed, else the image and `model_data`."""
    if args.model_package:
        return {"ModelPackageName": args.model_package}
    return {"Image": args.image, "ModelDataUrl": model_data}
