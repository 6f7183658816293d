"""The fine-tuning recipe: frozen BatchNorm, two stages, discriminative learning rates, warm-up,
class weights, MLP heads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from image_classifier import artifacts, models
from image_classifier.training import job
from image_classifier.training.config import TrainConfig
from image_classifier.training.job import class_weights, lr_factors, param_groups, set_stage
from image_classifier.training.loop import Meter, train_one_epoch


def batches(count: int = 3, size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=generator), torch.randint(0, 3, (size,), generator=generator))
            for _ in range(count)]


def backbone_state(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    head = models.head_path(name) + "."
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(head)}


def changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    after = model.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def train_epoch(model: nn.Module, config: TrainConfig, epoch: int, optimizer, scheduler) -> None:
    set_stage(model, config, epoch)
    train_one_epoch(model, batches(seed=epoch), nn.CrossEntropyLoss(), optimizer, torch.device("cpu"),
                    torch.amp.GradScaler("cpu", enabled=False), None, Meter(), scheduler=scheduler)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_two_stages_keep_the_backbone_and_its_batchnorm_statistics_then_train_them(name):
    """Head epochs change the head only: no backbone weight and no BatchNorm running statistic moves
    (the backbone runs in eval mode). Then the whole network trains, statistics included."""
    torch.manual_seed(0)
    config = TrainConfig(model=name, freeze="none", head_epochs=1, epochs=2, lr=0.01, backbone_lr_scale=0.1)
    model = models.create_model(name, 3)
    optimizer = job._make_optimizer(config, param_groups(model, config))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factors(config, steps_per_epoch=3))
    before = backbone_state(model, name)
    head_before = {k: v.clone() for k, v in models.head_module(model, name).state_dict().items()}

    train_epoch(model, config, 1, optimizer, scheduler)
    assert changed(before, model) == set()
    assert any(not torch.equal(v, models.head_module(model, name).state_dict()[k]) for k, v in head_before.items())

    train_epoch(model, config, 2, optimizer, scheduler)
    moved = changed(before, model)
    assert any(k.endswith("running_mean") for k in moved) and any(k.endswith("weight") for k in moved)


def test_freeze_backbone_keeps_batchnorm_in_eval_mode_every_epoch():
    config = TrainConfig(model="resnet18", freeze="backbone", epochs=3)
    model = models.create_model("resnet18", 3)
    for epoch in (1, 2, 3):
        assert set_stage(model, config, epoch)
        assert not model.bn1.training and not model.layer4[1].bn2.training
        assert model.fc.training and all(p.requires_grad for p in model.fc.parameters())
        assert not any(p.requires_grad for p in model.layer1.parameters())


def test_backbone_learns_at_a_fraction_of_the_rate():
    config = TrainConfig(model="resnet18", freeze="none", lr=0.01, backbone_lr_scale=0.25)
    model = models.create_model("resnet18", 3)
    head, backbone = param_groups(model, config)
    assert (head["lr"], backbone["lr"]) == (0.01, 0.0025)
    assert {id(p) for p in head["params"]} == {id(p) for p in model.fc.parameters()}
    assert len(head["params"]) + len(backbone["params"]) == len(list(model.parameters()))
    assert param_groups(model, TrainConfig(model="resnet18", freeze="backbone"))[0]["params"] == head["params"]
    assert len(param_groups(model, TrainConfig(model="resnet18", freeze="backbone"))) == 1


def test_warmup_then_cosine_for_each_group():
    """10 steps an epoch, 4 epochs, 1 head epoch, 1 warm-up epoch: worked out by hand."""
    config = TrainConfig(model="resnet18", freeze="none", epochs=4, head_epochs=1, warmup_epochs=1)
    head, backbone = lr_factors(config, steps_per_epoch=10)
    cosine = [0.5 * (1 + math.cos(math.pi * s / 40)) for s in range(40)]
    assert head(0) == pytest.approx(0.1 * cosine[0])         # warm-up step 1 of 10
    assert head(9) == pytest.approx(1.0 * cosine[9])         # warm-up done
    assert head(25) == pytest.approx(cosine[25])
    assert backbone(5) == 0.0                                 # still frozen (head epoch)
    assert backbone(10) == pytest.approx(0.1 * cosine[10])    # its own warm-up starts with stage 2
    assert backbone(19) == pytest.approx(cosine[19])
    assert backbone(39) == pytest.approx(cosine[39]) and cosine[39] < 0.01
    flat = TrainConfig(model="resnet18", lr_scheduler="none")
    assert [lr_factors(flat, 10)[0](s) for s in (0, 17, 49)] == [1.0, 1.0, 1.0]


def test_balanced_class_weights_are_scikit_learns():
    targets = torch.tensor([0] * 26 + [1] * 77 + [2] * 40 + [3] * 26)  # dogImages' extremes per class
    expected = compute_class_weight("balanced", classes=np.arange(4), y=targets.numpy())
    np.testing.assert_allclose(class_weights(targets, 4).numpy(), expected, rtol=1e-6)
    assert class_weights(torch.tensor([0, 0, 1]), 3).tolist() == pytest.approx([0.5, 1.0, 0.0])


@pytest.mark.parametrize("hyperparameters, hidden", [
    ({}, ()),
    ({"head-hidden": "512"}, (512,)),
    ({"head-hidden": "512, 256", "head-activation": "gelu"}, (512, 256)),
])
def test_head_hidden_parses(hyperparameters, hidden):
    assert TrainConfig.from_hyperparameters(hyperparameters).hidden_sizes == hidden


@pytest.mark.parametrize("key, value", [
    ("head-hidden", "512,abc"), ("head-hidden", "0"), ("head-activation", "tanh"), ("head-epochs", "-1"),
    ("backbone-lr-scale", "0"), ("backbone-lr-scale", "2"), ("warmup-epochs", "-1"),
    ("class-weighting", "inverse"), ("model", "timm/no_such_model"),
])
def test_bad_recipe_hyperparameters_name_themselves(key, value):
    with pytest.raises(ValueError, match=key):
        TrainConfig.from_hyperparameters({key: value})


def test_image_size_defaults_to_the_models_pretrained_input():
    assert TrainConfig(model="resnet18").image_size == 224
    assert TrainConfig(model="timm/tf_efficientnet_b1.in1k").image_size == 240  # its pretrained config
    assert TrainConfig(model="timm/tf_efficientnet_b1.in1k", image_size=96).image_size == 96


def test_spec_rebuilds_an_mlp_head(tmp_path):
    model = models.create_model("resnet18", 3, dropout=0.2, head_hidden=(16, 8), head_activation="gelu")
    spec = artifacts.ModelSpec(arch="resnet18", num_classes=3, class_names=["a", "b", "c"], labels=["a", "b", "c"],
                               image_size=32, resize_size=37, mean=[0.5] * 3, std=[0.5] * 3, dropout=0.2,
                               head_hidden=[16, 8], head_activation="gelu")
    artifacts.save_model(tmp_path, model.state_dict(), spec)
    state, loaded = artifacts.load_model(tmp_path)
    rebuilt = loaded.create_model()
    rebuilt.load_state_dict(state)  # strict: the same layers
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


@pytest.mark.parametrize("weighting, targets, expected", [
    ("balanced", [0, 0, 0, 1], [4 / 9, 4 / 3, 0.0]),  # n / (classes x count): 4 / (3 x 3), 4 / (3 x 1); none of 2
    ("none", [0, 0, 0, 1], None),
])
def test_the_training_loss_weighs_classes_when_asked(weighting, targets, expected):
    criterion = job._criterion(TrainConfig(class_weighting=weighting, label_smoothing=0.1), targets, 3,
                               torch.device("cpu"))
    assert criterion.label_smoothing == 0.1
    assert (criterion.weight is None) if expected is None else criterion.weight.tolist() == pytest.approx(expected)
