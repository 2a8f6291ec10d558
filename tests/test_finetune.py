import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reprotune.data.dataconfig import TINY_TEST
from reprotune.modalities.image import training_data as image_training_data
from reprotune.models.backbones import load_backbone
from reprotune.models.classifier import Classifier
from reprotune.pipeline.params import Backbone as BackboneParams
from reprotune.training import finetuning
from reprotune.training import loop as training
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
    names = finetuning.trainable_backbone_names(backbone, strategy, last_n=2)
    assert names == {
        n for group in backbone.layer_groups[len(backbone.layer_groups) - groups :] for n in group
    }


def test_gradual_unfreezes_after_its_frozen_epochs(tiny_params):
    settings = tiny_params.finetune.model_copy(update={"strategy": "gradual", "gradual_frozen_epochs": 2})
    assert [finetuning.phase_strategy(settings, e) for e in (1, 2, 3, 4)] == [
        "frozen",
        "frozen",
        "full",
        "full",
    ]


def test_layer_decay_lowers_the_rate_away_from_the_head(tiny_params):
    backbone, model = tiny_classifier()
    settings = tiny_params.finetune.model_copy(
        update={"lr": 1.0, "backbone_lr_factor": 0.5, "layer_decay": 0.5}
    )
    all_names = finetuning.trainable_backbone_names(backbone, "full", 1)
    groups = finetuning.parameter_groups(model, backbone, settings, all_names)
    rate_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert rate_of[id(model.head.weight)] == 1.0
    assert rate_of[id(model.backbone.blocks[2][0].weight)] == 0.5  # the last group: factor only
    assert rate_of[id(model.backbone.stem[0].weight)] == 0.5 * 0.5**3  # three groups further from the head


# Per strategy: the backbone blocks whose weights train (tiny net: stem, blocks.0, blocks.1, blocks.2).
TRAINING_BLOCKS = {"frozen": [], "last_n": ["blocks.2"], "full": ["stem", "blocks.0", "blocks.1", "blocks.2"]}


@pytest.mark.parametrize("strategy", list(TRAINING_BLOCKS))
@pytest.mark.parametrize("freeze_bn_stats", [False, True])
def test_one_step_changes_only_what_trains(strategy, freeze_bn_stats, tiny_params):
    torch.manual_seed(0)
    backbone, model = tiny_classifier()
    trainable = finetuning.trainable_backbone_names(backbone, strategy, 1)
    finetuning.freeze(model, trainable)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = tiny_params.finetune.model_copy(update={"lr": 0.1, "backbone_lr_factor": 1.0})
    optimizer = torch.optim.AdamW(finetuning.parameter_groups(model, backbone, settings, trainable))
    training.train_mode(model, freeze_bn_stats)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    trained = tuple(f"backbone.{block}." for block in TRAINING_BLOCKS[strategy])
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        is_bn_statistic = "running_" in name
        if name.startswith("head.") or (name.startswith(trained) and not is_bn_statistic):
            assert not torch.equal(before[name], tensor), f"{name} should have changed"
        elif name.startswith(trained) and is_bn_statistic and not freeze_bn_stats:
            assert not torch.equal(before[name], tensor), (
                f"{name}: a training BatchNorm updates its statistics"
            )
        else:
            assert torch.equal(before[name], tensor), f"{name} should be bit-identical"


def test_no_weight_decay_on_norms_and_biases(tiny_params):
    backbone, model = tiny_classifier()
    names = finetuning.trainable_backbone_names(backbone, "full", 1)
    finetuning.freeze(model, names)
    for group in finetuning.parameter_groups(model, backbone, tiny_params.finetune, names):
        assert all((p.ndim > 1) == (group["weight_decay"] > 0) for p in group["params"])


