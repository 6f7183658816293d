"""The smdebug hook in real (tiny) training jobs: SageMaker's file, the common configuration, no cost when off."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from image_classifier import local, models
from image_classifier.debugging.hook import (
    DEBUG_OUTPUT_DIR,
    HOOK_CONFIG_FILE,
    LABELS,
    PREDICTIONS,
    TENSORS_DIR,
    DebugHook,
    hook_config,
)
from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.training.config import TrainConfig
from image_classifier.training.job import run

smdebug = pytest.importorskip("smdebug")
from smdebug import modes  # noqa: E402
from smdebug.trials import create_trial  # noqa: E402

# TINY_JOB on the 3-class digit tree: 72 train images, batch 16 → 4 full train steps an epoch, 24 valid images → 2 steps
TRAIN_STEPS, VALID_STEPS = 2 * 4, 2 * 2


def run_in_process(env: SageMakerEnv) -> dict:
    return run(env, TrainConfig.from_hyperparameters(env.hyperparameters()))


def trial_of(env: SageMakerEnv):
    return create_trial(str(env.output_data_dir / DEBUG_OUTPUT_DIR / TENSORS_DIR))


def saved(trial, name: str, mode) -> list[int]:
    return trial.tensor(name).steps(mode=mode)


def test_the_common_configuration(opt_ml):
    env = opt_ml(debug=True)
    run_in_process(env)
    trial = trial_of(env)
    assert trial.steps(mode=modes.TRAIN) == list(range(TRAIN_STEPS))
    assert trial.steps(mode=modes.EVAL) == list(range(VALID_STEPS))
    weight = "ResNet_fc.1.weight"  # the new head: Sequential(Dropout, Linear)
    assert weight in trial.tensor_names(collection="weights")
    assert saved(trial, weight, modes.TRAIN) == [0, 5]  # every 5 training steps
    assert saved(trial, "gradient/" + weight, modes.TRAIN) == [0, 5]
    assert saved(trial, weight, modes.EVAL) == list(range(VALID_STEPS))  # every evaluation step
    assert "ResNet_fc.1.bias" in trial.tensor_names(collection="biases")
    loss = "CrossEntropyLoss_output_0"
    assert saved(trial, loss, modes.TRAIN) == list(range(TRAIN_STEPS))  # the loss every step
    assert saved(trial, loss, modes.EVAL) == list(range(VALID_STEPS))
    # labels and predictions of each step, for ClassImbalance: (N,) int64 in [0, classes)
    labels, predictions = (trial.tensor(n).value(3, mode=modes.TRAIN) for n in (LABELS, PREDICTIONS))
    assert labels.shape == predictions.shape == (16,) and labels.dtype == predictions.dtype
    assert set(labels) <= {0, 1, 2} and set(predictions) <= {0, 1, 2}
    # activations at step 0 (AWS's rule configurations save them every 500 steps)
    assert trial.tensor_names(collection="relu_output") and saved(trial, "relu_output_0", modes.TRAIN) == [0]
    # the configuration used is kept beside the tensors
    record = json.loads((env.output_data_dir / DEBUG_OUTPUT_DIR / HOOK_CONFIG_FILE).read_text())
    assert record["CollectionConfigurations"] == hook_config("x")["CollectionConfigurations"]


def test_sagemakers_debughookconfig_saves_exactly_its_collections(opt_ml):
    env = opt_ml(debug=False)
    env.config_dir.joinpath(HOOK_CONFIG_FILE).write_text(json.dumps({
        "LocalPath": str(env.output_dir / TENSORS_DIR),
        "S3OutputPath": "s3://bucket/job/debug-output",
        "HookParameters": {"save_interval": "100"},
        "CollectionConfigurations": [
            {"CollectionName": "losses",
             "CollectionParameters": {"train.save_interval": "3", "eval.save_interval": "2"}},
            {"CollectionName": "biases",
             "CollectionParameters": {"train.save_interval": "4", "eval.save_interval": "3"}},
        ]}))
    run_in_process(env)
    trial = trial_of(env)
    names = set(trial.tensor_names())
    assert names == set(trial.tensor_names(collection="losses")) | set(trial.tensor_names(collection="biases"))
    assert not names & set(trial.tensor_names(collection="weights") or [])
    assert saved(trial, "CrossEntropyLoss_output_0", modes.TRAIN) == [0, 3, 6]  # 8 train steps
    assert saved(trial, "CrossEntropyLoss_output_0", modes.EVAL) == [0, 2]
    assert saved(trial, "ResNet_fc.1.bias", modes.TRAIN) == [0, 4]
    assert saved(trial, "ResNet_fc.1.bias", modes.EVAL) == [0, 3]


def test_frozen_backbone(opt_ml):
    env = opt_ml(debug=True, freeze="backbone", epochs=1)
    run_in_process(env)
    gradients = trial_of(env).tensor_names(collection="gradients")
    assert sorted(gradients) == ["gradient/ResNet_fc.1.bias", "gradient/ResNet_fc.1.weight"]


def test_two_stages_record_the_backbones_gradients_once_it_trains(opt_ml):
    """head-epochs=1: the backbone is frozen when the hook registers, and its gradients are still recorded in
    epoch 2 (smdebug hooks only the parameters that require a gradient at registration)."""
    env = opt_ml(debug=True, freeze="none", head_epochs=1, epochs=2)
    run_in_process(env)
    gradients = trial_of(env).tensor_names(collection="gradients")
    assert "gradient/ResNet_fc.1.weight" in gradients and "gradient/ResNet_conv1.weight" in gradients


def test_mixed_precision_bfloat16(tmp_path):
    """Under autocast the activations are bfloat16, which NumPy cannot hold: they are saved as float32."""
    env = SageMakerEnv(base_dir=tmp_path)
    hook = DebugHook.create(env, debug=True)
    model = models.create_model("resnet18", 3)
    criterion = nn.CrossEntropyLoss()
    hook.register(model, criterion)
    hook.set_mode("train")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(images)
            assert logits.dtype == torch.bfloat16
            hook.record_batch(targets, logits)
            loss = criterion(logits.float(), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    hook.close()
    trial = trial_of(env)
    assert trial.steps() == [0, 1]
    activation = trial.tensor("relu_output_0").value(0)
    assert activation.dtype == "float32" and activation.shape == (4, 64, 16, 16) and activation.min() >= 0


def test_off_costs_nothing(opt_ml, tmp_path):
    """Not asked for: no hook, no tensors, and smdebug is not even imported."""
    env = opt_ml(debug=False, epochs=1)
    script = ("import sys; from image_classifier.train import main; code = main(); "
              "sys.exit(code or (3 if 'smdebug' in sys.modules else 0))")
    result = subprocess.run([sys.executable, "-c", script], env=local.child_environ(env.base_dir),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:]
    assert not (env.output_dir / TENSORS_DIR).exists()
    assert not (env.output_data_dir / DEBUG_OUTPUT_DIR).exists()


def test_asked_for_without_smdebug_fails_at_start(opt_ml):
    env = opt_ml(debug=True)
    script = "import sys; sys.modules['smdebug'] = None; from image_classifier.train import main; sys.exit(main())"
    result = subprocess.run([sys.executable, "-c", script], env=local.child_environ(env.base_dir),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    reason = env.failure_path.read_text()
    assert reason.startswith("DebugUnavailable: debugging was asked for but smdebug cannot be imported"), reason
    assert "epoch=" not in result.stdout  # failed at start, before any training


def test_a_broken_debughookconfig_fails_at_start(opt_ml):
    env = opt_ml()
    env.config_dir.joinpath(HOOK_CONFIG_FILE).write_text(json.dumps({
        "LocalPath": str(env.output_dir / TENSORS_DIR), "CollectionConfigurations": [{"no name": 1}]}))
    with pytest.raises(RuntimeError, match="smdebug cannot make a hook from SageMaker's"):
        run_in_process(env)


def test_gradients_are_saved_unscaled_under_a_grad_scaler(tmp_path):
    """float16 mixed precision scales the loss by 2**16: the saved gradients are the true ones."""
    from image_classifier.training.loop import Meter, train_one_epoch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    reference = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    reference.load_state_dict(model.state_dict())
    images, targets = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    nn.CrossEntropyLoss()(reference(images), targets).backward()

    hook = DebugHook.create(SageMakerEnv(base_dir=tmp_path), debug=True)
    criterion = nn.CrossEntropyLoss()
    hook.register(model, criterion)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    train_one_epoch(model, [(images, targets)], criterion, torch.optim.SGD(model.parameters(), lr=0.1),
                    torch.device("cpu"), scaler, None, Meter(), hook=hook)
    hook.close()
    saved = trial_of(SageMakerEnv(base_dir=tmp_path)).tensor("gradient/Sequential_1.weight").value(0)
    assert torch.allclose(torch.from_numpy(saved), reference[1].weight.grad, atol=1e-6)
