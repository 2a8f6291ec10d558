"""predict on a folder as a user hands it one: good images labelled, bad files given a reason, the same rows
from the ONNX file and the torch model, calibration on by default, and nothing in the folder touched."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from reprotune.serving import predict
from tests.conftest import make_class_folder, noisy_image


@pytest.fixture
def tiny_params(trained_tiny):
    return trained_tiny


@pytest.fixture
def project(trained_tiny, tmp_path: Path, monkeypatch) -> Path:
    """A working folder holding the trained tiny project's params.yaml, as predict is run from a project."""
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(trained_tiny.model_dump(mode="json"), sort_keys=False)
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def new_images(folder: Path) -> Path:
    make_class_folder(folder, per_class=2, seed=7)  # red/, green/, blue/: images no model has seen
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    (folder / "notes.png").write_text("not an image")
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    (folder / ".DS_Store").write_bytes(b"\x00")
    return folder


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_a_folder_with_bad_files_is_labelled_with_a_reason_for_each_bad_one(project: Path, tiny_params):
    folder = new_images(project / "incoming")
    before = digest(folder)
    assert (
        predict.main([str(folder), "--model", tiny_params.paths.exported, "-o", "out.csv", "--top-k", "2"])
        == 0
    )
    rows = read_rows(project / "out.csv")
    by_name = {Path(row["path"]).relative_to(folder).as_posix(): row for row in rows}
    assert len(rows) == 9 and ".DS_Store" not in by_name
    assert by_name["corrupt.jpg"]["reason"].startswith(("not_an_image", "truncated_or_corrupt"))
    assert by_name["notes.png"]["reason"].startswith("not_an_image")
    assert by_name["dot.png"]["reason"].startswith("too_small")
    good = {name: row for name, row in by_name.items() if not row["reason"]}
    assert len(good) == 6
    for name, row in good.items():
        assert row["label"] == name.split("/")[0]  # colour classes: a trained model gets them right
        assert row["label"] == row["top1"] and float(row["top1_probability"]) >= float(
            row["top2_probability"]
        )
    assert digest(folder) == before  # nothing it read was written to


def test_onnx_and_torch_give_the_same_rows_and_calibration_changes_only_probabilities(
    project: Path, tiny_params, capsys
):
    folder = project / "incoming"
    make_class_folder(folder, per_class=3, seed=9)
    outputs = {}
    for name, model, extra in (
        ("onnx", tiny_params.paths.exported, ["--precision", "fp32"]),
        ("torch", tiny_params.paths.finetuned, []),
        ("raw", tiny_params.paths.exported, ["--precision", "fp32", "--no-calibration"]),
        ("int8", tiny_params.paths.exported, []),  # auto: the int8 file, which passes its check here
    ):
        assert predict.main([str(folder), "--model", model, "-o", f"{name}.csv", *extra]) == 0
        outputs[name] = read_rows(project / f"{name}.csv")
        assert ("model.int8.onnx" in capsys.readouterr().err) == (name == "int8")
    # The trained network's folder carries no temperature (evaluate fits it later): raw softmax, as the
    # exported file gives with --no-calibration.
    assert outputs["raw"] == outputs["torch"]
    assert [r["label"] for r in outputs["raw"]] == [r["label"] for r in outputs["onnx"]]
    assert [r["confidence"] for r in outputs["raw"]] != [r["confidence"] for r in outputs["onnx"]]
    assert [r["label"] for r in outputs["int8"]] == [r["label"] for r in outputs["onnx"]]


