"""Grad-CAM (`image_classifier.explain`): every registry model, the heat-map following the object, overlays."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from image_classifier import artifacts, explain, models
from image_classifier.transforms import eval_transform
from tests import patches


@pytest.fixture(scope="module")
def registry():
    """Name → an untrained registry model with 3 classes, in eval mode (built once: some take a second)."""
    torch.manual_seed(0)
    return {name: models.create_model(name, 3).eval() for name in models.MODEL_NAMES}


@pytest.fixture(scope="module")
def patch_model(patch_model_dir):
    state_dict, spec = artifacts.load_model(patch_model_dir)
    model = spec.create_model()
    model.load_state_dict(state_dict)
    return model.eval()


# --- the layer -------------------------------------------------------------------------

@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_target_layer_is_the_last_spatial_map(name):
    with torch.device("meta"):  # shapes only: no weights, no arithmetic
        model = models.create_model(name, 3).eval()
        shapes = []
        explain.target_layer(model, name).register_forward_hook(lambda module, args, out: shapes.append(out.shape))
        model(torch.zeros(1, 3, 224, 224))
    assert len(shapes) == 1 and len(shapes[0]) == 4
    assert shapes[0][-2:] == (7, 7)  # stride 32: spatial, and the last map before the pooling


def test_target_layer_of_an_unknown_model():
    with pytest.raises(ValueError, match="valid models"):
        explain.target_layer(torch.nn.Linear(1, 1), "vgg16")


# --- gradcam ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_gradcam_shapes_and_range(registry, name):
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    maps = explain.gradcam(registry[name], explain.target_layer(registry[name], name), inputs, torch.tensor([0, 2]))
    assert maps.shape == (2, 64, 64) and maps.dtype == torch.float32 and not maps.requires_grad
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    for heat in maps:  # each map scaled on its own: 1 at its peak, unless there is no evidence at all
        assert heat.max() == 1.0 or heat.max() == 0.0


def test_gradcam_is_the_papers_formula(registry):
    """Against Grad-CAM by hand (Selvaraju et al. 2017, eq. 1-2): channel weights = the class
    logit's gradient averaged over the map, ReLU of the weighted sum of the channels; then
    bilinear upsampling and min-max scaling. With the parameters frozen too, as the server has them."""
    model = registry["resnet18"]
    inputs, targets = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(3)), torch.tensor([2, 1])
    saved = {}
    handle = model.layer4.register_forward_hook(lambda module, args, out: saved.update(map=out))
    try:
        logits = model(inputs)
    finally:
        handle.remove()
    gradients, = torch.autograd.grad(logits[torch.arange(2), targets].sum(), saved["map"])
    cam = torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * saved["map"]).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=(96, 64), mode="bilinear")[:, 0].detach()
    low, high = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    expected = (cam - low) / (high - low)
    torch.testing.assert_close(explain.gradcam(model, model.layer4, inputs, targets), expected)
    model.requires_grad_(False)
    try:
        torch.testing.assert_close(explain.gradcam(model, model.layer4, inputs, targets), expected)
    finally:
        model.requires_grad_(True)


def test_gradcam_keeps_the_input_size_and_works_under_inference_mode(registry):
    model = registry["resnet18"]
    layer = explain.target_layer(model, "resnet18")
    inputs, targets = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(2)), torch.tensor([1, 0, 2])
    plain = explain.gradcam(model, layer, inputs, targets)
    assert plain.shape == (3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(explain.gradcam(model, layer, inputs, targets), plain)
    with torch.inference_mode():
        inference_inputs, inference_targets = inputs.clone(), targets.clone()  # inference tensors
        torch.testing.assert_close(explain.gradcam(model, layer, inference_inputs, inference_targets), plain)


def test_gradcam_leaves_the_parameters_as_they_were(registry):
    model = registry["resnet34"]
    parameters = list(model.parameters())
    for i, parameter in enumerate(parameters):
        parameter.requires_grad_(i % 2 == 0)
        parameter.grad = torch.full_like(parameter, 3.0) if i % 3 == 0 else None
    try:
        explain.gradcam(model, explain.target_layer(model, "resnet34"), torch.randn(1, 3, 64, 64), torch.tensor([1]))
        assert [p.requires_grad for p in parameters] == [i % 2 == 0 for i in range(len(parameters))]
        for i, parameter in enumerate(parameters):
            if i % 3 == 0:
                assert torch.equal(parameter.grad, torch.full_like(parameter, 3.0))
            else:
                assert parameter.grad is None
        assert not model.training
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)
            parameter.grad = None


def test_a_map_without_extent_stays_zero(registry):
    """At 32 px resnet18's last map is 1x1: the upsampled map is flat and says nothing, so it is 0."""
    model = registry["resnet18"]
    maps = explain.gradcam(model, explain.target_layer(model, "resnet18"), torch.randn(1, 3, 32, 32), torch.tensor([0]))
    assert maps.shape == (1, 32, 32) and torch.count_nonzero(maps) == 0


