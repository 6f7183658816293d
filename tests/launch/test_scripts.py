"""The launcher scripts in scripts/ are thin: each runs its package module, with --help and the common flags."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
# --role is the IAM role a SageMaker resource runs as, and --wait waits for that resource: the
# scripts that create none (upload_data, predict) have neither.
FLAGS = {
    "tune.py": ("--region", "--role", "--dry-run", "--wait", "--no-wait"),
    "train_debug.py": ("--region", "--role", "--dry-run", "--wait", "--no-wait", "--builtin-rules", "--download"),
    "deploy.py": ("--region", "--role", "--dry-run", "--wait", "--no-wait", "--delete", "--variant", "--serverless",
                  "--autoscale", "--target-invocations", "--scale-in-cooldown", "--scale-out-cooldown",
                  "--model-package", "--latest-approved"),
    "register.py": ("--region", "--dry-run", "--group", "--training-job", "--model-data", "--image", "--approve",
                    "--approve-arn", "--reject-arn", "--reason", "--metrics"),
    "update_endpoint.py": ("--region", "--role", "--dry-run", "--wait", "--no-wait", "--weight", "--model-data",
                           "--traffic", "--rollback"),
    "batch_transform.py": ("--region", "--role", "--dry-run", "--wait", "--no-wait", "--input", "--output",
                           "--results", "--gather", "--model-name"),
    "pipeline.py": ("--region", "--role", "--dry-run", "--wait", "--no-wait", "--upsert", "--start", "--param",
                    "--definition-out"),
    "predict.py": ("--region", "--dry-run", "--target-variant"),
    "upload_data.py": ("--region", "--dry-run"),
}


@pytest.mark.parametrize("script, flags", FLAGS.items())
def test_help(script, flags):
    result = subprocess.run([sys.executable, str(SCRIPTS / script), "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script}")
    for flag in flags:
        assert f"{flag} " in result.stdout or f"{flag}\n" in result.stdout or f"{flag}," in result.stdout, flag


def test_every_python_script_is_a_thin_entry():
    for script in SCRIPTS.glob("*.py"):
        code = [line for line in script.read_text().splitlines() if line and not line.startswith(("#", '"""'))]
        assert len(code) <= 4 and code[-1] == "sys.exit(main())", script.name