def test_an_int8_file_that_no_longer_agrees_on_this_cpu_falls_back_to_float32(
    project: Path, tiny_params, tmp_path_factory, monkeypatch, capsys, caplog
):
    """The per-machine check: an int8 file whose logits here are not what the exporting machine recorded
    (stood in for by editing the recorded ones) is not used: auto runs the float32 file with a WARNING,
    `--precision int8` refuses; the answer is cached per machine, and a passing file is used."""
    import shutil

    import numpy as np

    from reprotune.serving import int8_check

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    exported = tmp_path_factory.mktemp("copy") / "export"
    shutil.copytree(tiny_params.paths.exported, exported)
    folder = project / "incoming"
    make_class_folder(folder, per_class=1, seed=3)

    assert predict.main([str(folder), "--model", str(exported), "-o", "ok.csv"]) == 0
    assert "model.int8.onnx" in capsys.readouterr().err
    check = exported / int8_check.CHECK_FILE
    with np.load(check) as stored:
        arrays = dict(stored)
    arrays["int8_logits"] = arrays["int8_logits"] + np.arange(arrays["int8_logits"].shape[1]) * 5.0
    np.savez_compressed(check, **arrays)  # as a CPU whose int8 kernels saturate would compute them
    assert predict.main([str(folder), "--model", str(exported), "-o", "fallback.csv"]) == 0
    assert "model.int8.onnx not used: on this CPU the int8 file's logits differ" in caplog.text
    assert "labelled with " + str(exported / "model.onnx") in capsys.readouterr().err
    assert predict.main([str(folder), "--model", str(exported), "--precision", "int8"]) == 1
    assert "use the float32 file" in capsys.readouterr().err
    answers = json.loads(int8_check.cache_file().read_text())
    assert len(answers) == 2 and sorted(bool(v) for v in answers.values()) == [False, True]
    monkeypatch.setattr(int8_check, "verdict", lambda *_: pytest.fail("checked twice on one machine"))
    assert predict.main([str(folder), "--model", str(exported), "-o", "again.csv"]) == 0