@pytest.mark.parametrize("inputs, targets, words", [
    (torch.zeros(1, 3, 64, 64), torch.tensor([3]), "target class 3 is not a class"),
    (torch.zeros(2, 3, 64, 64), torch.tensor([0, -1]), "target class -1"),
    (torch.zeros(1, 3, 64, 64), torch.tensor([0.0]), "targets must be int64"),
    (torch.zeros(2, 3, 64, 64), torch.tensor([0]), "targets must be int64 \\(2,\\)"),
    (torch.zeros(3, 64, 64), torch.tensor([0]), "inputs must be float32"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.float64), torch.tensor([0]), "inputs must be float32"),
    (torch.zeros(0, 3, 64, 64), torch.zeros(0, dtype=torch.int64), "N >= 1"),
])
def test_gradcam_refuses_bad_arguments(registry, inputs, targets, words):
    model = registry["resnet18"]
    with pytest.raises(ValueError, match=words):
        explain.gradcam(model, explain.target_layer(model, "resnet18"), inputs, targets)


def test_gradcam_refuses_a_model_in_training_mode(registry):
    model = registry["resnet18"]
    layer = explain.target_layer(model, "resnet18")
    with pytest.raises(ValueError, match="eval"):
        explain.gradcam(model.train(), layer, torch.zeros(1, 3, 64, 64), torch.tensor([0]))
    model.eval()


# --- the heat-map follows the object ---------------------------------------------------

@pytest.mark.slow  # trains the patch model (tests/patches.py), shared with tests/serving/test_server_explain.py
def test_the_heat_map_moves_with_the_patch(patch_model):
    """A network trained to find a bright patch: its Grad-CAM for "patch" peaks in the patch's quadrant."""
    layer = explain.target_layer(patch_model, "resnet18")
    images = np.stack([patches.patch_image(centre, seed=100 + i) for i, centre in enumerate(patches.CENTRES)])
    inputs = patches.to_input(images)
    with torch.inference_mode():
        assert patch_model(inputs).argmax(1).tolist() == [0] * len(images)  # all seen as "patch"
    maps = explain.gradcam(patch_model, layer, inputs, torch.zeros(len(images), dtype=torch.int64))
    for centre, heat in zip(patches.CENTRES, maps):
        y, x = np.unravel_index(int(heat.argmax()), heat.shape)
        assert patches.quadrant(x, y) == patches.quadrant(*centre), (centre, (x, y))
        column, row = patches.quadrant(*centre)
        half = patches.SIZE // 2
        inside = heat[row * half:(row + 1) * half, column * half:(column + 1) * half].mean()
        assert inside > 2 * heat.mean() - inside  # the patch's quadrant is hotter than the other three together


# --- overlays --------------------------------------------------------------------------

def jet(level: float) -> np.ndarray:
    return np.round(np.asarray(matplotlib.colormaps["jet"](level)[:3]) * 255)