def test_warmup_then_cosine():
    factor = training.warmup_cosine(warmup_steps=2, total_steps=10)
    assert [factor(0), factor(1)] == [0.5, 1.0]
    assert (
        factor(2) == pytest.approx(1.0)
        and factor(6) == pytest.approx(0.5)
        and factor(10) == pytest.approx(0.0)
    )


def prepare(params, size: tuple[int, int] = (40, 40)) -> None:
    make_class_folder(Path(params.paths.raw), per_class=10, size=size)
    for stage in (ingest.ingest, clean.clean, split.split, featurize.featurize, train_head.train_head):
        stage(params)


def with_finetune(params, **changes):
    return params.model_copy(update={"finetune": params.finetune.model_copy(update=changes)})


def test_stage_starts_from_the_probe_and_keeps_the_best_epoch(tiny_params):
    prepare(tiny_params)
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
    assert not Path(still.paths.checkpoints, "finetune").exists()  # spent once the run finished


def test_scratch_head_is_not_the_probe(tiny_params):
    prepare(tiny_params)
    scratch = with_finetune(tiny_params, head_init="scratch", lr=1e-12)
    finetune.finetune(scratch)
    saved = load_file(Path(scratch.paths.finetuned) / "model.safetensors")
    probe = load_file(Path(scratch.paths.head) / "head.safetensors")
    assert not torch.equal(saved["head.weight"], probe["weight"])


def test_interrupted_run_resumes_to_the_same_weights(tiny_params):
    """Ctrl-C during an epoch after gradual's unfreezing; the next run resumes and ends bit-identical.
    The images (64 x 56) are larger than the tiny backbone's training side (48), so training reads copies."""
    prepare(tiny_params, size=(64, 56))
    params = with_finetune(
        tiny_params,
        strategy="gradual",
        gradual_frozen_epochs=1,
        epochs=4,
        patience=10,
        lr=0.01,
        optimizer="sgd",
        augment=tiny_params.finetune.augment.model_copy(update={"mixup": 0.4}),
    )
    finetune.finetune(params)
    finetuned = Path(params.paths.finetuned)
    reference = load_file(finetuned / "model.safetensors")
    reference_history = (Path(params.paths.reports) / "finetune_history.csv").read_text()

    def interrupt(epoch: int, batch: int) -> None:
        if (epoch, batch) == (3, 1):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune.finetune(params, on_batch=interrupt)
    checkpoint = Path(params.paths.checkpoints, "finetune")
    assert json.loads((checkpoint / "state.json").read_text())["progress"]["epoch"] == 2
    finetune.finetune(params)  # resumes after epoch 2
    resumed = load_file(finetuned / "model.safetensors")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert (Path(params.paths.reports) / "finetune_history.csv").read_text() == reference_history


def test_training_images_are_decoded_once_per_run(tiny_params):
    """Images larger than the training side get one copy at exactly that side, made once and reused by a
    resumed run; smaller ones are read from their files; the copies go when the run finishes."""
    from PIL import Image

    from reprotune.data.resized import NO_COPY
    from reprotune.pipeline.layout import Layout

    prepare(tiny_params)
    noisy = Image.effect_noise((120, 90), 40).convert("RGB")
    noisy.save(Path(tiny_params.paths.raw) / "red" / "large.jpg", quality=95)
    for stage in (ingest.ingest, clean.clean, split.split):
        stage(tiny_params)
    layout = Layout(tiny_params.paths)
    rows = layout.read_manifest(layout.split_manifest, {"label": str})
    data, augment = load_backbone(tiny_params.backbone).data, tiny_params.finetune.augment
    side = data.train_decode_side(augment)
    copies, entries = image_training_data.training_copies(
        layout, rows, data, augment, (255, 255, 255), rank=0
    )
    made = copies.path.stat().st_mtime_ns
    for name, entry in zip(rows["path"], entries, strict=True):
        if name.endswith("large.jpg"):
            assert min(copies.image(entry).size) == side
        else:
            assert entry == NO_COPY  # 40 px: below the side
    again, _ = image_training_data.training_copies(layout, rows, data, augment, (255, 255, 255), rank=0)
    assert again.path == copies.path and again.path.stat().st_mtime_ns == made

    for stage in (featurize.featurize, train_head.train_head, finetune.finetune):
        stage(tiny_params)
    assert not list(Path(tiny_params.paths.checkpoints).glob("train-copies-*"))


