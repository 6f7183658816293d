"""Grad-CAM heat-maps for the registry's models, and overlays of them on the images they explain.

Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", https://arxiv.org/abs/1610.02391): the gradient of a class's
logit with respect to the last convolutional feature map, averaged over the map's positions,
weighs each channel of that map; the weighted sum over channels, through a ReLU, shows where
the evidence for the class lies. Computed with Captum's `LayerGradCam` and upsampled with
`LayerAttribution.interpolate` (https://captum.ai/api/layer.html#gradcam).

Example:
    >>> model = models.create_model("resnet18", num_classes=2).eval()
    >>> maps = gradcam(model, target_layer(model, "resnet18"), batch, torch.tensor([1]))
    >>> png_bytes(overlay(input_image(batch[0]), maps[0].numpy()))
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from PIL import Image
from torch import Tensor, nn

from image_classifier import models
from image_classifier.transforms import IMAGENET_MEAN, IMAGENET_STD, network_input

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # the first bytes of every PNG file
COLORMAP = "jet"  # blue (0: no evidence) through green and yellow to red (1: the most)


def target_layer(model: nn.Module, name: str) -> nn.Module:
    """The module whose output Grad-CAM weighs: `name`'s last convolutional feature map.

    `layer4` on ResNets; `features` on torchvision's MobileNets, EfficientNet and ConvNeXt, whose
    output is their last block's; timm's last `feature_info` module (`blocks.6` on
    EfficientNet-Lite0) (`models.feature_map_path`). Its output is (N, C, H/32, W/32), the last
    map with a spatial extent before the global pooling: 7x7 at 224 px, 2x2 at 64 px (at 32 px
    or less it is 1x1 and a heat-map says nothing about where).

    Args:
        model: a model built by `models.create_model(name, ...)`.
        name: its registry name, one of `models.MODEL_NAMES` or `timm/<model>`.

    Raises:
        ValueError: `name` is not a registry model (the message lists them).
        AttributeError: `model` is not a `name` model.
    """
    return model.get_submodule(models.feature_map_path(name))


def _check_gradcam_arguments(model: nn.Module, inputs: Tensor, targets: Tensor) -> None:
    if model.training:
        raise ValueError("the model is in training mode: call model.eval() first (dropout and batch "
                         "statistics would change the heat-map)")
    if inputs.ndim != 4 or inputs.shape[1] != 3 or inputs.dtype != torch.float32 or len(inputs) == 0:
        raise ValueError(f"inputs must be float32 (N, 3, H, W) with N >= 1, got {inputs.dtype} {tuple(inputs.shape)}")
    if targets.shape != (len(inputs),) or targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64 ({len(inputs)},), got {targets.dtype} {tuple(targets.shape)}")


FLAT = 1e-4  # a map whose values differ by less than this fraction of its largest is flat (rounding)


def _normalise(maps: Tensor) -> Tensor:
    """Each (H, W) map of (N, H, W) scaled to [0, 1] by its own min and max; a flat map becomes 0
    (upsampling a 1x1 map gives one value to float rounding: scaled, the rounding would show)."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values[:, None, None], flat.max(dim=1).values[:, None, None]
    span = high - low
    varies = span > FLAT * high
    return torch.where(varies, (maps - low) / torch.where(varies, span, torch.ones_like(span)), torch.zeros_like(maps))


