"""Tests for the model registry: forward passes, new heads, and the three sources of pretrained weights."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from image_classifier.models import (
    MODEL_NAMES,
    PretrainedWeightsUnavailable,
    create_model,
    head_module,
    load_pretrained_state_dict,
    weights_filename,
)

RESNET18_FILE = "resnet18-f37072fd.pth"
RESNET18_URL = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url


def offline(where: str):
    def fail(*args, **kwargs):
        raise urllib.error.URLError(f"network disabled in tests ({where})")
    return fail


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Every test runs with an empty TORCH_HOME and downloads failing, whatever else it patches."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # as if torch.hub.set_dir had never been called
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline("download_url_to_file"))


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1234)
    return torchvision.models.resnet18(weights=None).state_dict()


def assert_same_state(loaded: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    assert list(loaded) == list(saved)
    for key, tensor in saved.items():
        assert torch.equal(loaded[key], tensor), key


# --- registry ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_gives_logits_through_the_new_head(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, dropout=0.1).eval()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float32)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 7) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()

    head = head_module(model, name)
    assert isinstance(head, nn.Sequential) and len(head) == 2
    assert isinstance(head[0], nn.Dropout) and head[0].p == 0.1
    assert isinstance(head[1], nn.Linear) and head[1].out_features == 7
    with torch.no_grad():  # the head returned is the one the model uses
        head[1].weight.zero_()
        head[1].bias.copy_(torch.arange(7.0))
        assert torch.equal(model(x), torch.arange(7.0).expand(2, 7))


def test_registry_names():
    assert MODEL_NAMES == ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2",
                           "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "efficientnet_lite0")


@pytest.mark.parametrize("call", [
    lambda: create_model("vgg16", 3),
    lambda: weights_filename("vgg16"),
    lambda: head_module(nn.Linear(1, 1), "vgg16"),
    lambda: load_pretrained_state_dict("vgg16"),
])
def test_unknown_model_lists_the_valid_names(call):
    with pytest.raises(ValueError, match="vgg16") as info:
        call()
    for name in MODEL_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("num_classes", [0, -1])
def test_num_classes_must_be_positive(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet18", num_classes)


TORCHVISION_NAMES = [name for name in MODEL_NAMES if name != "efficientnet_lite0"]


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_weights_filename_is_torchvisions(name):
    filename = weights_filename(name)
    assert filename.endswith(".pth") and filename.startswith(name.split("_")[0])
    assert torchvision.models.get_model_weights(name).DEFAULT.url.endswith("/" + filename)


def test_weights_filename_resnet18():
    assert weights_filename("resnet18") == RESNET18_FILE


def test_pretrained_state_dict_ends_up_in_the_backbone(resnet18_state):
    torch.manual_seed(99)
    model = create_model("resnet18", 5, dropout=0.2, pretrained_state_dict=resnet18_state)
    state = model.state_dict()
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.running_var", "bn1.bias"):
        assert torch.equal(state[key], resnet18_state[key]), key
    assert model.fc[1].weight.shape == (5, 512)
    torch.manual_seed(99)
    scratch = create_model("resnet18", 5)
    assert not torch.equal(scratch.state_dict()["layer1.0.conv1.weight"], resnet18_state["layer1.0.conv1.weight"])


def test_pretrained_state_dict_that_does_not_fit_raises(resnet18_state):
    incomplete = {k: v for k, v in resnet18_state.items() if k != "layer1.0.conv1.weight"}
    with pytest.raises(RuntimeError):
        create_model("resnet18", 5, pretrained_state_dict=incomplete)


# --- source 1: the pretrained channel ---------------------------------------------------------

@pytest.mark.parametrize("files", [
    {RESNET18_FILE: "real"},
    {"my-imagenet-weights.pth": "real"},
    {RESNET18_FILE: "real", "decoy.pth": "decoy"},
    {"a_decoy.pth": "decoy", "nested/dir/" + RESNET18_FILE: "real", "z_decoy.pth": "decoy"},
])
def test_weights_from_the_pretrained_channel(tmp_path, resnet18_state, files):
    channel = tmp_path / "input" / "data" / "pretrained"
    decoy = {"fc.weight": torch.zeros(2, 2)}
    for name, kind in files.items():
        (channel / name).parent.mkdir(parents=True, exist_ok=True)
        torch.save(resnet18_state if kind == "real" else decoy, channel / name)
    (channel / "README.txt").write_text("not weights")
    loaded = load_pretrained_state_dict("resnet18", channel)
    assert_same_state(loaded, resnet18_state)
    assert create_model("resnet18", 3, pretrained_state_dict=loaded) is not None


def test_two_pth_files_neither_named_right(tmp_path):
    channel = tmp_path / "pretrained"
    channel.mkdir()
    for name in ("one.pth", "two.pth"):
        torch.save({"x": torch.zeros(1)}, channel / name)
    with pytest.raises(PretrainedWeightsUnavailable, match=RESNET18_FILE):
        load_pretrained_state_dict("resnet18", channel)


# --- source 2: the torch hub cache ------------------------------------------------------------

@pytest.mark.parametrize("channel", [None, "missing", "empty"])
def test_weights_from_the_torch_hub_cache(tmp_path, monkeypatch, resnet18_state, channel):
    torch_home = tmp_path / "elsewhere" / "torch"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    assert Path(torch.hub.get_dir()) == torch_home / "hub"  # read from TORCH_HOME at call time
    cached = torch_home / "hub" / "checkpoints" / RESNET18_FILE
    cached.parent.mkdir(parents=True)
    torch.save(resnet18_state, cached)
    channel_dir = None if channel is None else tmp_path / channel
    if channel == "empty":
        channel_dir.mkdir()
    assert_same_state(load_pretrained_state_dict("resnet18", channel_dir), resnet18_state)


def test_pretrained_channel_wins_over_the_cache(tmp_path, resnet18_state):
    cached = Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE
    cached.parent.mkdir(parents=True)
    torch.save({"stale": torch.zeros(1)}, cached)
    channel = tmp_path / "pretrained"
    channel.mkdir()
    torch.save(resnet18_state, channel / RESNET18_FILE)
    assert_same_state(load_pretrained_state_dict("resnet18", channel), resnet18_state)


# --- source 3: the download -------------------------------------------------------------------

@pytest.mark.parametrize("patch", ["download_url_to_file", "torchvision loader", "weights.get_state_dict"])
@pytest.mark.parametrize("with_channel", [False, True])
def test_no_source_and_failing_download(tmp_path, monkeypatch, patch, with_channel):
    if patch == "torchvision loader":
        monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline(patch))
    elif patch == "weights.get_state_dict":
        monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", offline(patch))
    channel = tmp_path / "pretrained"
    channel.mkdir()
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        load_pretrained_state_dict("resnet18", channel if with_channel else None)
    message = str(info.value)
    assert "'pretrained' channel" in message and RESNET18_FILE in message
    assert "TORCH_HOME" in message and str(tmp_path / "torch_home") in message
    assert RESNET18_URL in message
    assert f"network disabled in tests ({patch})" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)
    assert not (tmp_path / "torch_home" / "hub" / "checkpoints" / RESNET18_FILE).exists()
