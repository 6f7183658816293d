"""The container files agree with the package: compose services, hyperparameters, labels, entry programs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from image_classifier.demo import SAMPLE_HYPERPARAMETERS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_trains_with_the_sample_jobs_hyperparameters():
    assert json.loads((ROOT / "docker" / "hyperparameters.json").read_text()) == SAMPLE_HYPERPARAMETERS


def test_compose_runs_prepare_then_train_then_serve(compose):
    services = compose["services"]
    assert services["train"]["depends_on"]["prepare"]["condition"] == "service_completed_successfully"
    assert services["serve"]["depends_on"]["train"]["condition"] == "service_completed_successfully"
    assert "--if-missing" in services["prepare"]["command"]
    assert services["train"]["command"] == ["train"] and services["serve"]["command"] == ["serve"]
    assert "./data:/opt/ml/input/data:ro" in services["train"]["volumes"]
    assert "./local/opt_ml:/opt/ml" in services["train"]["volumes"]
    assert any(v.endswith(":/opt/ml/model:ro") for v in services["serve"]["volumes"])
    # published on loopback unless BIND_ADDRESS says otherwise: not to everyone on the network
    assert services["serve"]["ports"] == ["${BIND_ADDRESS:-127.0.0.1}:${PORT:-8080}:8080"]
    assert "/ping" in " ".join(services["serve"]["healthcheck"]["test"])
    assert services["serve"]["user"] == "model-server"


def test_compose_images_are_the_project_images(compose):
    images = {name: s["image"] for name, s in compose["services"].items()}
    assert set(images.values()) == {"image-classifier-train:latest", "image-classifier-serve:latest"}


def test_gpu_profile_reserves_gpus_and_serves_its_model(compose):
    services = compose["services"]
    assert "profiles" not in services["train"] and "profiles" not in services["serve"]
    assert services["train-gpu"]["profiles"] == ["gpu"] == services["serve-gpu"]["profiles"]
    devices = services["train-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["serve-gpu"]["depends_on"]["train-gpu"]["condition"] == "service_completed_successfully"


def test_serving_image_accepts_bind_to_port():
    text = (ROOT / "Dockerfile.serve").read_text()
    assert "LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in text
    assert 'CMD ["serve"]' in text


@pytest.mark.parametrize("program, module", [("train", "image_classifier.train"), ("serve", "image_classifier.serve")])
def test_entry_programs_call_the_package(program, module):
    text = (ROOT / "docker" / program).read_text()
    assert text.startswith("#!/opt/venv/bin/python")
    assert f"from {module} import main" in text
    compile(text, program, "exec")


def test_docker_train_writes_the_failure_file(tmp_path):
    """`train` as the image runs it (here with this interpreter): a bad hyperparameter fails the job."""
    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text('{"lr": "fast"}')
    result = subprocess.run([sys.executable, str(ROOT / "docker" / "train")], capture_output=True, text=True,
                            env={"SAGEMAKER_BASE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode != 0
    assert "lr" in (tmp_path / "output" / "failure").read_text()


@pytest.mark.parametrize("args, present, absent", [
    (["serve"], ["torch==2.15.0", "flask>=3.0", "gunicorn>=23"], ["smdebug==1.0.34"]),
    (["train"], ["torch==2.15.0", "smdebug==1.0.34", "sagemaker-training>=4.9,<5"], ["flask>=3.0"]),
    (["serve", "--only", "torch,torchvision"], ["torch==2.15.0", "torchvision==0.29.2"], ["Pillow>=10.3"]),
    (["train", "--only", "sagemaker-training"], ["sagemaker-training>=4.9,<5"], ["torch==2.15.0"]),
])
def test_image_requirements_come_from_pyproject(args, present, absent):
    out = subprocess.run([sys.executable, str(ROOT / "docker" / "requirements.py"), str(ROOT / "pyproject.toml"),
                          *args], capture_output=True, text=True, check=True).stdout.splitlines()
    assert all(r in out for r in present) and not any(r in out for r in absent), out
