import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reprotune.backbones import TINY_TEST, Classifier, load_backbone
from reprotune.params import Backbone as BackboneParams
from stages import clean, featurize, finetune, ingest, split, train_head
from tests.conftest import make_class_folder


def tiny_classifier():
    backbone = load_backbone(
        BackboneParams(name=TINY_TEST, weights=None, input_size=None, channels_last=False)
    )
    return backbone, Classifier(backbone.model, backbone.num_features, 3)


@pytest.mark.parametrize(("strategy", "groups"), [("frozen", 0), ("last_n", 2), ("full", 4)])
def test_strategy_selects_layer_groups(strategy, groups):
    backbone, _ = tiny_classifier()
    names = finetune.trainable_backbone_names(backbone, strategy, last_n=2)
    assert names == {
        n for group in backbone.layer_groups[len(backbone.layer_groups) - groups :] for n in group
    }


@pytest.mark.parametrize("freeze_bn_stats", [False, True])
def test_one_step_changes_only_what_trains(freeze_bn_stats, tiny_params):
    torch.manual_seed(0)
    backbone, model = tiny_classifier()
    finetune.freeze(model, finetune.trainable_backbone_names(backbone, "last_n", 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = tiny_params.finetune.model_copy(update={"lr": 0.1, "backbone_lr_factor": 1.0})
    optimizer = torch.optim.AdamW(finetune.parameter_groups(model, settings))
    finetune.train_mode(model, freeze_bn_stats)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for name, tensor in after.items():
        trains = name.startswith(
            ("head.", "backbone.blocks.2.0.", "backbone.blocks.2.1.weight", "backbone.blocks.2.1.bias")
        )
        bn_stat = name.startswith("backbone.blocks.2.1.running")
        if trains or (bn_stat and not freeze_bn_stats):
            assert not torch.equal(before[name], tensor), f"{name} should have changed"
        elif not name.endswith("num_batches_tracked"):
            assert torch.equal(before[name], tensor), f"{name} should be bit-identical"


def test_no_weight_decay_on_norms_and_biases(tiny_params):
    backbone, model = tiny_classifier()
    finetune.freeze(model, finetune.trainable_backbone_names(backbone, "full", 1))
    for group in finetune.parameter_groups(model, tiny_params.finetune):
        assert all((p.ndim > 1) == (group["weight_decay"] > 0) for p in group["params"])


def test_warmup_then_cosine():
    factor = finetune.warmup_cosine(warmup_steps=2, total_steps=10)
    assert [factor(0), factor(1)] == [0.5, 1.0]
    assert (
        factor(2) == pytest.approx(1.0)
        and factor(6) == pytest.approx(0.5)
        and factor(10) == pytest.approx(0.0)
    )


def test_stage_starts_from_the_probe_and_keeps_the_best_epoch(tiny_params):
    make_class_folder(Path(tiny_params.paths.raw), per_class=10)
    for stage in (ingest.ingest, clean.clean, split.split, featurize.featurize, train_head.train_head):
        stage(tiny_params)
    # A learning rate too small to change any prediction: epoch 1 cannot beat epoch 0, so the saved model
    # must be the starting point, whose head is exactly train_head's.
    still = tiny_params.model_copy(update={"finetune": tiny_params.finetune.model_copy(update={"lr": 1e-12})})
    finetune.finetune(still)
    saved = load_file(Path(still.paths.finetuned) / "model.safetensors")
    probe = load_file(Path(still.paths.head) / "head.safetensors")
    assert torch.equal(saved["head.weight"], probe["weight"]) and torch.equal(
        saved["head.bias"], probe["bias"]
    )
    summary = json.loads((Path(still.paths.finetuned) / "finetune.json").read_text())
    assert summary["best_epoch"] == 0 and summary["epochs_run"] == 1
    with open(Path(still.paths.reports) / "finetune_history.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["epoch"] for r in rows] == ["1"] and float(rows[0]["train_loss"]) > 0
