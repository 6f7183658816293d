"""An AWS API emulator (moto_server, plus UpdateEndpoint: tests/launch/emulator.py) on loopback
for the launcher tests, and a record of the requests it received."""

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from image_classifier import local
from image_classifier.local import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory):
    """moto_server (with UpdateEndpoint) on a free loopback port, for the whole session."""
    port = free_port()
    env = {**os.environ, "MOTO_RECORDER_FILEPATH": str(tmp_path_factory.mktemp("moto") / "recording.jsonl")}
    server = subprocess.Popen([sys.executable, "-m", "tests.launch.emulator", "-H", "127.0.0.1", "-p", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(f"{url}/moto-api/", timeout=1)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline and server.poll() is None, "moto_server did not start"
            time.sleep(0.2)
    yield url
    local.stop(server, timeout=10)


@pytest.fixture
def aws(moto_url, monkeypatch):
    """boto3 pointed at the emulator with dummy credentials.

    The SageMaker SDK v3 checks the role with iam:SimulatePrincipalPolicy, which moto does not
    implement (it answers 500): the tests turn that check off with SAGEMAKER_VALIDATE_ROLE.
    """
    for name, value in {"AWS_ENDPOINT_URL": moto_url, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "SAGEMAKER_VALIDATE_ROLE": "false"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_url


@pytest.fixture
def received(aws):
    """The requests the emulator receives during the test, through moto's recorder.

    Returns a function `received(operation=None)` → a list of `{"operation", "headers", "body"}`,
    oldest first, for every request since the test began (only `operation`'s when given: the
    `X-Amz-Target` of a JSON API such as SageMaker's, e.g. "CreateTransformJob"); `body` is the
    parsed JSON body, or the raw bytes when it is not JSON.
    """
    requests.post(f"{aws}/moto-api/recorder/reset-recording", timeout=10)
    requests.post(f"{aws}/moto-api/recorder/start-recording", timeout=10)

    def read(operation: str | None = None) -> list[dict]:
        text = requests.get(f"{aws}/moto-api/recorder/download-recording", timeout=10).text
        found = []
        for line in filter(None, text.splitlines()):
            entry = json.loads(line)
            body = entry.get("body") or ""
            body = base64.b64decode(body) if entry.get("body_encoded") else body.encode()
            try:
                body = json.loads(body)
            except ValueError:
                pass
            target = entry["headers"].get("X-Amz-Target", "").rpartition(".")[2]
            if operation is None or target == operation:
                found.append({"operation": target, "headers": entry["headers"], "body": body,
                              "url": entry["url"]})
        return found

    yield read
    requests.post(f"{aws}/moto-api/recorder/stop-recording", timeout=10)