def test_a_checkpoint_from_other_params_is_not_resumed(tiny_params):
    prepare(tiny_params)
    params = with_finetune(tiny_params, epochs=2, patience=10)

    def interrupt(epoch: int, batch: int) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune.finetune(params, on_batch=interrupt)
    changed = with_finetune(params, lr=params.finetune.lr * 2)
    finetune.finetune(changed)
    history = (Path(changed.paths.reports) / "finetune_history.csv").read_text().splitlines()
    assert len(history) == 3  # header and both epochs: trained from the start, not resumed
    first_run_epoch_1 = json.loads((Path(changed.paths.finetuned) / "finetune.json").read_text())
    assert first_run_epoch_1["epochs_run"] == 2


@pytest.mark.e2e
@pytest.mark.slow  # stress tier (16 s) for CI's 15 minutes; CI keeps featurize's torchrun test
def test_torchrun_two_cpu_processes(tiny_params, tmp_path):
    """Data-parallel on CPU (gloo): one process writes, and the result is a normal finetune output."""
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT

    prepare(tiny_params)
    raw = tiny_params.model_dump(mode="json")
    raw["finetune"].update(epochs=2, batch_size=8)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    # Its own process group, so that a hang kills torchrun's workers too, not only torchrun.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "stages.finetune",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, stderr[-3000:]
    summary = json.loads((Path(tiny_params.paths.finetuned) / "finetune.json").read_text())
    assert summary["processes"] == 2 and summary["epochs_run"] == 2
    assert load_file(Path(tiny_params.paths.finetuned) / "model.safetensors")["head.weight"].shape == (3, 32)


def torchrun(arguments: list[str], cwd: Path, stage: str = "finetune") -> subprocess.Popen:
    """`torchrun <arguments> -m stages.<stage>` in its own process group (a hang kills its workers too);
    gloo and the rendezvous on the loopback only."""
    from tests.conftest import ROOT

    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *arguments, "-m", f"stages.{stage}"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(processes: list[subprocess.Popen], timeout: float = 300) -> None:
    try:
        outcomes = [process.communicate(timeout=timeout) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    for process, (_, stderr) in zip(processes, outcomes, strict=True):
        assert process.returncode == 0, stderr[-3000:]


@pytest.mark.e2e
@pytest.mark.slow  # CI's time: two torchrun processes on one node stay in the full suite
def test_two_nodes_fine_tune_to_the_same_weights_as_two_processes_on_one(tiny_params, tmp_path):
    """Multi-node torchrun as on real machines (c10d rendezvous at one node's address), here two separate
    torchrun agents on the loopback, one process each: the same weights, bit for bit, as the single-node run
    with two processes."""
    import yaml

    from tests.test_pipeline import free_port

    prepare(tiny_params)
    raw = tiny_params.model_dump(mode="json")
    raw["finetune"].update(epochs=2, batch_size=8)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    weights = Path(tiny_params.paths.finetuned) / "model.safetensors"

    finish([torchrun(["--standalone", "--nproc-per-node", "2"], tmp_path)])
    single_node = weights.read_bytes()
    weights.unlink()

    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        torchrun(
            [
                "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "reprotune-test",
                "--local-addr", "127.0.0.1",
            ],
            tmp_path,
        )
        for rank in (0, 1)
    ]  # fmt: skip
    finish(nodes)
    summary = json.loads((Path(tiny_params.paths.finetuned) / "finetune.json").read_text())
    assert summary["processes"] == 2 and summary["epochs_run"] == 2
    assert weights.read_bytes() == single_node
