"""adapt: AdaBN touches only BatchNorm statistics, CORAL is the identity between equal distributions, the
target folder is checked against the source, `method: none` changes nothing, each method runs."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ImageFilter, ImageOps
from safetensors.torch import load_file
from torch import nn

from reprotune.data.dataconfig import TINY_TEST
from reprotune.models.backbones import load_backbone
from reprotune.models.classifier import Classifier
from reprotune.pipeline import params as params_module
from reprotune.pipeline.params import Backbone as BackboneParams
from reprotune.training.loop import Placement
from stages import (
    adapt,
    baseline,
    clean,
    distill,
    evaluate,
    featurize,
    finetune,
    ingest,
    label_issues,
    leakage,
    learning_curve,
    split,
    train_head,
)
from tests.conftest import COLOURS, make_class_folder, noisy_image, tiny_params_raw

UPSTREAM = (
    ingest,
    clean,
    split,
    featurize,
    leakage,
    train_head,
    baseline,
    learning_curve,
    label_issues,
    finetune,
    distill,
)


def run(stages, params) -> None:
    for module in stages:
        getattr(module, module.__name__.split(".")[-1])(params)


def with_adapt(params, **changes):
    return params.model_copy(update={"adapt": params.adapt.model_copy(update=changes)})


def shifted(colour, seed):
    """A picture of the class colour as another camera would give it: inverted and blurred."""
    return ImageOps.invert(noisy_image(colour, seed)).filter(ImageFilter.GaussianBlur(1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny project trained up to adapt, shared by the tests below: each gives adapt its own target
    folder, and each runs adapt (and evaluate) itself before it reads their outputs."""
    params = params_module.validate(tiny_params_raw(tmp_path_factory.mktemp("adapt")))
    make_class_folder(Path(params.paths.raw), per_class=10)
    run(UPSTREAM, params)
    return params


@pytest.fixture
def project(trained, tmp_path):
    """The shared project with an empty target folder of this test's own."""
    (tmp_path / "target").mkdir()
    return trained.model_copy(
        update={"paths": trained.paths.model_copy(update={"target": str(tmp_path / "target")})}
    )


def fill_target(params, unlabeled: int = 4, test: int = 2) -> Path:
    folder = Path(params.paths.target)
    for index, (name, colour) in enumerate(COLOURS.items()):
        for n in range(test):
            (folder / "test" / name).mkdir(parents=True, exist_ok=True)
            shifted(colour, 9_000_000 + index * 1000 + n).save(folder / "test" / name / f"{n}.png")
        for n in range(unlabeled):
            (folder / "phone" / "day1").mkdir(parents=True, exist_ok=True)
            shifted(colour, 8_000_000 + index * 1000 + n).save(folder / "phone" / "day1" / f"{name}{n}.png")
    return folder


def tiny_classifier():
    backbone = load_backbone(BackboneParams(name=TINY_TEST, weights=None, input_size=32, channels_last=False))
    return Classifier(backbone.model, backbone.num_features, 3).eval()


def batches(seed: int, scale: float, shift: float):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(8, 3, 32, 32, generator=generator) * scale + shift, torch.zeros(8)) for _ in range(3)]


def test_adabn_changes_only_batchnorm_running_statistics():
    model = tiny_classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    target = batches(1, 3.0, -2.0)  # far from the statistics the network has
    adapt.adapt_batchnorm(model, target, Placement(torch.device("cpu"), False))
    after = model.state_dict()
    statistics = {k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert statistics and all(not torch.equal(before[k], after[k]) for k in statistics)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in statistics)
    assert not model.training
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # The statistics are those of all the target images, not of the last batch.
    with torch.no_grad():
        first = model.backbone.stem[0](torch.cat([images for images, _ in target]))
    assert torch.allclose(after["backbone.stem.1.running_mean"], first.mean(dim=(0, 2, 3)), atol=1e-5)


def test_coral_between_equal_distributions_is_the_identity():
    features = np.random.default_rng(0).normal(size=(300, 6)) @ np.random.default_rng(1).normal(size=(6, 6))
    assert np.allclose(adapt.coral(features, features, 1.0), features, atol=1e-8)


def test_coral_gives_the_source_the_target_s_covariance_and_mean():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(4000, 4)) * [1.0, 2.0, 0.5, 1.0]
    target = rng.normal(size=(4000, 4)) @ rng.normal(size=(4, 4)) + 3.0
    aligned = adapt.coral(source, target, 1e-9)
    assert np.allclose(np.cov(aligned, rowvar=False), np.cov(target, rowvar=False), atol=1e-6)
    assert np.allclose(aligned.mean(axis=0), target.mean(axis=0))


def test_target_losses_reward_confident_varied_predictions():
    confident = torch.eye(4).repeat(2, 1) * 20  # each image sure, the batch spread over the classes
    unsure = torch.zeros(8, 4)
    assert float(adapt.mean_entropy(confident)) < 1e-6 < float(adapt.mean_entropy(unsure))
    assert (
        float(adapt.minimum_class_confusion(confident)) < 0.01 < float(adapt.minimum_class_confusion(unsure))
    )


