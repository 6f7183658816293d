"""Dry runs: record the requests a launcher would send to AWS, and send none of them.

One mechanism for every launcher with `--dry-run`: a botocore `before-call` hook on the boto3
session. A request it records has already been validated and serialised by botocore, so its
`params` are the API's request (PascalCase), ready for the same boto3 call. Requests it does not
record (DescribeEndpoint, DescribeTrainingJob, ...) go out as usual: a dry run reads, it changes
nothing. Nothing in the process environment changes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.awsrequest import AWSResponse

logger = logging.getLogger(__name__)

# What a dry run answers itself: the SageMaker SDK v3's read-only IAM check of the role (ModelTrainer),
# answered "nothing denied" and "trust policy not shown", so that the check passes without a request.
SKIPPED_CHECKS: dict[str, dict[str, dict[str, Any]]] = {
    "iam": {"SimulatePrincipalPolicy": {"EvaluationResults": [], "IsTruncated": False},
            "GetRole": {"Role": {}}},
}


class Stopped(Exception):
    """Raised in place of a recorded request by a DryRun made with `stop=True`."""

    def __init__(self, operation: str):
        super().__init__(f"dry run: {operation} not sent")
        self.operation = operation


@dataclass(frozen=True)
class Request:
    """A request a dry run recorded: the operation (e.g. "CreateModel") and its parameters."""

    operation: str
    params: dict[str, Any]


class DryRun:
    """Records, in `requests`, what the clients of a boto3 session would send for `operations`.

    Register it before the session makes its clients (a client copies the session's handlers
    when it is made); the SageMaker SDK's clients are made from the session too.

    Args:
        boto_session: the session whose clients are watched.
        operations: service name (as `boto3.client` takes it) → the operations recorded, not sent;
            a recorded request answers `{}`, so a boto3 caller goes on.
        stop: raise `Stopped` after recording, instead of answering: for the SDK, which would
            go on to describe what it believes it created.
    """

    def __init__(self, boto_session, operations: Mapping[str, tuple[str, ...]], stop: bool = False):
        self.requests: list[Request] = []
        self._operations, self._stop = operations, stop
        boto_session.events.register("before-call", self._before_call)

    def _before_call(self, model, params: dict[str, Any], **_) -> tuple[AWSResponse, dict[str, Any]] | None:
        service, operation = model.service_model.service_name, model.name
        if operation in self._operations.get(service, ()):
            self.requests.append(Request(operation, _body(params)))
            if self._stop:
                raise Stopped(operation)
            return AWSResponse(None, 200, {}, None), {}
        answer = SKIPPED_CHECKS.get(service, {}).get(operation)
        if answer is not None:
            logger.debug("dry run: %s %s answered without a request", service, operation)
            return AWSResponse(None, 200, {}, None), dict(answer)
        return None

    def params(self) -> list[dict[str, Any]]:
        """The recorded requests' parameters, oldest first."""
        return [request.params for request in self.requests]


def _body(params: dict[str, Any]) -> dict[str, Any]:
    """The request's parameters, from botocore's serialised request dict (JSON protocols)."""
    body = params["body"]
    if isinstance(body, (bytes, str)):
        return json.loads(body or "{}")
    return dict(body)