def test_overlay_is_the_image_size_and_a_png():
    image = Image.fromarray(np.full((30, 50, 3), 200, np.uint8))  # 50 x 30
    heat = np.zeros((7, 7), np.float32)
    heat[0, 0] = 1.0
    drawn = explain.overlay(image, heat)
    assert drawn.mode == "RGB" and drawn.size == (50, 30)
    body = explain.png_bytes(drawn)
    assert body.startswith(explain.PNG_SIGNATURE)
    with Image.open(io.BytesIO(body)) as opened:
        assert opened.format == "PNG" and opened.size == (50, 30)
        pixels = np.asarray(opened.convert("RGB"), np.float32)
    np.testing.assert_allclose(pixels[0, 0], 0.5 * 200 + 0.5 * jet(1.0), atol=1)   # hot corner: red
    np.testing.assert_allclose(pixels[-1, -1], 0.5 * 200 + 0.5 * jet(0.0), atol=1)  # cold: blue


def test_overlay_alpha_and_grayscale_images():
    image = Image.fromarray(np.full((8, 8), 90, np.uint8))  # mode L
    heat = np.full((2, 2), 1.0)
    np.testing.assert_array_equal(np.asarray(explain.overlay(image, heat, alpha=0.0)), np.full((8, 8, 3), 90))
    np.testing.assert_allclose(np.asarray(explain.overlay(image, heat, alpha=1.0))[4, 4], jet(1.0), atol=1)


@pytest.mark.parametrize("heat, alpha, words", [
    (np.zeros((2, 2, 2)), 0.5, "2-D"),
    (np.zeros((0, 3)), 0.5, "2-D"),
    (np.full((2, 2), 1.5), 0.5, r"\[0, 1\]"),
    (np.full((2, 2), -0.1), 0.5, r"\[0, 1\]"),
    (np.full((2, 2), np.nan), 0.5, r"\[0, 1\]"),
    (np.zeros((2, 2)), 1.5, "alpha"),
])
def test_overlay_refuses(heat, alpha, words):
    with pytest.raises(ValueError, match=words):
        explain.overlay(Image.new("RGB", (4, 4)), heat, alpha)


def test_input_image_undoes_the_eval_transform():
    image = Image.fromarray(patches.patch_image((20, 30)))
    shown = explain.input_image(eval_transform(64)(image))
    assert shown.size == (64, 64) and shown.mode == "RGB"
    expected = np.asarray(image.resize((73, 73), Image.Resampling.BILINEAR).crop((4, 4, 68, 68)), np.int16)
    assert np.abs(np.asarray(shown, np.int16) - expected).mean() < 2  # resize + centre crop, de-normalised
    with pytest.raises(ValueError, match="3, H, W"):
        explain.input_image(torch.zeros(1, 3, 8, 8))


# --- overlays of images as the model sees them ----------------------------------------

@pytest.mark.slow  # the patch model
def test_overlays_are_gradcam_of_each_images_class_drawn_on_it(patch_model):
    images = [Image.fromarray(patches.patch_image(centre, seed=7)) for centre in patches.CENTRES[:3]]
    classes = [0, 1, 0]

    drawn = explain.overlays(patch_model, "resnet18", images, classes)

    maps = explain.gradcam(patch_model, explain.target_layer(patch_model, "resnet18"),
                           patches.to_input(np.stack([np.asarray(i) for i in images])), torch.tensor(classes))
    for image, heat, got in zip(images, maps.numpy(), drawn):
        assert got.size == image.size and got.mode == "RGB"
        assert np.abs(np.asarray(got, np.int16) - np.asarray(explain.overlay(image, heat), np.int16)).max() <= 1


@pytest.mark.parametrize("sizes, classes", [([], []), ([(8, 8), (9, 8)], [0, 0]), ([(8, 8)], [0, 1])])
def test_overlays_refuse_mixed_sizes_and_missing_classes(registry, sizes, classes):
    with pytest.raises(ValueError, match="one size and a class for each"):
        explain.overlays(registry["resnet18"], "resnet18", [Image.new("RGB", s) for s in sizes], classes)
