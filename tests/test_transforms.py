"""The torchvision transforms: output shapes, normalisation, center crop, resize size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from image_classifier.transforms import IMAGENET_MEAN, eval_transform, eval_view, resize_size, train_transform

RED, BLUE = (255, 0, 0), (0, 0, 255)

@pytest.mark.parametrize("size", [(50, 30), (30, 50), (300, 200), (8, 8)])
@pytest.mark.parametrize("image_size", [32, 64, 224])
@pytest.mark.parametrize("which", ["eval", "train", "train no flip"])
def test_transform_output_shape(size, image_size, which):
    transform = {"eval": lambda: eval_transform(image_size),
                 "train": lambda: train_transform(image_size),
                 "train no flip": lambda: train_transform(image_size, crop_scale_min=0.5, hflip_prob=0)}[which]()
    out = transform(Image.effect_noise(size, 40).convert("RGB"))
    assert out.shape == (3, image_size, image_size) and out.dtype == torch.float32


def test_eval_view_is_what_eval_transform_feeds_the_model():
    image = Image.effect_noise((300, 200), 40).convert("RGB")
    view = eval_view(64)(image)
    assert isinstance(view, Image.Image) and view.size == (64, 64)
    tensor = torch.from_numpy(np.asarray(view, dtype=np.float32)).permute(2, 0, 1) / 255
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.allclose(eval_transform(64)(image), (tensor - mean) / std, atol=1e-5)


def test_eval_transform_normalises_with_imagenet_statistics():
    mean_colour = tuple(round(m * 255) for m in IMAGENET_MEAN)
    out = eval_transform(32)(Image.new("RGB", (40, 60), mean_colour))
    assert out.abs().max() < 0.01
    white = eval_transform(32)(Image.new("RGB", (40, 60), (255, 255, 255)))
    assert torch.allclose(white[:, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224,
                                                        (1 - 0.406) / 0.225]), atol=1e-4)


def test_eval_transform_is_a_center_crop():
    image = Image.new("RGB", (64, 32), RED)
    image.paste(BLUE, (0, 0, 8, 32))  # a blue band on the left, outside the center crop
    out = eval_transform(16)(image)
    reference = eval_transform(16)(Image.new("RGB", (64, 32), RED))
    assert torch.allclose(out, reference)


@pytest.mark.parametrize("image_size, expected", [(224, 256), (32, 37), (64, 73), (299, 342), (384, 439)])
def test_resize_size(image_size, expected):
    assert resize_size(image_size) == expected


@pytest.mark.parametrize("image_size", [32, 64, 96, 224])
def test_center_view_is_torchvisions_resize_and_center_crop(image_size):
    """The server's view (Pillow alone) is torchvision's Resize then CenterCrop, pixel for pixel,
    on portrait, landscape, square, odd and already-sized images."""
    from PIL import Image
    from torchvision import transforms as T

    from image_classifier.images import center_view, resize_size

    rng = np.random.default_rng(image_size)
    reference = T.Compose([T.Resize(resize_size(image_size)), T.CenterCrop(image_size)])
    sizes = [(640, 427), (427, 640), (300, 300), (301, 199), (199, 301), (resize_size(image_size), 500),
             (image_size, image_size), (1000, resize_size(image_size) + 1), (17, 33)]
    for size in sizes:
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        expected = reference(image)
        assert center_view(image, image_size).size == expected.size == (image_size, image_size)
        np.testing.assert_array_equal(np.asarray(center_view(image, image_size)), np.asarray(expected))
