"""Each rule fires on a trial made to show its problem, at the right step, and not on a healthy one.

The trials are written by the real smdebug hook (through `DebugHook`) around a small network
trained the way the training loop trains: TRAIN steps, then an EVAL pass, per epoch.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from image_classifier.debugging.hook import HOOK_CONFIG_FILE, DebugHook
from image_classifier.sagemaker_env import SageMakerEnv

pytest.importorskip("smdebug")
from smdebug.trials import create_trial

from image_classifier.debugging import rule_names, rules
from image_classifier.debugging.results import ISSUES, NO_ISSUES, NOT_APPLICABLE, format_table
from image_classifier.debugging.rules import RuleSet

EVERY_STEP = ["weights", "gradients", "biases", "losses", "labels", "predictions", "relu_input", "relu_output"]


def block(inputs: int, outputs: int) -> nn.Sequential:
    """Linear then ReLU, named like torchvision's (`<block>.relu`), so tensors match ".*relu_input"."""
    return nn.Sequential(OrderedDict(fc=nn.Linear(inputs, outputs), relu=nn.ReLU()))


class Net(nn.Module):
    """(N, 4) float32 → (N, 3) logits through two Linear+ReLU blocks."""

    def __init__(self):
        super().__init__()
        self.block1, self.block2, self.head = block(4, 16), block(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.block2(self.block1(x)))


def separable(n: int, generator: torch.Generator, labels: torch.Tensor | None = None):
    """(N, 4) float32 points and their classes (N,) int64: feature `class` is raised by 3."""
    if labels is None:
        labels = torch.randint(0, 3, (n,), generator=generator)
    x = torch.randn(n, 4, generator=generator)
    x[torch.arange(n), labels] += 3.0
    return x, labels


def write_trial(path: Path, collections=EVERY_STEP, epochs: int = 3, train_steps: int = 10, valid_steps: int = 3,
                lr: float = 0.1, batch: int = 32, setup: Callable[[Net], None] = lambda net: None,
                before_step: Callable[[Net, int], None] = lambda net, step: None,
                loss_scale: float = 1.0, train_labels: Callable[[int], torch.Tensor] | None = None,
                valid_wrong: bool = False):
    """Train `Net` under the real hook (every collection saved every step) and return the trial."""
    env = SageMakerEnv(base_dir=path)
    env.config_dir.mkdir(parents=True)
    env.config_dir.joinpath(HOOK_CONFIG_FILE).write_text(json.dumps({
        "LocalPath": str(path / "tensors"), "HookParameters": {"save_interval": "1"},
        "CollectionConfigurations": [{"CollectionName": c, "CollectionParameters": (
            {"include_regex": f".*{c}"} if c.startswith("relu") else {"include_regex": f"^{c}$"}
            if c in ("labels", "predictions") else {})} for c in collections]}))
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    net, criterion = Net(), nn.CrossEntropyLoss()
    setup(net)
    hook = DebugHook.create(env, debug=False)
    hook.register(net, criterion)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    step = 0
    for _ in range(epochs):
        hook.set_mode("train")
        for _ in range(train_steps):
            before_step(net, step)
            x, y = separable(batch, generator, train_labels(batch) if train_labels else None)
            logits = net(x)
            hook.record_batch(y, logits)
            loss = criterion(logits, y) * loss_scale
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        hook.set_mode("eval")
        with torch.no_grad():
            for _ in range(valid_steps):
                x, y = separable(batch, generator)
                if valid_wrong:  # labelled as the next class: the better the model, the worse the loss
                    y = (y + 1) % 3
                logits = net(x)
                hook.record_batch(y, logits)
                criterion(logits, y)
                step += 1
    hook.close()
    return create_trial(str(path / "tensors"))


def evaluate(trial, names=rules.RULE_NAMES, **parameters):
    return RuleSet(trial, names, parameters).evaluate()


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    return evaluate(write_trial(tmp_path_factory.mktemp("healthy")))


# train steps are global steps 0-9, 13-22, 26-35; eval steps 10-12, 23-25, 36-38
@pytest.mark.parametrize("rule", rules.RULE_NAMES)
def test_no_issues_on_a_healthy_trial(healthy, rule):
    assert healthy[rule].status == NO_ISSUES, healthy[rule].details
    assert healthy[rule].datapoints > 0


def test_exploding_tensor_fires_at_the_nan_step(tmp_path):
    def plant_nan(net, step):
        if step == 4:
            with torch.no_grad():
                net.block2.fc.weight[0, 0] = float("nan")

    result = evaluate(write_trial(tmp_path, before_step=plant_nan), ["ExplodingTensor"])["ExplodingTensor"]
    assert result.status == ISSUES and result.step == 4
    assert "ResNet" not in result.details[0] and "block2.fc.weight" in result.details[0]


def test_zero_gradients(tmp_path):
    results = evaluate(write_trial(tmp_path, loss_scale=0.0), ["VanishingGradient", "AllZero", "WeightUpdateRatio"])
    assert results["VanishingGradient"].status == ISSUES and results["VanishingGradient"].step == 0
    assert results["AllZero"].status == ISSUES and results["AllZero"].step == 0
    assert "gradient/" in results["AllZero"].details[0]
    # the first update is compared at the second saved training step
    assert results["WeightUpdateRatio"].status == ISSUES and results["WeightUpdateRatio"].step == 1


