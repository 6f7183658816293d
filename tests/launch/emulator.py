"""moto_server with SageMaker's UpdateEndpoint, which moto 5.2.5 does not implement.

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
"""

from __future__ import annotations

import sys

from moto.core.responses import ActionResult
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.responses import SageMakerResponse

FAIL_ENV = "EMULATOR_UPDATE_FAILS"
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


_original_describe_endpoint = SageMakerResponse.describe_endpoint
SageMakerResponse.update_endpoint = update_endpoint
SageMakerResponse.describe_endpoint = describe_endpoint

if __name__ == "__main__":
    from moto.server import main

    sys.exit(main())