def gradcam(model: nn.Module, layer: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """Grad-CAM heat-maps of `targets` at `layer`, at the input's size, each scaled to [0, 1].

    Captum's `LayerGradCam(model, layer).attribute(inputs, targets, relu_attributions=True)`
    (the paper's ReLU: only evidence for the class), upsampled bilinearly to (H, W) with
    `LayerAttribution.interpolate`, then each map min-max normalised: 1 where the evidence is
    strongest, 0 where it is weakest; a map with no evidence anywhere, or the same everywhere
    (a 1x1 feature map: inputs of 32 px or less), is all zero.

    Gradients are enabled here even when the caller runs under `torch.inference_mode()` or
    `torch.no_grad()`. They are taken with `torch.autograd.grad` with respect to the layer's
    output only: the parameters' `requires_grad` and `.grad` are left as they were (with
    `requires_grad` off, the forward pass records no graph before `layer`, which is cheaper).

    Args:
        model: an eager `nn.Module` in eval mode mapping (N, 3, H, W) to logits (N, classes).
        layer: the module of `model` to attribute to, usually `target_layer(model, name)`.
        inputs: float32 (N, 3, H, W) images, normalised as the model expects, on its device.
        targets: int64 (N,) the class index to explain for each image.

    Returns:
        float32 (N, H, W) heat-maps in [0, 1], on the inputs' device, without a graph.

    Raises:
        ValueError: the model is in training mode; `inputs` or `targets` are of the wrong
            shape or dtype; a target is not a class of the model.
    """
    _check_gradcam_arguments(model, inputs, targets)

    def forward(batch: Tensor) -> Tensor:
        logits = model(batch)
        bad = targets[(targets < 0) | (targets >= logits.shape[1])]
        if len(bad):
            raise ValueError(f"target class {int(bad[0])} is not a class of the model (0 to {logits.shape[1] - 1})")
        return logits

    # inference_mode(False) and clones: tensors made under inference mode cannot be saved for the backward pass
    with torch.inference_mode(False), torch.enable_grad():
        batch, targets = inputs.detach().clone(), targets.detach().clone()
        attributions = LayerGradCam(forward, layer).attribute(batch, target=targets, relu_attributions=True)
        maps = LayerAttribution.interpolate(attributions, tuple(inputs.shape[-2:]), "bilinear")
    return _normalise(maps.detach()[:, 0].float())


def input_image(tensor: Tensor | np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Image.Image:
    """The RGB image a normalised network input (3, H, W) shows: times `std`, plus `mean`,
    clipped to [0, 1], in 8 bits; (W, H) pixels. The inverse of `transforms.eval_transform`'s
    ToTensor + Normalize, to draw a heat-map on what the model saw."""
    array = tensor.detach().cpu().numpy() if isinstance(tensor, Tensor) else np.asarray(tensor)
    if array.ndim != 3 or array.shape[0] != 3:
        raise ValueError(f"a network input is (3, H, W), got {array.shape}")
    rgb = array.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return Image.fromarray(np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8))


@functools.cache
def _colours(colormap: str) -> np.ndarray:
    """(256, 3) uint8: matplotlib's `colormap` at 256 levels, for heat 0/255 to 255/255."""
    return np.round(matplotlib.colormaps[colormap](np.arange(256))[:, :3] * 255).astype(np.uint8)


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """`heatmap` in the "jet" colormap over `image`: (1 - alpha) x image + alpha x colours.

    Args:
        image: any Pillow image (converted to RGB).
        heatmap: float (h, w) in [0, 1], any size: resized bilinearly to the image's.
        alpha: the heat-map's weight, 0 (the image alone) to 1 (the colours alone).

    Returns:
        an RGB image of `image`'s size.

    Raises:
        ValueError: `heatmap` is not 2-D or holds values outside [0, 1] (NaN included),
            or `alpha` is outside [0, 1].
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise ValueError(f"heatmap must be 2-D (h, w), got shape {heatmap.shape}")
    if not (np.all(heatmap >= 0.0) and np.all(heatmap <= 1.0)):  # False for NaN too
        raise ValueError("heatmap values must lie in [0, 1]")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    rgb = image.convert("RGB")
    heat = np.asarray(Image.fromarray(heatmap).resize(rgb.size, Image.Resampling.BILINEAR))
    levels = np.round(np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)
    blended = (1.0 - alpha) * np.asarray(rgb, np.float32) + alpha * _colours(COLORMAP)[levels]
    return Image.fromarray(np.round(blended).astype(np.uint8))


def overlays(model: nn.Module, name: str, images: Sequence[Image.Image], classes: Sequence[int],
             mean=IMAGENET_MEAN, std=IMAGENET_STD) -> list[Image.Image]:
    """Each image with the Grad-CAM heat-map of its class drawn over it (`gradcam`, `overlay`).

    Args:
        model: an eager `name` model in eval mode (see `gradcam`); the images go to its device.
        name: its registry name (for `target_layer`).
        images: RGB Pillow images as the model sees them (resized and center-cropped by
            `transforms.eval_view`), all of one size.
        classes: the class index to explain for each image (e.g. its predicted class).
        mean, std: the per-channel normalisation the model expects (`transforms.network_input`).

    Returns:
        RGB images of the inputs' size, in the inputs' order.

    Raises:
        ValueError: no images, images of different sizes, as many classes as images not given,
            or what `gradcam` raises.
    """
    if not images or len({image.size for image in images}) != 1 or len(classes) != len(images):
        raise ValueError(f"overlays needs images of one size and a class for each: got sizes "
                         f"{sorted({image.size for image in images})} and {len(classes)} classes for {len(images)}")
    device = next(model.parameters()).device
    to_input = network_input(mean, std)
    inputs = torch.stack([to_input(image.convert("RGB")) for image in images]).to(device)
    maps = gradcam(model, target_layer(model, name), inputs, torch.tensor(list(classes), dtype=torch.int64,
                                                                           device=device))
    return [overlay(image, heatmap) for image, heatmap in zip(images, maps.cpu().numpy())]


def png_bytes(image: Image.Image) -> bytes:
    """`image` encoded as PNG (lossless)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
