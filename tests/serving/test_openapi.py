"""The description and the server agree: schemathesis `--checks all` against serving/openapi.yaml on a live server.

Every check schemathesis has (no 5xx; statuses, content types, headers and bodies as documented;
valid requests answered and invalid ones refused; 405 with Allow for other methods) over its
examples, coverage and fuzzing phases, with the settings and hooks of tests/serving/schemathesis.toml
(the seed, the examples and the seconds a request), and WALL_SECONDS for the whole run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from tests.serving.servers import children, start, stop, wait_for_answer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]  # the hooks' path in the settings is relative to it
SETTINGS = Path(__file__).with_name("schemathesis.toml")
WALL_SECONDS = 90  # the run took 26 s here (2 cores shared with other work)


@pytest.fixture(scope="module")
def contract_server(model_dir, tmp_path_factory):
    base_dir = tmp_path_factory.mktemp("opt_ml_openapi")
    shutil.copytree(model_dir, base_dir / "model")
    process, url, log = start(base_dir, 1)
    try:
        workers = wait_for_answer(url, process, log, want=200, workers=1)
        yield url, process, log, workers
    finally:
        if process.poll() is None:
            stop(process)


def test_schemathesis_finds_no_disagreement(contract_server):
    url, process, log, workers = contract_server
    with resources.as_file(resources.files("image_classifier.serving").joinpath("openapi.yaml")) as description:
        run = subprocess.run([sys.executable, "-m", "schemathesis.cli", "--config-file", str(SETTINGS), "run",
                              "--checks", "all", str(description), "--url", url],
                             cwd=ROOT, capture_output=True, text=True, timeout=WALL_SECONDS)
    report = run.stdout + run.stderr
    assert run.returncode == 0 and "No issues found" in report, report[-8000:]
    assert "3 selected / 3 total" in report, report[-3000:]
    assert children(process.pid) == workers  # no worker died or was replaced
    assert "Traceback" not in log.read_text(errors="replace")
