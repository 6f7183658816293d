"""The registry of torchvision backbones, each given a new classification head.

Example:
    >>> model = create_model("resnet18", num_classes=133, dropout=0.2)
    >>> model(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 133])
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Arch:
    builder: Callable[..., nn.Module]   # torchvision.models.<name>
    weights: torchvision.models.WeightsEnum  # the ImageNet weights used for pretrained=True
    head: str                           # dotted path of the final nn.Linear to replace
    # dotted path of the module whose output is the last spatial feature map, before the global
    # pooling (stride 32: 7x7 at 224 px): Grad-CAM's layer (image_classifier.explain)
    feature_map: str


# mapping of model names to their torchvision builder, ImageNet weights, head module and last feature map.
# ResNets: `layer4`, the last residual stage. The others: `features`, the whole feature extractor,
# whose output is its last block's (a 1x1 conv to 1280/960 channels on MobileNets and
# EfficientNet, the last stage on ConvNeXt), the map the classifier pools.
_MODELS: dict[str, _Arch] = {
    "resnet18": _Arch(torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1, "fc", "layer4"),
    "resnet34": _Arch(torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1, "fc", "layer4"),
    "resnet50": _Arch(torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V2, "fc", "layer4"),
    "resnet101": _Arch(torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V2,
                       "fc", "layer4"),
    "mobilenet_v2": _Arch(torchvision.models.mobilenet_v2,
                          torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V2, "classifier.1", "features"),
    "mobilenet_v3_large": _Arch(torchvision.models.mobilenet_v3_large,
                                torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V2,
                                "classifier.3", "features"),
    "efficientnet_b0": _Arch(torchvision.models.efficientnet_b0,
                             torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1, "classifier.1", "features"),
    "convnext_tiny": _Arch(torchvision.models.convnext_tiny,
                           torchvision.models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1, "classifier.2", "features"),
}

MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)


class PretrainedWeightsUnavailable(RuntimeError):
    """None of the three sources of ImageNet weights could provide them."""


def _arch(name: str) -> _Arch:
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}") from None


def weights_filename(name: str) -> str:
    """The file name torchvision gives `name`'s ImageNet weights, e.g. `resnet18-f37072fd.pth`."""
    return os.path.basename(_arch(name).weights.url)


def create_model(name: str, num_classes: int, dropout: float = 0.0,
                 pretrained_state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Build a torchvision backbone with a new head of `num_classes` outputs.

    The backbone's final Linear layer is replaced by `Sequential(Dropout(dropout),
    Linear(in_features, num_classes))`, reachable as `model.<head path>` (for instance
    `model.fc` on ResNets). The model maps float32 images (N, 3, H, W), normalised with
    the ImageNet mean/std, to logits (N, num_classes).

    Args:
        name: one of `MODEL_NAMES`.
        num_classes: outputs of the new head, >= 1.
        dropout: dropout probability before the new Linear layer.
        pretrained_state_dict: ImageNet weights (the torchvision model's own state_dict,
            with its 1000-class head) loaded before the head is replaced; None = random init.

    Raises:
        ValueError: unknown `name` (the message lists the valid ones) or num_classes < 1.
        RuntimeError: `pretrained_state_dict` does not fit the architecture.
    """
    arch = _arch(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = arch.builder(weights=None)
    if pretrained_state_dict is not None:
        model.load_state_dict(pretrained_state_dict)
    parent_path, _, attr = arch.head.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Sequential(nn.Dropout(dropout), nn.Linear(old.in_features, num_classes)))
    return model


def head_path(name: str) -> str:
    """The dotted path of `name`'s classification head, e.g. `fc` on ResNets."""
    return _arch(name).head


def head_module(model: nn.Module, name: str) -> nn.Module:
    """The new classification head of a model built by `create_model(name, ...)`."""
    return model.get_submodule(_arch(name).head)


def feature_map_path(name: str) -> str:
    """The dotted path of the module whose output is `name`'s last spatial feature map
    (N, C, H/32, W/32), before the global pooling: `layer4` on ResNets, `features` on the others."""
    return _arch(name).feature_map


def load_pretrained_state_dict(name: str, channel_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """Find torchvision's ImageNet weights for `name`, always with `torch.load(weights_only=True)`.

    Sources, in order:
      1. the `pretrained` channel: a `.pth` file in `channel_dir` (the one named like
         torchvision's file, e.g. `resnet18-f37072fd.pth`, or the only `.pth` there);
      2. the torch hub cache: `$TORCH_HOME/hub/checkpoints/<torchvision's file name>`;
      3. torchvision's download from download.pytorch.org (hash checked), into that cache.

    Raises:
        PretrainedWeightsUnavailable: no source had them; the message names all three.
    """
    arch = _arch(name)
    filename = weights_filename(name)
    if channel_dir is not None and channel_dir.is_dir():
        candidates = sorted(channel_dir.rglob("*.pth"))
        named = [p for p in candidates if p.name == filename]
        chosen = named[0] if named else (candidates[0] if len(candidates) == 1 else None)
        if chosen is not None:
            logger.info("pretrained weights for %s: from the pretrained channel (%s)", name, chosen)
            return torch.load(chosen, map_location="cpu", weights_only=True)
        if candidates:
            raise PretrainedWeightsUnavailable(
                f"the pretrained channel holds {len(candidates)} .pth files and none is named "
                f"{filename}: keep one, or name the right one {filename}")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        logger.info("pretrained weights for %s: from the torch hub cache (%s)", name, cached)
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        logger.info("pretrained weights for %s: downloading %s", name, arch.weights.url)
        return arch.weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # network errors come in many classes (URLError, OSError, HTTPError, ...)
        raise PretrainedWeightsUnavailable(
            f"no ImageNet weights for {name}: give them in a 'pretrained' channel holding "
            f"{filename} (a torchvision state_dict), or put that file in the torch hub cache "
            f"({cached}, set TORCH_HOME), or allow the download from {arch.weights.url} "
            f"(it failed: {exc}); or set pretrained=false") from exc
