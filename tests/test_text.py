"""Text through the pipeline: reading CSV/JSONL rows, the modality, clean's text rules, given splits, the
embedding cache, zero-shot, the text fine-tune's resume and predict, on a tiny encoder built here."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from reprotune.data.texts import normalised, read_text_file
from reprotune.models.zero_shot import label_prompts, zero_shot_logits
from reprotune.pipeline import params as params_module
from reprotune.pipeline.data_kind import TEXT
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Params, ParamsError
from reprotune.pipeline.resolve import for_data
from reprotune.pipeline.stage import as_run
from tests.conftest import make_class_folder, tiny_params_raw
from tests.text_data import labelled_texts, make_tiny_encoder, write_csv


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("encoder") / "tiny")


def text_params(base: Path, encoder: Path, **clean: object) -> Params:
    raw = tiny_params_raw(base, images=False)
    raw["backbone"].update(name=str(encoder), input_size="auto")
    raw["finetune"].update(epochs=2, batch_size=8, lr=0.01, backbone_lr_factor=0.1)
    raw["clean"].update(clean)
    return params_module.validate(raw)


def run(params: Params, *names: str) -> Params:
    """Run stages in-process as `dvc repro` would, each with the params stage.run would give it."""
    for name in names:  # ingest decides the data kind the others resolve by (stage.run)
        getattr(importlib.import_module(f"stages.{name}"), name)(
            params if name == "ingest" else as_run(params)
        )
    return as_run(params)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- reading ------------------------------------------------------------------------------------------------


def test_csv_rows_keep_their_line_and_only_undecodable_rows_are_lost(tmp_path: Path):
    path = tmp_path / "Train.csv"
    path.write_bytes(
        b"\xef\xbb\xbfText , LABEL,extra\r\n"
        b'"two\nlines",a,x\r\n'
        b"bad \xff byte,b,x\r\n"
        b"\r\n"
        b"fine,b,x\r\n"
        b"short,a\r\n"
    )
    rows = read_text_file(path)
    assert [(r["path"].rsplit(":", 1)[1], r["issue"]) for r in rows] == [
        ("2", ""),
        ("4", "undecodable"),
        ("6", ""),
        ("7", "malformed_row"),
    ]
    assert rows[0]["text"] == "two\nlines" and rows[0]["label"] == "a" and rows[0]["split"] == "train"
    assert f"{path} line 4" in rows[1]["detail"]


def test_semicolon_and_tab_separated_files_are_read_by_their_header(tmp_path: Path):
    """Spreadsheets save "CSV" with semicolons where the comma is the decimal mark; a .tsv has tabs. The
    header says which: commas inside a text stay in the text."""
    from reprotune.data.texts import read_unlabelled

    semicolons = tmp_path / "train.csv"
    semicolons.write_bytes(b'\xef\xbb\xbfText;Label\r\n"hello, there";greet\r\nbye, now;farewell\r\n')
    tabs = tmp_path / "test.tsv"
    tabs.write_text("label\ttext\ngreet\thi; you, there\n")
    assert [(r["text"], r["label"], r["split"], r["issue"]) for r in read_text_file(semicolons)] == [
        ("hello, there", "greet", "train", ""),
        ("bye, now", "farewell", "train", ""),
    ]
    assert [(r["text"], r["label"], r["split"]) for r in read_text_file(tabs)] == [
        ("hi; you, there", "greet", "test")
    ]
    assert [text for _, text, _ in read_unlabelled(semicolons)] == ["hello, there", "bye, now"]
    commas = write_csv(tmp_path / "data.csv", [("a; b", "x")])  # a semicolon in a comma file's text
    assert [r["text"] for r in read_text_file(commas)] == ["a; b"]


def test_jsonl_rows_and_a_split_column(tmp_path: Path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"text": "one", "label": "a", "split": "valid"}\n'
        "not json\n"
        '{"text": "two", "label": 3}\n'
        '{"text": "three", "label": "b", "split": "holdout"}\n'
    )
    rows = read_text_file(path)
    assert [(r["issue"], r["split"], r["label"]) for r in rows] == [
        ("", "val", "a"),
        ("malformed_row", "", ""),
        ("", "", "3"),
        ("unknown_split", "", ""),
    ]


def test_a_file_without_a_text_column_is_named(tmp_path: Path):
    path = write_csv(tmp_path / "data.csv", [("hello", "a")], header=("sentence", "label"))
    with pytest.raises(InputError, match=r"data\.csv: no 'text' column"):
        read_text_file(path)


def test_normalised_ignores_case_whitespace_and_punctuation():
    assert (
        normalised("  Where's my CARD?!  ") == normalised("wheres my card") != normalised("where is my card")
    )
    assert normalised("fees for top-ups?") == normalised("Fees for top ups")


def test_a_folder_with_texts_and_images_is_refused(tmp_path: Path, tiny_encoder: Path):
    params = text_params(tmp_path, tiny_encoder)
    write_csv(Path(params.paths.raw) / "data.csv", labelled_texts(3))
    make_class_folder(Path(params.paths.raw), per_class=2)
    with pytest.raises(InputError, match="holds both image folders .* and text data files"):
        run(params, "ingest")


# --- clean and split ----------------------------------------------------------------------------------------


def test_every_clean_reason_for_texts(tmp_path: Path, tiny_encoder: Path):
    params = text_params(tmp_path, tiny_encoder, max_text_length=80, long_text="truncate", min_class_size=3)
    raw = Path(params.paths.raw)
    rows = labelled_texts(4)
    extra = [
        ("   ", "card"),  # empty
        ("my card pin", ""),  # no label
        ("my card " + "lost " * 20, "card"),  # truncated to 80 characters
        (rows[0][0], "card"),  # an exact copy, same label: dropped
        (rows[1][0].upper() + "!!", "card"),  # a near copy: kept, grouped with it
        ("my balance fee", "money"),  # the same text under two labels: both dropped (label_conflict: drop)
        ("My balance, fee.", "account"),
        ("my chip", "rare"),  # a class of one: dropped
        ("my chip pin", "rare"),
    ]
    write_csv(raw / "data.csv", rows + extra)
    (raw / "notes.txt").write_text("not data")
    (raw / "broken.csv").write_bytes(b"text,label\nmy \xfe card,card\n")
    before = snapshot(raw)
    params = run(params, "ingest", "clean")
    report = json.loads((Path(params.paths.reports) / "cleaning.json").read_text())
    reasons = {(d["path"].split("/")[-1], d["reason"]) for d in report["dropped_files"]}
    data = "data.csv"
    assert reasons == {
        ("notes.txt", "not_a_text_file"),
        ("broken.csv:2", "undecodable"),
        (f"{data}:14", "empty_text"),
        (f"{data}:15", "missing_label"),
        (f"{data}:17", "duplicate"),
        (f"{data}:19", "label_conflict"),
        (f"{data}:20", "label_conflict"),
        (f"{data}:21", "class_too_small"),
        (f"{data}:22", "class_too_small"),
    }
    assert [a["reason"] for a in report["altered_files"]] == ["truncated"]
    assert report["kept"] + report["dropped"] == report["scanned"]
    kept = Layout(params.paths).read_manifest(Layout(params.paths).clean_manifest)
    assert kept.loc[kept["path"].str.endswith(":16"), "text"].item() == ("my card " + "lost " * 20)[:80]
    near = kept[kept["path"].str.endswith((":3", ":18"))]
    assert near["group"].nunique() == 1 and len(near) == 2
    assert {g["kind"] for g in report["duplicate_groups"]} == {"near"}
    assert snapshot(raw) == before  # the user's files are never written


def test_too_long_texts_can_be_dropped(tmp_path: Path, tiny_encoder: Path):
    params = text_params(tmp_path, tiny_encoder, max_text_length=10, long_text="drop")
    write_csv(Path(params.paths.raw) / "data.csv", labelled_texts(4))
    with pytest.raises(InputError, match=r"0 usable texts .*'too_long': 12"):
        run(params, "ingest", "clean")


def test_split_files_give_the_split(tmp_path: Path, tiny_encoder: Path):
    params = text_params(tmp_path, tiny_encoder)
    raw = Path(params.paths.raw)
    write_csv(raw / "train.csv", labelled_texts(10, seed=1))
    write_csv(raw / "Test.csv", labelled_texts(4, seed=2))
    params = run(params, "ingest", "clean", "split")
    report = json.loads((Path(params.paths.reports) / "split.json").read_text())
    assert report["given"] == ["train", "test"] and list(report["carved"]) == ["val"]
    manifest = Layout(params.paths).read_manifest(Layout(params.paths).split_manifest)
    assert set(manifest.loc[manifest["path"].str.contains("Test.csv"), "split"]) == {"test"}
    write_csv(raw / "extra.csv", labelled_texts(2, seed=3))  # a file with no split beside split files
    with pytest.raises(InputError, match="some rows come from split files"):
        run(params, "ingest", "clean", "split")


# --- featurize, zero-shot -------------------------------------------------------------------------------------


def test_the_cache_embeds_each_text_once_and_changes_no_byte(tmp_path: Path, tiny_encoder: Path, caplog):
    params = text_params(tmp_path, tiny_encoder)
    write_csv(Path(params.paths.raw) / "data.csv", labelled_texts(10))
    params = run(params, "ingest", "clean", "split", "featurize")
    features = Path(params.paths.features)
    first = snapshot(features)
    meta = json.loads((features / "features.json").read_text())
    assert meta["modality"] == "text" and meta["num_features"] == 16
    assert load_file(features / "labels.safetensors")["embeddings"].shape == (3, 16)
    caplog.clear()
    with caplog.at_level("INFO"):
        run(params, "featurize")
    assert "embedded 0, 30 from the cache" in caplog.text
    assert snapshot(features) == first
    for shard in Path(params.paths.embedding_cache).rglob("*"):
        if shard.is_file():
            shard.unlink()
    run(params, "featurize")  # without the cache: the same bytes (one batch shape per length bucket)
    assert snapshot(features) == first


def test_zero_shot_picks_the_nearest_label_name():
    assert label_prompts(["card_arrival", "top-up.limits"]) == ["card arrival", "top up limits"]
    texts = torch.tensor([[1.0, 0.1], [0.0, 2.0]])
    labels = torch.tensor([[0.0, 1.0], [3.0, 0.0]])
    assert zero_shot_logits(texts, labels).argmax(1).tolist() == [1, 0]


# --- the fine-tune, through the same loop -------------------------------------------------------------------


def trained_text_project(tmp_path: Path, encoder: Path) -> Params:
    params = text_params(tmp_path, encoder)
    write_csv(Path(params.paths.raw) / "data.csv", labelled_texts(12))
    return run(params, "ingest", "clean", "split", "featurize", "train_head")


def test_an_edited_learning_rate_is_the_one_texts_train_with(tmp_path: Path, tiny_encoder: Path):
    """What you write is what runs: no text section replaces finetune.lr on texts any more."""
    trained_text_project(tmp_path, tiny_encoder)
    histories = {}
    for lr in (0.01, 0.003):
        written = text_params(tmp_path, tiny_encoder)
        written = written.model_copy(update={"finetune": written.finetune.model_copy(update={"lr": lr})})
        assert run(written, "finetune").finetune.lr == lr
        histories[lr] = (Path(written.paths.reports) / "finetune_history.csv").read_text()
    assert histories[0.01] != histories[0.003]


def test_an_interrupted_text_fine_tune_resumes_to_the_same_weights(tmp_path: Path, tiny_encoder: Path):
    from stages import finetune

    params = trained_text_project(tmp_path, tiny_encoder)
    params = params.model_copy(
        update={"finetune": params.finetune.model_copy(update={"epochs": 3, "patience": 10})}
    )
    finetune.finetune(params)
    finetuned = Path(params.paths.finetuned)
    reference = load_file(finetuned / "model.safetensors")
    history = (Path(params.paths.reports) / "finetune_history.csv").read_text()
    assert any(k.startswith("backbone.encoder.") for k in reference)

    def interrupt(epoch: int, batch: int) -> None:
        if (epoch, batch) == (2, 1):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune.finetune(params, on_batch=interrupt)
    finetune.finetune(params)
    resumed = load_file(finetuned / "model.safetensors")
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert (Path(params.paths.reports) / "finetune_history.csv").read_text() == history


def test_text_stages_score_zero_shot_and_predict_labels_texts(
    tmp_path: Path, tiny_encoder: Path, monkeypatch
):
    import yaml

    from reprotune.serving import predict

    params = trained_text_project(tmp_path, tiny_encoder)
    params = run(
        params,
        "leakage",
        "baseline",
        "learning_curve",
        "label_issues",
        "finetune",
        "distill",
        "adapt",
        "evaluate",
        "export",
    )
    reports = Path(params.paths.reports)
    metrics = json.loads((reports / "metrics.json").read_text())
    assert list(metrics) == ["baseline", "head", "finetune", "zeroshot"]
    assert json.loads((Path(params.paths.baseline) / "baseline.json").read_text())["chosen"]["model"] == (
        "tfidf_logistic_regression"
    )
    curve = json.loads((reports / "learning_curve.json").read_text())
    assert curve["points"][0]["labels_per_class"] == 0
    assert curve["points"][0]["test"]["mean"] == metrics["zeroshot"]["test"]["accuracy"]
    report = (reports / "report.md").read_text()
    assert "## Most confident mistakes (test)" in report and "zero-shot" in report
    assert "text" in (reports / "predictions.csv").read_text().splitlines()[0].split(",")
    assert "text" in (reports / "label_issues.csv").read_text().splitlines()[0].split(",")
    # predict reads params.yaml from the project folder: write this project's there
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "new.txt").write_bytes(b"my card lost pin\n\nmy transfer refund fee\nbad \xff\n")
    out = tmp_path / "labels.csv"
    assert predict.main([str(tmp_path / "new.txt"), "--model", params.paths.finetuned, "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("path,text,label,confidence")
    assert [line.split(",")[0].rsplit(":", 1)[1] for line in lines[1:]] == ["1", "3", "4"]
    assert lines[3].endswith("bytes that are not UTF-8")
    # the exported graph (token ids in, tokenizer beside it) labels them as the torch network does
    exported = json.loads((reports / "export.json").read_text())
    assert exported["onnx_fp32"]["top1_agreement"] == 1.0
    card = json.loads((Path(params.paths.exported) / "model.json").read_text())
    assert card["modality"] == "text" and card["input"] == {"name": "ids", "shape": ["batch", "tokens"]}
    onnx_out = tmp_path / "onnx.csv"
    arguments = [str(tmp_path / "new.txt"), "--model", params.paths.exported, "--precision", "fp32"]
    assert predict.main([*arguments, "-o", str(onnx_out)]) == 0
    labels = [line.split(",")[2] for line in onnx_out.read_text().splitlines()[1:]]
    assert labels == [line.split(",")[2] for line in lines[1:]]
    # and the served model takes a `text` column: labels, calibrated confidence, an error row for a non-text
    from reprotune.serving import pyfunc

    served = pyfunc.Classifier()
    artifacts = pyfunc.artifacts_of(Path(params.paths.exported), tmp_path)
    served.load_context(type("Context", (), {"artifacts": artifacts})())
    answer = served.predict(None, pd.DataFrame({"text": ["my card lost pin", "", 3]}))
    assert answer["label"].tolist()[0] in card["classes"] and answer["label"].tolist()[1:] == ["", ""]
    assert answer["error"].tolist() == ["", "empty_text", "not_a_text: a int"]
    assert {f"p:{name}" for name in card["classes"]} <= set(answer.columns)


def test_distillation_is_refused_on_text(tmp_path: Path, tiny_encoder: Path):
    params = trained_text_project(tmp_path, tiny_encoder)
    params = params.model_copy(update={"distill": params.distill.model_copy(update={"enabled": True})})
    with pytest.raises(ParamsError, match="distill.enabled"):
        run(params, "distill")


def test_text_layer_groups_run_from_the_embeddings_to_the_last_layer(tmp_path: Path, tiny_encoder: Path):
    from reprotune.models.text_encoders import load_text_encoder
    from reprotune.training.finetuning import trainable_backbone_names

    backbone = load_text_encoder(for_data(text_params(tmp_path, tiny_encoder), TEXT).backbone)
    groups = backbone.layer_groups
    assert len(groups) == 3  # the embeddings, then the tiny BERT's two layers
    assert all(".embeddings." in name for name in groups[0])
    assert all(".layer.1." in name for name in groups[-1])
    assert not any(".pooler." in name for group in groups for name in group)  # never run: never trained
    assert trainable_backbone_names(backbone, "last_n", 1) == set(groups[-1])
    ids = torch.tensor(backbone.data.tokenize(["my card lost"]))
    assert backbone.model(ids).shape == (1, backbone.num_features)


@pytest.mark.e2e
@pytest.mark.slow  # CI's time: torchrun through the shared loop stays in the full suite with images
def test_torchrun_two_cpu_processes_fine_tune_the_text_model(tmp_path: Path, tiny_encoder: Path):
    """The text fine-tune data-parallel on CPU (gloo), through the same loop: one process writes."""
    import yaml

    from tests.test_finetune import finish, torchrun

    params = trained_text_project(tmp_path, tiny_encoder)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    finish([torchrun(["--standalone", "--nproc_per_node", "2"], tmp_path)])
    summary = json.loads((Path(params.paths.finetuned) / "finetune.json").read_text())
    assert summary["processes"] == 2 and summary["epochs_run"] == 2
    assert load_file(Path(params.paths.finetuned) / "model.safetensors")["head.weight"].shape == (3, 16)


def test_a_text_embeds_to_the_same_bytes_alone_and_in_any_batch(tmp_path: Path, tiny_encoder: Path):
    """featurize's batches (sorted by length, padded to a multiple of 16 tokens) against each text alone."""
    import pandas as pd

    from reprotune.modalities.encoding import of
    from reprotune.models.text_encoders import eval_texts, in_row_order
    from stages.featurize import inference

    params = for_data(text_params(tmp_path, tiny_encoder), TEXT)
    encoding = of(TEXT)
    backbone = encoding.load(params.backbone)
    texts = [text for text, _ in labelled_texts(8)] + ["my card " * 9, "pin"]
    run = inference(params, torch.device("cpu"))
    rows = pd.DataFrame({"text": texts})
    batched = torch.cat(list(encoding.outputs(backbone.model, rows, backbone, run, Layout(params.paths))))
    for index, text in enumerate(texts):
        loader = eval_texts([text], [0], backbone.data, 1)
        with torch.inference_mode():
            alone = in_row_order(torch.cat([backbone.model(ids) for ids, _ in loader]), loader)
        assert torch.equal(alone[0], batched[index]), text