def test_target_aware_loss_is_cross_entropy_on_source_rows_plus_the_target_term():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, -1.0]], requires_grad=True)
    labels = torch.tensor([0, 1, adapt.UNLABELED, adapt.UNLABELED])
    criterion = nn.CrossEntropyLoss()
    model = nn.Identity()
    got = adapt.target_aware_loss(criterion, adapt.mean_entropy, 0.5)(model, logits, labels)
    expected = criterion(logits[:2], labels[:2]) + 0.5 * adapt.mean_entropy(logits[2:])
    assert torch.allclose(got, expected)
    assert torch.allclose(
        adapt.target_aware_loss(criterion, adapt.mean_entropy, 0.0)(model, logits, labels),
        expected - 0.5 * adapt.mean_entropy(logits[2:]),
    )


def test_the_target_folder_is_checked_and_overlaps_are_reported(project):
    params = with_adapt(project, method="coral")
    folder = fill_target(params)
    raw = Path(params.paths.raw)
    shutil.copy(raw / "red" / "001.png", folder / "phone" / "from-source.png")  # a source image, copied
    shutil.copy(folder / "test" / "green" / "0.png", folder / "phone" / "from-test.png")  # a test image twice
    (folder / "test" / "purple").mkdir()
    shifted((120, 0, 120), 1).save(folder / "test" / "purple" / "0.png")  # a class the source does not have
    (folder / "phone" / "notes.txt").write_text("not an image")
    before = sorted((p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file())

    run([adapt], params)
    record = json.loads(Path(params.paths.reports, "adapt.json").read_text())
    reasons = {Path(d["path"]).name: d["reason"] for d in record["target"]["dropped"]}
    assert reasons == {
        "from-source.png": "duplicate_of_source",
        "from-test.png": "duplicate_of_target_test",
        "0.png": "unknown_class",
        "notes.txt": "not_an_image",
    }
    assert record["target"]["unlabeled_images"] == 12 and record["target"]["test_images"] == 6
    assert sorted((p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file()) == before


def digest(folders) -> dict:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def test_method_none_changes_no_output(project):
    """With `adapt.method: none`, target images or not, every output of every stage is the same bytes."""
    assert project.adapt.method == "none"
    outputs = [project.paths.reports, project.paths.adapted, project.paths.finetuned, project.paths.head]
    run((adapt, evaluate), project)
    without_target = digest(outputs)
    fill_target(project)
    run((adapt, evaluate), project)
    assert digest(outputs) == without_target
    assert "adapt" not in json.loads(Path(project.paths.reports, "metrics.json").read_text())


@pytest.mark.e2e  # each method through adapt and evaluate: seconds each, in the stress tier for CI's time
@pytest.mark.slow
@pytest.mark.parametrize("method", ["adabn", "coral", "finetune"])
def test_each_method_is_measured_against_source_only(project, method):
    params = with_adapt(project, method=method)
    fill_target(params)
    run([adapt, evaluate], params)
    record = json.loads(Path(params.paths.reports, "adapt.json").read_text())
    expected = {"adabn": {"head", "finetune"}, "coral": {"head"}, "finetune": {"finetune"}}[method]
    adapted = {model for model, variants in record["models"].items() if "adapted" in variants}
    assert adapted == expected
    for model in expected:
        for variant in ("source_only", "adapted"):
            entry = record["models"][model][variant]
            assert set(entry["target_test"]) >= {"accuracy", "accuracy_ci_low", "macro_f1", "per_class_f1"}
            assert 0.0 <= entry["domain_accuracy"] <= 1.0
            assert sum(entry["predicted_on_target"].values()) == pytest.approx(1.0)
        assert Path(params.paths.adapted, f"{model}.safetensors").is_file()
    metrics = json.loads(Path(params.paths.reports, "metrics.json").read_text())
    assert f"{sorted(expected)[0]}_adapted" in metrics["adapt"]
    report = Path(params.paths.reports, "report.md").read_text()
    assert "## Domain adaptation" in report and "never used to train or choose" in report


@pytest.mark.e2e
def test_without_target_labels_the_report_says_adaptation_cannot_be_verified(project):
    params = with_adapt(project, method="adabn")
    fill_target(params, test=0)
    run([adapt, evaluate], params)
    report = Path(params.paths.reports, "report.md").read_text()
    assert "cannot be verified" in report and "target test accuracy" not in report
    saved = load_file(Path(params.paths.adapted, "head.safetensors"))
    assert "backbone.stem.1.running_mean" in saved
    assert not torch.equal(
        saved["head.weight"], load_file(Path(params.paths.head, "head.safetensors"))["weight"]
    )


def test_target_aware_fine_tune_resumes_to_the_same_weights(project):
    params = with_adapt(project, method="finetune")
    params = params.model_copy(
        update={"finetune": params.finetune.model_copy(update={"epochs": 3, "patience": 10, "lr": 0.01})}
    )
    fill_target(params)
    adapt.adapt(params)
    reference = load_file(Path(params.paths.adapted, "finetune.safetensors"))

    def interrupt(epoch: int, batch: int) -> None:
        if (epoch, batch) == (2, 1):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        adapt.adapt(params, on_batch=interrupt)
    assert Path(params.paths.checkpoints, "adapt", "state.json").is_file()
    adapt.adapt(params)
    resumed = load_file(Path(params.paths.adapted, "finetune.safetensors"))
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert not Path(params.paths.checkpoints, "adapt").exists()