def test_a_model_folder_loads_from_its_own_card_after_params_change_and_from_anywhere(
    project: Path, tiny_params, tmp_path_factory, monkeypatch, capsys
):
    """The folder alone says how to build the network: a params.yaml that now names another backbone and
    input size, or no params.yaml at all (another folder), changes nothing."""
    folder = project / "incoming"
    make_class_folder(folder, per_class=2, seed=11)
    assert predict.main([str(folder), "--model", tiny_params.paths.finetuned, "-o", "before.csv"]) == 0
    edited = yaml.safe_load((project / "params.yaml").read_text())
    edited["backbone"].update(name="efficientnet_lite0", input_size=224)
    (project / "params.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    assert predict.main([str(folder), "--model", tiny_params.paths.finetuned, "-o", "edited.csv"]) == 0
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    assert predict.main([str(folder), "--model", tiny_params.paths.finetuned, "-o", "away.csv"]) == 0
    before = read_rows(project / "before.csv")
    assert before == read_rows(project / "edited.csv") == read_rows(elsewhere / "away.csv")
    assert "raw softmax (this model carries no temperature" in capsys.readouterr().err


def test_a_trained_folder_needs_no_pretrained_weights(project: Path, tiny_params, tmp_path_factory):
    """Every weight is in the folder's own file: the backbone's pretrained file (here a path that exists on
    no machine) is never read, so the folder works where that file, or the network, is not."""
    import json
    import shutil

    copied = tmp_path_factory.mktemp("moved") / "finetuned"
    shutil.copytree(tiny_params.paths.finetuned, copied)
    card = json.loads((copied / "model.json").read_text())
    card["backbone"]["weights"] = "/nowhere/pretrained.safetensors"
    (copied / "model.json").write_text(json.dumps(card))
    folder = project / "incoming"
    make_class_folder(folder, per_class=1, seed=13)
    assert predict.main([str(folder), "--model", str(copied), "-o", "moved.csv"]) == 0
    assert predict.main([str(folder), "--model", tiny_params.paths.finetuned, "-o", "original.csv"]) == 0
    assert read_rows(project / "moved.csv") == read_rows(project / "original.csv")


def test_nothing_labelled_is_a_failure(project: Path, tiny_params, capsys):
    (project / "notes.png").write_text("not an image")
    assert predict.main(["notes.png", "--model", tiny_params.paths.exported]) == 1
    assert "error: no file could be labelled" in capsys.readouterr().err


def test_a_device_that_is_not_there_is_one_clear_line(project: Path, tiny_params, capsys):
    noisy_image((1, 2, 3), 1).save(project / "one.png")
    assert predict.main(["one.png", "--model", tiny_params.paths.exported, "--device", "cuda:3"]) == 1
    assert "--device: cuda:3 was asked for but" in capsys.readouterr().err
    assert predict.main(["one.png", "--model", tiny_params.paths.exported, "--device", "tpu"]) == 1
    assert "not a device; use auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_a_missing_input_or_model_is_one_clear_line(project: Path, tiny_params, capsys):
    noisy_image((1, 2, 3), 1).save(project / "one.png")
    assert predict.main(["nowhere", "--model", tiny_params.paths.exported]) == 1
    assert capsys.readouterr().err.strip() == "error: nowhere: no such file or folder"
    assert predict.main(["one.png", "--model", "no-model-here"]) == 1
    assert "not a model" in capsys.readouterr().err


@pytest.mark.slow  # needs this checkout's `dvc repro` on the whole sample
def test_on_the_sample_the_torch_model_is_read_at_the_size_it_was_trained_at(monkeypatch):
    """On the built-in sample, backbone.input_size as resolved (auto: 128) applies to predict's torch
    model as to the stages; read at the global size instead, its rows differed from the exported model's."""
    import json

    from tests.conftest import ROOT

    meta = ROOT / "data" / "features" / "features.json"
    if not meta.is_file() or not (ROOT / "data" / "ingested" / "sample").is_dir():
        pytest.skip("needs this checkout's `dvc repro` on the built-in sample")
    if not (ROOT / "models" / "export" / "model.onnx").is_file():
        pytest.skip("needs this checkout's exported model")
    monkeypatch.chdir(ROOT)
    folder = Path("data/ingested/sample/3")
    images = sorted(folder.iterdir())[:24]
    cpu = torch.device("cpu")
    torch_model = predict.torch_model(Path("models/finetuned"), cpu)
    assert torch_model.data.input_size == json.loads(meta.read_text())["data_config"]["input_size"]
    exported = predict.load_model("models/export", cpu)
    rows = [predict.predict_files(images, m, 3, False, 8, 0) for m in (torch_model, exported)]
    assert [(r["label"], r["confidence"]) for r in rows[0]] == [
        (r["label"], r["confidence"]) for r in rows[1]
    ]


def test_preprocessing_threads_keep_the_order_and_each_reason_with_its_file(project: Path, tiny_params):
    """predict decodes in threads ahead of the model: the rows must be those of one thread, batch by batch,
    with each bad file's reason on its own row however the threads finish."""
    folder = new_images(project / "incoming")
    paths = predict.files_in([str(folder)])
    model = predict.load_model(tiny_params.paths.exported, torch.device("cpu"), precision="fp32")
    alone = predict.predict_files(paths, model, 2, True, 32, 0)
    assert sum(1 for row in alone if row["reason"]) == 3
    for batch_size, threads in ((2, 2), (3, 4), (32, 2)):
        assert predict.predict_files(paths, model, 2, True, batch_size, threads) == alone


def test_in_order_gives_every_item_in_order_and_stops_cleanly():
    import random
    import threading
    import time

    from reprotune.data.datasets import in_order

    class Slow:
        """Items that take random times, so that threads finish out of order."""

        def __init__(self, count: int) -> None:
            self.count, self.made = count, []
            self.lock = threading.Lock()

        def __len__(self) -> int:
            return self.count

        def __getitem__(self, index: int) -> int:
            time.sleep(random.Random(index).random() / 500)
            with self.lock:
                self.made.append(index)
            return index

    for threads in (0, 1, 3):
        for batch_size in (1, 4, 50):
            batches = list(in_order(Slow(23), batch_size, threads))
            assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
            assert [i for b in batches for i in b] == list(range(23))
    slow = Slow(1000)
    batches = in_order(slow, 4, 2)
    assert next(batches) == [0, 1, 2, 3]
    batches.close()  # a caller that stops early: nothing queued is left to make
    assert len(slow.made) <= 4 + 2 * 4 + 2  # the batch, two batches ahead, and what was running