def test_flat_loss(tmp_path):
    results = evaluate(write_trial(tmp_path, lr=0.0, epochs=7), ["LossNotDecreasing", "Overtraining"])
    # 10-step means compared every 10 training steps: the first comparison is at training step 19
    assert results["LossNotDecreasing"].status == ISSUES and results["LossNotDecreasing"].step == 22
    # training passes end at the first validation step of each epoch (10, 23, 36, ...): the first
    # pass sets the best, the 6th (ending at step 75) is the 5th without a better mean
    assert results["Overtraining"].status == ISSUES and results["Overtraining"].step == 75


def test_overtraining_does_not_fire_while_the_loss_improves(tmp_path):
    result = evaluate(write_trial(tmp_path, lr=0.05, epochs=7), ["Overtraining"])["Overtraining"]
    assert result.status == NO_ISSUES, result.details


def test_loss_decreasing_does_not_fire(tmp_path):
    result = evaluate(write_trial(tmp_path, lr=0.05, epochs=2), ["LossNotDecreasing"])["LossNotDecreasing"]
    assert result.status == NO_ISSUES, result.details


def test_overfit_fires_when_validation_loss_is_far_above_training(tmp_path):
    result = evaluate(write_trial(tmp_path, valid_wrong=True), ["Overfit"])["Overfit"]
    # judged at the end of each validation pass: at the first training step after it (13, 26),
    # or the last step evaluated (38, here; in a job, the end of each epoch)
    assert result.status == ISSUES and result.step == 13 and result.violations == 3


def test_dead_relu(tmp_path):
    def kill(net):
        with torch.no_grad():
            net.block1.fc.bias.fill_(-100.0)

    result = evaluate(write_trial(tmp_path, setup=kill), ["DeadRelu"])["DeadRelu"]
    assert result.status == ISSUES and result.step == 0 and "block1.relu_output_0" in result.details[0]


def test_poor_weight_initialization(tmp_path):
    def badly_scaled(net):
        with torch.no_grad():
            net.block2.fc.weight.mul_(100.0)

    result = evaluate(write_trial(tmp_path, setup=badly_scaled), ["PoorWeightInitialization"])
    assert result["PoorWeightInitialization"].status == ISSUES
    assert result["PoorWeightInitialization"].step == 0 and "variances" in result["PoorWeightInitialization"].details[0]


def test_class_imbalance(tmp_path):
    def mostly_zero(n):
        labels = torch.zeros(n, dtype=torch.int64)
        labels[0], labels[1] = 1, 2  # 1 of class 1 and 2 a batch against 30 of class 0
        return labels

    result = evaluate(write_trial(tmp_path, train_labels=mostly_zero), ["ClassImbalance"])["ClassImbalance"]
    # 500 samples are reached at the 16th training step (global step 18)
    assert result.status == ISSUES and result.step == 18 and "largest/smallest" in result.details[0]


def test_not_applicable_without_the_collections(tmp_path):
    results = evaluate(write_trial(tmp_path, collections=["losses"], epochs=1))
    for name in ("VanishingGradient", "DeadRelu", "PoorWeightInitialization", "WeightUpdateRatio", "ClassImbalance"):
        assert results[name].status == NOT_APPLICABLE, name
    assert results["ExplodingTensor"].status == NO_ISSUES


def test_each_step_is_evaluated_once_across_calls(tmp_path):
    trial = write_trial(tmp_path, epochs=1)
    rule_set = RuleSet(trial, ["ExplodingTensor"])
    first = rule_set.evaluate()["ExplodingTensor"].datapoints
    assert first == 13 and rule_set.evaluate()["ExplodingTensor"].datapoints == 13


def test_unknown_rule_and_parameter(tmp_path):
    trial = write_trial(tmp_path, epochs=1, train_steps=1, valid_steps=1)
    with pytest.raises(ValueError, match="unknown rule"):
        RuleSet(trial, ["Vanishing"])
    with pytest.raises(ValueError, match="no parameter"):
        RuleSet(trial, ["Overfit"], {"Overfit": {"treshold": 1}})


def test_aws_json_and_table(healthy):
    report = healthy["Overfit"].aws_json()
    assert set(report) == {"RuleTriggered", "Violations", "Details", "Datapoints", "RuleParameters"}
    assert "ratio_threshold:0.1" in report["RuleParameters"]
    table = format_table(healthy.values())
    assert table.splitlines()[0].split()[:4] == ["rule", "status", "step", "violations"]
    assert len(table.splitlines()) == 1 + len(rules.RULE_NAMES)


def test_the_registry_is_rule_names():
    """One rule class per entry of `rule_names.RULE_DEFAULTS`, in its order (the order they run)."""
    assert rules.RULE_NAMES == rule_names.RULE_NAMES == tuple(rule_names.RULE_DEFAULTS)


@pytest.mark.parametrize("rule", rules.RULE_NAMES)
def test_a_rules_defaults_are_its_rule_names_entry(healthy, rule):
    assert healthy[rule].parameters == dict(rule_names.RULE_DEFAULTS[rule])


def test_register_rule_rejects_a_rule_without_defaults_and_a_second_registration():
    with pytest.raises(ValueError, match="add its entry there"):
        @rules.register_rule
        class Nameless(rules.ProjectRule):
            pass

    with pytest.raises(ValueError, match="registered twice"):
        rules.register_rule(rules.Overfit)
    assert rules.RULE_NAMES == rule_names.RULE_NAMES
