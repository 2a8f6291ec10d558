"""distill: the loss against its definition, one view for teacher and student, unlabelled images, resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from scipy.special import log_softmax, softmax

from reprotune.data.dataconfig import DataConfig
from reprotune.training import finetuning
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
from tests.conftest import ROOT, make_class_folder, noisy_image

UNLABELED = finetuning.UNLABELED


def reference_loss(student, teacher, labels, alpha, temperature, smoothing=0.0):
    """The definition, in numpy: alpha x CE (labelled rows, smoothed) + (1 - alpha) x T^2 x mean KL."""
    labelled = labels != UNLABELED
    classes = student.shape[1]
    if labelled.any():
        targets = np.full((labelled.sum(), classes), smoothing / classes)
        targets[np.arange(labelled.sum()), labels[labelled]] += 1 - smoothing
        ce = -(targets * log_softmax(student[labelled], axis=1)).sum(axis=1).mean()
    else:
        ce = 0.0
    p_teacher = softmax(teacher / temperature, axis=1)
    kl = (p_teacher * (np.log(p_teacher) - log_softmax(student / temperature, axis=1))).sum(axis=1).mean()
    return alpha * ce + (1 - alpha) * temperature**2 * kl


@pytest.mark.parametrize("alpha, temperature", [(0.5, 2.0), (0.0, 4.0), (1.0, 1.0), (0.3, 0.5)])
def test_loss_equals_its_definition_on_hand_made_logits(alpha, temperature):
    student = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 1.0, 4.0], [1.0, 1.0, -2.0]])
    teacher = np.array([[1.0, 0.0, 0.0], [3.0, -1.0, 0.5], [0.0, 0.0, 5.0], [-1.0, 2.0, 0.0]])
    labels = np.array([0, 2, UNLABELED, 1])
    got = distill.distillation_loss(
        torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), alpha, temperature, 0.1
    )
    assert float(got) == pytest.approx(
        reference_loss(student, teacher, labels, alpha, temperature, 0.1), rel=1e-6
    )


def test_unlabelled_rows_contribute_only_the_distillation_term():
    torch.manual_seed(0)
    student = torch.randn(6, 4, requires_grad=True)
    teacher = torch.randn(6, 4)
    labels = torch.tensor([0, 1, UNLABELED, 3, UNLABELED, 2])
    distill.distillation_loss(student, teacher, labels, 0.7, 3.0).backward()
    mixed_gradient = student.grad.clone()
    # The KD term alone, taken over the whole batch (its batch mean counts every row) ...
    student.grad = None
    kd_only = distill.distillation_loss(student, teacher, torch.full_like(labels, UNLABELED), 0.7, 3.0)
    (kd_only / 0.3).mul(0.3).backward()
    # ... is exactly what the unlabelled rows receive; labelled rows receive more.
    unlabelled = labels == UNLABELED
    assert torch.allclose(mixed_gradient[unlabelled], student.grad[unlabelled])
    assert not torch.allclose(mixed_gradient[~unlabelled], student.grad[~unlabelled])
    # A batch of unlabelled images only: (1 - alpha) x the KD term, and no label term at all.
    p = softmax(teacher.numpy() / 3.0, axis=1)
    kl = (p * (np.log(p) - log_softmax(student.detach().numpy() / 3.0, axis=1))).sum(axis=1).mean()
    assert float(kd_only.detach()) == pytest.approx(0.3 * 9.0 * kl, rel=1e-6)


def test_without_a_teacher_the_loss_is_the_label_loss():
    student, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    got = distill.distillation_loss(student, None, labels, 0.5, 2.0)
    assert torch.allclose(got, torch.nn.functional.cross_entropy(student, labels))


def test_mixed_labels_weigh_both_images():
    student, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 1, UNLABELED])
    other = labels.flip(0)  # [UNLABELED, 1, 0]: only row 1 has both labels
    got = distill.distillation_loss(student, None, labels, 1.0, 1.0, mixed_with=(other, 0.25))
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(got, 0.25 * ce(student[1:2], labels[1:2]) + 0.75 * ce(student[1:2], other[1:2]))


def test_a_view_becomes_each_network_s_input():
    view = DataConfig(8, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1.0)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    assert distill.as_input(images, view, view) is images
    other_norm = DataConfig(8, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875)
    converted = distill.as_input(images, view, other_norm)
    pixels = images * 0.5 + 0.5
    std, mean = torch.tensor(other_norm.std).view(1, 3, 1, 1), torch.tensor(other_norm.mean).view(1, 3, 1, 1)
    assert torch.allclose(converted * std + mean, pixels, atol=1e-6)
    flat = torch.tensor([0.2, -0.4, 0.9]).view(1, 3, 1, 1).expand(2, 3, 8, 8)
    smaller = distill.as_input(flat, view, DataConfig(4, "bilinear", view.mean, view.std, 1.0))
    assert smaller.shape == (2, 3, 4, 4) and torch.allclose(smaller, flat[:, :, :4, :4], atol=1e-6)
    assert distill.view_config(other_norm, view).input_size == 8


def with_distill(params, **changes):
    return params.model_copy(update={"distill": params.distill.model_copy(update=changes)})


def prepare(params, unlabeled: int = 0) -> None:
    make_class_folder(Path(params.paths.raw), per_class=10, size=(48, 40))
    folder = Path(params.paths.unlabeled)
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(unlabeled):
        noisy_image((40, 180, 60), 777_000 + n, (48, 40)).save(folder / f"u{n:02d}.png")
    for stage in (
        ingest.ingest,
        clean.clean,
        split.split,
        featurize.featurize,
        train_head.train_head,
        finetune.finetune,
    ):
        stage(params)


def test_off_by_default_writes_a_record_and_trains_nothing(tiny_params):
    assert tiny_params.distill.enabled is False
    distill.distill(tiny_params)  # needs nothing from earlier stages
    assert json.loads(Path(tiny_params.paths.distilled, "distill.json").read_text()) == {"enabled": False}
    assert json.loads(Path(tiny_params.paths.reports, "latency.json").read_text()) == {}
    assert Path(tiny_params.paths.reports, "distill_history.csv").read_text().startswith("student,epoch")


def test_teacher_and_student_see_the_same_view_each_step(tiny_params):
    """The student at 24 px, the teacher at 32: the view is cut at 32 (the teacher's input as is) and the
    student's input is that same picture made smaller, step after step, labelled or not."""
    params = with_distill(tiny_params, enabled=True, student="reprotune-tiny-test", input_size=24, epochs=1)
    prepare(params, unlabeled=4)
    view = DataConfig(32, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1.0)
    student = DataConfig(24, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1.0)
    steps = []

    def seen(student_input, teacher_input):
        if teacher_input is not None:
            assert teacher_input.shape[-1] == 32 and student_input.shape[-1] == 24
            assert torch.equal(student_input, distill.as_input(teacher_input, view, student))
            steps.append(len(student_input))

    distill.distill(params, seen=seen)
    assert sum(steps) == 18 + 4  # one epoch: every labelled training image and every unlabelled one, once
    record = json.loads(Path(params.paths.distilled, "distill.json").read_text())
    assert record["students"]["distilled"]["unlabeled_images"] == 4
    assert record["students"]["label_only"]["unlabeled_images"] == 0


def test_unlabelled_folder_is_checked_and_never_overlaps_the_labelled_images(tiny_params):
    params = with_distill(
        tiny_params, enabled=True, student="reprotune-tiny-test", epochs=1, label_only=False
    )
    prepare(params, unlabeled=3)
    folder, raw = Path(params.paths.unlabeled), Path(params.paths.raw)
    nested = folder / "from" / "camera"
    nested.mkdir(parents=True)
    shutil.copy(raw / "red" / "003.png", nested / "exact.png")  # a labelled file, copied
    with Image.open(raw / "blue" / "004.png") as image:
        image.convert("RGB").save(nested / "same_pixels.bmp")  # the same pixels in another format
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    shutil.copy(folder / "u00.png", nested / "u00-again.png")  # a duplicate inside the folder
    raw_before = sorted((p.relative_to(raw), p.read_bytes()) for p in raw.rglob("*") if p.is_file())
    unlabeled_before = sorted(
        (p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file()
    )

    distill.distill(params)
    record = json.loads(Path(params.paths.distilled, "distill.json").read_text())
    reasons = {Path(d["path"]).name: d["reason"] for d in record["unlabeled"]["dropped"]}
    assert reasons == {
        "broken.jpg": "not_an_image",
        "exact.png": "duplicate_of_labelled",
        "same_pixels.bmp": "duplicate_of_labelled",
        "u00-again.png": "duplicate_in_folder",
    }
    assert record["students"]["distilled"]["unlabeled_images"] == 3
    # The student carries its card, so predict loads it on its own (no params.yaml in this folder).
    from reprotune.serving import predict

    student = Path(params.paths.distilled, "distilled.safetensors")
    assert json.loads(student.with_suffix(".json").read_text())["backbone"]["name"] == "reprotune-tiny-test"
    rows = predict.predict_files(
        sorted((raw / "red").iterdir())[:2],
        predict.load_model(str(student), torch.device("cpu")),
        1,
        True,
        8,
        0,
    )
    assert [row["reason"] for row in rows] == ["", ""] and all(row["label"] for row in rows)
    assert sorted((p.relative_to(raw), p.read_bytes()) for p in raw.rglob("*") if p.is_file()) == raw_before
    assert (
        sorted((p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file())
        == unlabeled_before
    )


def test_an_unlabelled_folder_inside_the_raw_one_is_refused(tiny_params):
    from reprotune.pipeline.errors import InputError
    from reprotune.pipeline.layout import Layout

    paths = tiny_params.paths.model_copy(update={"unlabeled": str(Path(tiny_params.paths.raw) / "extra")})
    (Path(paths.unlabeled)).mkdir(parents=True)
    with pytest.raises(InputError, match=r"paths.unlabeled .* and paths.raw .* overlap"):
        distill.unlabeled_images(tiny_params, Layout(paths))
    missing = tiny_params.paths.model_copy(
        update={"unlabeled": str(Path(tiny_params.paths.raw).parent / "none")}
    )
    with pytest.raises(InputError, match="paths.unlabeled: .* is not a folder"):
        distill.unlabeled_images(tiny_params, Layout(missing))


def test_a_near_duplicate_of_a_labelled_image_is_dropped(tiny_params):
    from tests.conftest import photo_like

    params = with_distill(
        tiny_params, enabled=True, student="reprotune-tiny-test", epochs=1, label_only=False
    )
    raw = Path(params.paths.raw)
    for n, label in enumerate(["a", "a", "a", "a", "a", "b", "b", "b", "b", "b"]):
        (raw / label).mkdir(parents=True, exist_ok=True)
        photo_like(n).save(raw / label / f"{n}.png")
    folder = Path(params.paths.unlabeled)
    folder.mkdir(parents=True)
    photo_like(3).resize((160, 120)).save(folder / "smaller.jpg", quality=80)  # a resized, recompressed copy
    photo_like(100).save(folder / "new.png")
    for stage in (
        ingest.ingest,
        clean.clean,
        split.split,
        featurize.featurize,
        train_head.train_head,
        finetune.finetune,
    ):
        stage(params)
    distill.distill(params)
    record = json.loads(Path(params.paths.distilled, "distill.json").read_text())
    [dropped] = record["unlabeled"]["dropped"]
    assert Path(dropped["path"]).name == "smaller.jpg" and dropped["reason"] == "near_duplicate_of_labelled"
    assert dropped["detail"].startswith(str(raw / "a" / "3.png"))
    assert record["students"]["distilled"]["unlabeled_images"] == 1


@pytest.mark.e2e
@pytest.mark.slow  # CI's time: the shared loop's resume is proven in the full suite by finetune's and tune's tests
def test_interrupted_run_resumes_to_the_same_weights_and_evaluate_reports_the_students(tiny_params):
    params = with_distill(
        tiny_params,
        enabled=True,
        student="reprotune-tiny-test",
        input_size=24,
        epochs=3,
        patience=10,
        mixup=0.4,
        lr=0.01,
    )
    prepare(params, unlabeled=5)
    distill.distill(params)
    folder = Path(params.paths.distilled)
    reference = {name: load_file(folder / f"{name}.safetensors") for name in ("distilled", "label_only")}
    history = Path(params.paths.reports, "distill_history.csv").read_text()
    assert {row.split(",")[0] for row in history.splitlines()[1:]} == {"distilled", "label_only"}

    for student, where in (("distilled", (2, 1)), ("label_only", (3, 0))):
        starts: list[int] = []  # one entry per student that begins training: distilled, then label-only

        def interrupt(epoch: int, batch: int, student=student, where=where, starts=starts) -> None:
            if (epoch, batch) == (1, 0):
                starts.append(epoch)
            if distill.STUDENTS[len(starts) - 1] == student and (epoch, batch) == where:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            distill.distill(params, on_batch=interrupt)
        assert Path(params.paths.checkpoints, f"distill-{student}", "state.json").is_file()
        distill.distill(params)
        for name, weights in reference.items():
            resumed = load_file(folder / f"{name}.safetensors")
            assert all(torch.equal(resumed[k], weights[k]) for k in weights), (student, name)
        assert Path(params.paths.reports, "distill_history.csv").read_text() == history
        assert not list(Path(params.paths.checkpoints).glob("distill-*"))

    for stage in (
        leakage.leakage,
        baseline.baseline,
        learning_curve.learning_curve,
        label_issues.label_issues,
        adapt.adapt,
        evaluate.evaluate,
    ):
        stage(params)
    metrics = json.loads(Path(params.paths.reports, "metrics.json").read_text())
    assert list(metrics) == ["baseline", "head", "finetune", "distilled", "label_only"]
    report = Path(params.paths.reports, "report.md").read_text()
    assert "## Distillation" in report and "| distilled student | `reprotune-tiny-test` |" in report
    predictions = Path(params.paths.reports, "predictions.csv").read_text().splitlines()[0].split(",")
    assert "distilled" in predictions and "label_only_confidence" in predictions


@pytest.mark.e2e
@pytest.mark.slow  # CI's time: torchrun through the shared loop stays in the full suite with finetune
def test_torchrun_two_processes_distill(tiny_params, tmp_path):
    """Data-parallel distillation on CPU (gloo): one process writes, both students come out."""
    import yaml

    params = with_distill(tiny_params, enabled=True, student="reprotune-tiny-test", epochs=2)
    prepare(params, unlabeled=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "stages.distill",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"},
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
    record = json.loads(Path(params.paths.distilled, "distill.json").read_text())
    assert record["students"]["distilled"]["epochs_run"] == 2
    assert record["students"]["distilled"]["unlabeled_images"] == 3
    assert load_file(Path(params.paths.distilled, "label_only.safetensors"))["head.weight"].shape == (3, 32)


def test_report_states_the_gap_recovered_and_the_latency_ratio():
    from reprotune.reporting.report import distillation_section

    def scores(val, test):
        return {
            "val": {"accuracy": val},
            "test": {
                "accuracy": test,
                "accuracy_ci_low": test - 0.1,
                "accuracy_ci_high": 1.0,
                "macro_f1": test,
            },
        }

    metrics = {"finetune": scores(0.9, 0.95), "distilled": scores(0.85, 0.9), "label_only": scores(0.8, 0.75)}
    record = {
        "enabled": True,
        "teacher": {"backbone": "big", "input_size": 260, "parameters": 4_800_000, "megabytes": 18.6},
        "student": {"backbone": "small", "input_size": 224},
        "students": {
            name: {
                "parameters": 3_400_000,
                "megabytes": 13.1,
                "labelled_images": 100,
                "unlabeled_images": 50 if name == "distilled" else 0,
                "best_epoch": 3,
                "epochs_run": 5,
            }
            for name in ("distilled", "label_only")
        },
        "unlabeled": {"dropped": [{"path": "x", "reason": "not_an_image", "detail": ""}]},
    }
    latency = {"threads": 2, "runs": 50, "teacher_ms": 13.5, "student_ms": 6.75, "student_speedup": 2.0}
    text = "\n".join(distillation_section(metrics, record, latency))
    assert (
        "| distilled student | `small` | 0.9000 [0.8000, 1.0000] | 0.9000 | 3.40 M | 13.1 MB | 6.8 ms |"
        in text
    )
    assert (
        "| teacher (fine-tuned) | `big` | 0.9500 [0.8500, 1.0000] | 0.9500 | 4.80 M | 18.6 MB | 13.5 ms |"
        in text
    )
    assert "2.00x as fast" in text and "100 labelled and 50 unlabelled images" in text
    assert "not_an_image: 1" in text
    assert "on val the distilled student recovered 50% of the gap" in text
    assert "on test the distilled student recovered 75% of the gap" in text
    behind = metrics | {"label_only": scores(0.95, 0.96)}
    assert "no gap to recover" in "\n".join(distillation_section(behind, record, latency))
