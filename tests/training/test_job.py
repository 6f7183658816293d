"""Whole training jobs on /opt/ml trees written the way SageMaker writes them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from image_classifier import artifacts, explain, local, models
from image_classifier.evaluation import REPORT_DIR, baseline
from image_classifier.evaluation import report as evaluation_report
from image_classifier.images import open_image
from image_classifier.launch.metrics import metric_regex
from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.serving.codec import Inputs
from image_classifier.serving.predictor import Predictor
from image_classifier.training import data, evaluation, job
from image_classifier.training.checkpoints import CHECKPOINT_FILE
from image_classifier.training.config import TrainConfig
from image_classifier.training.features import FeatureChannel
from image_classifier.training.job import run
from image_classifier.training.loaders import make_loaders
from image_classifier.training.loop import Outputs
from image_classifier.training.metrics import METRICS_FILE
from image_classifier.transforms import eval_view
from tests.conftest import TINY_JOB, sdk_hyperparameters, write_digit_tree

EPOCH_LINE = re.compile(r"epoch=(\d+) train_loss=(\S+) train_accuracy=(\S+) valid_loss=(\S+) valid_accuracy=(\S+) "
                        r"valid_f1=(\S+)")
TEST_LINE = re.compile(r"test_loss=(\S+) test_accuracy=(\S+) test_f1=(\S+)")


def start_job(env: SageMakerEnv) -> subprocess.Popen:
    """`python -m image_classifier.train` on `env`'s layout, as the container's `train` runs it."""
    return local.start_job(env.base_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_job(env: SageMakerEnv, timeout: float = 300) -> tuple[int, str]:
    process = start_job(env)
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def signal_after_epoch(env: SageMakerEnv, signum: int, epoch: int = 1) -> tuple[int, str]:
    """Start the job, send `signum` once it logged `epoch=<epoch>`, return (exit code, log)."""
    process = start_job(env)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if f"epoch={epoch} " in line:
            process.send_signal(signum)
            break
    lines += process.stdout.readlines()
    return process.wait(timeout=120), "".join(lines)


def plant_bad_files(channel: Path) -> list[Path]:
    """Corrupt, truncated, empty and non-image files among real images of `channel`."""
    folder = sorted(p for p in channel.iterdir() if p.is_dir())[0]
    good = sorted(folder.glob("*.png"))[0].read_bytes()
    bad = {"corrupt.jpg": os.urandom(2000), "truncated.png": good[: len(good) // 2],
           "empty.jpg": b"", "notes.txt": b"not an image\n"}
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    return [folder / name for name in bad]


@pytest.mark.slow
def test_whole_job_as_sagemaker_runs_it(tmp_path, opt_ml, digit_tree):
    tree = shutil.copytree(digit_tree, tmp_path / "data")
    planted = plant_bad_files(tree / "train") + plant_bad_files(tree / "valid")
    env = opt_ml(tree)
    # SageMaker adds its own keys to hyperparameters.json; a tuning job adds the objective
    hyperparameters = json.loads(env.hyperparameters_path.read_text())
    hyperparameters.update({"sagemaker_region": '"us-east-1"', "_tuning_objective_metric": '"valid_accuracy"'})
    env.hyperparameters_path.write_text(json.dumps(hyperparameters))

    code, log = run_job(env)

    assert code == 0, log
    assert not env.failure_path.exists()
    for path in planted:
        assert f"{path.parent.name}/{path.name} (" in log, f"{path.name} not named in the log"
    epochs = [tuple(map(float, m.groups())) for m in EPOCH_LINE.finditer(log)]
    assert [e[0] for e in epochs] == [1, 2]
    test_loss, test_accuracy, test_f1 = map(float, TEST_LINE.search(log).groups())
    metrics = json.loads((env.output_data_dir / METRICS_FILE).read_text())
    assert [h["epoch"] for h in metrics["epochs"]] == [1, 2]
    for logged, saved in zip(epochs, metrics["epochs"]):
        assert logged[1:] == pytest.approx((saved["train_loss"], saved["train_accuracy"],
                                            saved["valid_loss"], saved["valid_accuracy"], saved["valid_f1"]), rel=1e-5)
        assert saved["epoch_seconds"] > 0 and saved["images_per_second"] > 0
    # valid_f1 in every epoch's line, read with the cloud metric definition's regex
    assert [float(v) for v in re.findall(metric_regex("valid_f1"), log)] == pytest.approx(
        [e["valid_f1"] for e in metrics["epochs"]], rel=1e-5)
    assert 0 <= metrics["best_valid_f1"] <= 1
    assert (test_loss, test_accuracy) == pytest.approx((metrics["test_loss"], metrics["test_accuracy"]), rel=1e-5)
    # the evaluation report, of the test pass's own predictions
    report = env.output_data_dir / REPORT_DIR
    evaluation = json.loads((report / evaluation_report.METRICS_FILE).read_text())
    assert (evaluation["channel"], evaluation["images"], evaluation["classes"]) == ("test", 24, 3)
    assert evaluation["accuracy"] == pytest.approx(test_accuracy, rel=1e-5)
    assert evaluation["macro_f1"] == pytest.approx(test_f1, rel=1e-5) == metrics["test_f1"]
    assert sum(r["support"] for r in evaluation["per_class"]) == 24
    assert all((report / f"{name}.png").stat().st_size > 1000 for name in evaluation_report.PICTURES)
    assert "evaluation of the test channel, 24 images" in log and re.search(r"\nclass +prec +rec +f1 +n\n", log)
    _state_dict, spec = artifacts.load_model(env.model_dir)
    assert spec.class_names == ["001.zero", "002.one", "003.two"]
    assert spec.labels == ["zero", "one", "two"]
    assert spec.arch == "resnet18" and spec.image_size == 32
    assert (env.checkpoint_dir / CHECKPOINT_FILE).exists()


@pytest.mark.parametrize("bad, expected", [
    ({"lr": "abc"}, "lr"),
    ({"learning_rate": "0.1"}, "learning_rate"),
    ({"model": '"resnet9000"'}, "resnet9000"),
    ({"optimizer": "rmsprop"}, "optimizer"),
])
def test_bad_hyperparameter_writes_failure_reason(opt_ml, bad, expected):
    env = opt_ml()
    hyperparameters = json.loads(env.hyperparameters_path.read_text())
    env.hyperparameters_path.write_text(json.dumps({**hyperparameters, **bad}))

    code, _log = run_job(env, timeout=120)

    assert code != 0
    reason = env.failure_path.read_text()
    assert expected in reason and "\n" not in reason and len(reason) <= 1024
    assert not env.model_dir.exists() or not any(env.model_dir.iterdir())


def test_missing_channel_is_a_clear_failure(tmp_path, opt_ml):
    env = opt_ml()
    (env.channel_dir("train")).unlink()

    code, _ = run_job(env, timeout=120)

    assert code != 0
    assert "train channel" in env.failure_path.read_text()


# Only the head trains (on the frozen backbone's features of augmented images, not cached):
# a convex problem, where rounding stays rounding. Trained whole from scratch at 32 px, the
# network amplifies any difference: weights multiplied by (1 + 1e-7) at the checkpoint ended
# 0.1 away (AdamW's first steps move each weight by about lr whatever the gradient's size), and
# CI once saw a killed-and-resumed job end that far from the uninterrupted one.
RESUME_JOB = {"epochs": 3, "num_workers": 2, "freeze": "backbone", "lr": 0.01}


@pytest.fixture(scope="module")
def resume_tree(tmp_path_factory) -> Path:
    # 9 training steps an epoch, so a SIGTERM after epoch 1 lands inside epoch 2
    return write_digit_tree(tmp_path_factory.mktemp("resume"), 3, {"train": 48, "valid": 8, "test": 8})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, resume_tree) -> dict[str, torch.Tensor]:
    """The weights of a job never interrupted."""
    env = local.lay_out(tmp_path_factory.mktemp("ref") / "opt_ml", resume_tree,
                        sdk_hyperparameters(**{**TINY_JOB, **RESUME_JOB}))
    code, log = run_job(env)
    assert code == 0, log
    return artifacts.load_model(env.model_dir)[0]


# How far apart two ends of RESUME_JOB may be, as a share of the largest value of each tensor.
# Measured on it: resumed from a checkpoint whose weights were multiplied by (1 + 1e-7), the job
# ends 7e-5 away (rounding that differs between processes stays that small); resumed with the
# optimizer's state dropped, 0.41 away. A resume that loses state lands far outside.
SAME_WEIGHTS_TOLERANCE = 1e-3


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
        if not a[key].is_floating_point():
            assert torch.equal(a[key], b[key]), key
            continue
        gap, scale = (a[key] - b[key]).abs().max().item(), b[key].abs().max().item()
        assert gap <= SAME_WEIGHTS_TOLERANCE * scale, f"{key}: {gap:.3g} apart, at most {scale:.3g} in size"


@pytest.mark.slow
def test_killed_job_restarted_ends_with_same_weights(opt_ml, resume_tree, uninterrupted):
    env = opt_ml(resume_tree, **RESUME_JOB)

    code, _ = signal_after_epoch(env, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (env.model_dir / artifacts.WEIGHTS_FILE).exists()
    code, log = run_job(env)

    assert code == 0, log
    assert "resuming from checkpoint" in log
    assert_same_weights(artifacts.load_model(env.model_dir)[0], uninterrupted)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_mid_epoch_and_resumes(opt_ml, resume_tree, uninterrupted):
    env = opt_ml(resume_tree, **RESUME_JOB)

    code, log = signal_after_epoch(env, signal.SIGTERM)

    assert code == 143, log
    assert "SIGTERM" in env.failure_path.read_text()
    saved = torch.load(env.checkpoint_dir / CHECKPOINT_FILE, weights_only=True)
    assert saved["job"]["epoch"] == 1 and saved["job"]["step"] > 0
    code, log = run_job(env)
    assert code == 0, log
    assert not env.failure_path.exists()
    assert_same_weights(artifacts.load_model(env.model_dir)[0], uninterrupted)


@pytest.mark.slow
def test_pretrained_weights_from_the_pretrained_channel(opt_ml):
    env = opt_ml(pretrained=True, freeze="backbone", epochs=1)
    torch.manual_seed(7)
    imagenet = torchvision.models.resnet18(weights=None).state_dict()
    channel = env.channel_dir("pretrained")
    channel.mkdir()
    torch.save(imagenet, channel / models.weights_filename("resnet18"))

    run(env, TrainConfig.from_hyperparameters(env.hyperparameters()))

    trained, _ = artifacts.load_model(env.model_dir)
    backbone = [k for k in imagenet if not k.startswith("fc.")]
    assert backbone and all(torch.equal(trained[k], imagenet[k]) for k in backbone)  # frozen, BN included
    assert trained["fc.1.weight"].shape == (3, 512)


@pytest.mark.slow
def test_serving_agrees_with_training_on_classes_and_accuracy(opt_ml, digit_tree):
    env = opt_ml(epochs=3)
    result = run(env, TrainConfig.from_hyperparameters(env.hyperparameters()))

    predictor = Predictor.load(env.model_dir)
    folders = sorted(p.name for p in (digit_tree / "test").iterdir())
    assert predictor.spec.class_names == folders
    assert predictor.spec.labels == [artifacts.label_of(f) for f in folders]
    images = sorted((digit_tree / "test").glob("*/*.png"))
    probabilities = predictor.predict(Inputs(images=[open_image(p) for p in images]))
    served = [predictor.spec.labels[i] for i in probabilities.argmax(axis=1)]
    truth = [artifacts.label_of(p.parent.name) for p in images]
    accuracy = sum(s == t for s, t in zip(served, truth)) / len(images)
    assert accuracy == pytest.approx(result["test_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_without_a_test_channel_the_report_is_of_the_valid_channel(tmp_path, opt_ml, digit_tree):
    tree = shutil.copytree(digit_tree, tmp_path / "data", ignore=shutil.ignore_patterns("test"))
    # cached features: the grid's images are found by scanning the channel again
    env = opt_ml(tree, freeze="backbone", augment=False, lr=0.01, image_size=64)

    result = run(env, TrainConfig.from_hyperparameters(env.hyperparameters()))

    evaluation = json.loads((env.output_data_dir / REPORT_DIR / evaluation_report.METRICS_FILE).read_text())
    assert (evaluation["channel"], evaluation["images"]) == ("valid", 24)
    # the best weights on the channel that chose them: the best epoch's figures again
    assert (evaluation["accuracy"], evaluation["macro_f1"]) == pytest.approx(
        (result["valid_accuracy"], result["valid_f1"]), rel=1e-6)
    page = (env.output_data_dir / REPORT_DIR / evaluation_report.REPORT_FILE).read_text()
    assert "no test channel" in page
    assert "the Grad-CAM heat-map of the predicted class" in page  # 64 px: overlays in the grid


@pytest.fixture
def test_pass(opt_ml, digit_tree):
    """(env, config, loader of the test channel, its Outputs: random logits) for `evaluation.write_report`."""
    env = opt_ml()
    config = TrainConfig.from_hyperparameters(env.hyperparameters())
    classes = data.class_names_of({"train": digit_tree / "train"})
    loader = make_loaders(config, {"test": env.channel_dir("test")}, classes, pin_memory=False)["test"]
    outputs = Outputs()
    torch.manual_seed(0)
    for _, targets in loader:
        outputs.update(torch.randn(len(targets), 3), targets)
    return env, config, classes, loader, outputs


def _untrained_state(classes: list[str]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return models.create_model("resnet18", len(classes)).state_dict()


def test_the_report_is_written_and_a_failed_one_does_not_fail_the_job(test_pass, monkeypatch, caplog):
    env, config, classes, loader, outputs = test_pass
    evaluation.write_report(env, job.model_spec(config, classes), "test", loader, evaluation.gathered(loader, outputs),
                            _untrained_state(classes), torch.device("cpu"))
    written = json.loads((env.output_data_dir / REPORT_DIR / evaluation_report.METRICS_FILE).read_text())
    assert written["images"] == 24 and sum(r["support"] for r in written["per_class"]) == 24
    # baseline.json, for image-classifier drift: each test image's prediction, as read from its file
    figures = json.loads((env.output_data_dir / REPORT_DIR / baseline.BASELINE_FILE).read_text())
    probabilities, _, indices = evaluation.gathered(loader, outputs)
    assert figures["predicted"] == probabilities.argmax(axis=1).tolist()
    paths = [path for path, _ in loader.dataset.samples]
    with Image.open(paths[indices[5]]) as digit:
        assert (figures["width"][5], figures["height"][5]) == digit.size
        assert figures["brightness"][5] == pytest.approx(np.asarray(digit.convert("L")).mean(), abs=0.01)

    def broken(*args, **kwargs):
        raise RuntimeError("matplotlib is broken")

    monkeypatch.setattr(evaluation_report, "write", broken)
    evaluation.write_report(env, job.model_spec(config, classes), "test", loader, evaluation.gathered(loader, outputs),
                            _untrained_state(classes), torch.device("cpu"))  # no exception
    assert "the evaluation report could not be written" in caplog.text and "matplotlib is broken" in caplog.text
    assert json.loads((env.output_data_dir / REPORT_DIR / evaluation_report.METRICS_FILE).read_text()) == written


def test_the_grid_shows_gradcam_of_the_predicted_class_from_64_pixels(test_pass):
    env, config, classes, loader, outputs = test_pass
    state = _untrained_state(classes)
    probabilities = outputs.arrays()[0]
    cpu = torch.device("cpu")
    # 32 px: a 1x1 map
    assert evaluation.gradcam_overlays(job.model_spec(config, classes), state, probabilities, cpu) is None
    config = config.model_copy(update={"image_size": 64})
    overlays = evaluation.gradcam_overlays(job.model_spec(config, classes), state, probabilities, cpu)

    view = eval_view(64)
    rows = [3, 0, 17]
    images = [view(open_image(loader.dataset.samples[r][0])) for r in rows]
    model = models.create_model("resnet18", len(classes))
    model.load_state_dict(state)
    expected = explain.overlays(model.eval(), "resnet18", images, probabilities[rows].argmax(axis=1).tolist())
    drawn = overlays.draw(rows, images)
    assert [np.asarray(d).tolist() for d in drawn] == [np.asarray(e).tolist() for e in expected]
    assert all(np.abs(np.asarray(d, np.int16) - np.asarray(i, np.int16)).mean() > 10 for d, i in zip(drawn, images))

    evaluation.write_report(env, job.model_spec(config, classes), "test", loader, evaluation.gathered(loader, outputs),
                            state, cpu)
    assert "the Grad-CAM heat-map of the predicted class" in (env.output_data_dir / REPORT_DIR /
                                                              evaluation_report.REPORT_FILE).read_text()


def test_cached_features_find_their_images_by_a_new_scan(test_pass):
    env, _, classes, loader, _ = test_pass
    images = [path for path, _ in loader.dataset.samples]
    targets = torch.tensor(loader.dataset.targets)
    cached = data.make_loader(FeatureChannel(torch.zeros(24, 4), targets), 8, 0, False, 0, False)
    assert evaluation.sample_paths(env, "test", cached, classes) == images
    stale = data.make_loader(FeatureChannel(torch.zeros(24, 4), targets.roll(1)), 8, 0, False, 0, False)
    with pytest.raises(ValueError, match="differ from its cached features"):
        evaluation.sample_paths(env, "test", stale, classes)