def test_label_descriptions_replace_class_names_for_zero_shot(tmp_path: Path, tiny_encoder: Path):
    from reprotune.models.zero_shot import read_descriptions

    path = write_csv(
        tmp_path / "descriptions.csv",
        [("card", "a lost or blocked card"), ("money", " ")],
        header=("label", "description"),
    )
    assert read_descriptions(path, ["account", "card", "money"]) == {"card": "a lost or blocked card"}
    assert label_prompts(["card", "money"], {"card": "a lost or blocked card"}) == [
        "a lost or blocked card",
        "money",
    ]
    write_csv(path, [("cards", "x"), ("card", "y"), ("card", "z")], header=("label", "description"))
    with pytest.raises(
        InputError, match=r"line 2: 'cards' is not a class(.|\n)*'card' is described more than once"
    ):
        read_descriptions(path, ["card", "money"])
    params = text_params(tmp_path, tiny_encoder)
    write_csv(Path(params.paths.raw) / "data.csv", labelled_texts(6))
    write_csv(
        Path(params.paths.label_descriptions), [("card", "my card lost")], header=("label", "description")
    )
    params = run(params, "ingest", "clean", "split", "featurize")
    meta = json.loads((Path(params.paths.features) / "features.json").read_text())
    assert meta["label_prompts"] == ["account", "my card lost", "money"]
