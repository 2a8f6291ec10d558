"""Label new images (or texts) with a trained model.

    reprotune predict <folder or files>... [--model models/export] [--top-k 3] [-o predictions.csv]

`--model` is any model the pipeline wrote, and the folder alone is enough to load it (it works after
params.yaml changed, and from any directory):
- an exported folder (`models/export`: model.onnx beside its model.json card), or an `.onnx` file with its
  model.json beside it; calibrated with the temperature evaluate fitted on validation. From a folder it runs
  the int8 file where export shipped one and it passes its check on this CPU (once per machine), else the
  float32 file (`--precision auto|fp32|int8`);
- a trained network's folder (`models/finetuned`: model.safetensors beside its model.json card, which names
  the modality, backbone, classes and input checks); raw softmax, since evaluate fits the temperature later;
- a registered MLflow model (`models:/reprotune@candidate`), from --tracking-uri, MLFLOW_TRACKING_URI or the
  project store in this folder or above it; it runs the ONNX file and card it was logged with.

A text model (`models/export` or `models/finetuned` of a project on texts) reads CSV or JSON Lines files
with a `text` column, or any other file with one text per line; each text gets a row named `<file>:<line>`,
with the text beside its label. Texts longer than the encoder's max_seq_length tokens are read up to it, as in training.

Folders are read the way ingest and clean read data/raw: hidden files skipped, every format clean accepts,
EXIF orientation applied, modes converted alike, large JPEGs decoded at reduced scale; then the backbone's
own eval transform. Each file gets one row: path, label, confidence and the top-k labels with their
probabilities, or a reason when the file cannot be used (it never stops the run; a count of them is printed
at the end, and the exit status is 1 when no file could be labelled). Nothing it reads is written to.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax
from torch.utils.data import Dataset

from reprotune.data.checks import Rejected, decode_checked
from reprotune.data.dataconfig import DataConfig
from reprotune.data.datasets import in_order
from reprotune.data.files import is_hidden, list_files
from reprotune.pipeline.data_kind import IMAGE, TEXT
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.params import InputChecks
from reprotune.reporting.progress import progress

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path("models/export")

EXAMPLES = """examples:
  reprotune predict photos/                                  # the exported model, models/export
  reprotune predict --model models/finetuned a.jpg b.png     # the fine-tuned torch network
  reprotune predict --model /path/to/project/models/export photos/ -o labels.csv
  reprotune predict --model models:/reprotune@candidate photos/ --tracking-uri sqlite:///project/mlflow.db
  reprotune predict questions.csv                            # a text project: one row per text
  reprotune predict --device cuda:1 --batch-size 128 photos/
"""


@dataclass
class Model:
    """What predict needs of any model: the logits of a preprocessed batch, and how to preprocess."""

    logits: Callable[[torch.Tensor], np.ndarray]
    classes: list[str]
    data: DataConfig
    temperature: float | None  # None: the model carries none (raw softmax)
    checks: InputChecks  # the rules an input file must pass: clean's, as the training images passed them
    source: str
    modality: str = IMAGE
    onnx: bool = True  # ONNX Runtime runs it (torch only preprocesses), else torch


def onnx_model(path: Path, device: torch.device, precision: str = "auto") -> Model:
    """An exported folder (the int8 file where it holds on this machine, per `precision`: see
    reprotune/serving/int8_check.py) or an .onnx file, with the card beside it."""
    from reprotune.serving.int8_check import chosen_file
    from reprotune.serving.onnx_models import ModelCard, OnnxClassifier

    folder = path if path.is_dir() else path.parent
    card_path = folder / "model.json"
    if (
        not (path.suffix == ".onnx" and path.is_file() or (folder / "model.onnx").is_file())
        or not card_path.is_file()
    ):
        raise InputError(
            f"--model {path}: needs an .onnx file with its model.json beside it (as export writes them)"
        )
    card = ModelCard.read(card_path)
    if device.type == "cuda" and precision == "auto":
        precision = "fp32"  # int8 pays on CPUs, and its check is a CPU's; a GPU runs the float32 file
    onnx = chosen_file(folder, card, precision) if path.is_dir() else path
    classifier = OnnxClassifier(onnx, device=device, spinning=False)
    return Model(
        lambda batch: classifier.logits(batch.numpy()),
        card.classes,
        card.data,
        card.temperature,
        card.checks,
        str(onnx),
        card.modality,
    )


def torch_model(path: Path, device: torch.device) -> Model:
    """A trained network (its folder, or its weights file), built from the card beside its weights
    (reprotune/models/model_card.py), never from the project's params.yaml, which may have changed since."""
    from reprotune.modalities import encoding as modality_encoding
    from reprotune.models.classifier import load_trained_classifier
    from reprotune.models.model_card import TrainedCard

    weights = path / "model.safetensors" if path.is_dir() else path
    card = TrainedCard.read(weights)
    model, backbone = load_trained_classifier(
        card.backbone,
        weights,
        len(card.classes),
        load=modality_encoding.of(card.modality).architecture,
    )
    model.to(device)

    @torch.inference_mode()
    def logits(batch: torch.Tensor) -> np.ndarray:
        return model(batch.to(device)).float().cpu().numpy()

    return Model(logits, card.classes, backbone.data, None, card.checks, str(path), card.modality, onnx=False)


def mlflow_model(uri: str, device: torch.device, tracking: str | None, precision: str = "auto") -> Model:
    """A registered model (`models:/reprotune@candidate`): the exported folder it was logged with, run as
    any exported model, so that it predicts exactly what `models/export` does."""
    import mlflow

    from reprotune.reporting.tracking import command_tracking_uri

    mlflow.set_tracking_uri(command_tracking_uri(tracking))
    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except mlflow.exceptions.MlflowException as error:
        raise InputError(f"--model {uri}: {str(error).splitlines()[0]}") from None
    cards = sorted((folder / "artifacts").rglob("model.json"), key=lambda p: len(p.parts))
    if not cards:
        raise InputError(f"--model {uri}: holds no exported model (model.json)")
    model = onnx_model(cards[0].parent, device, precision)
    model.source = f"{uri} ({Path(model.source).name})"
    return model


def load_model(
    spec: str, device: torch.device, tracking: str | None = None, precision: str = "auto"
) -> Model:
    path = Path(spec)
    if spec.startswith("models:/"):
        return mlflow_model(spec, device, tracking, precision)
    if path.suffix == ".onnx" or (path / "model.onnx").is_file():
        return onnx_model(path, device, precision)
    if (path / "model.safetensors").is_file() or (path.suffix == ".safetensors" and path.is_file()):
        if precision == "int8":
            raise InputError(f"--precision int8: {spec} is a torch network; int8 files are in models/export")
        return torch_model(path, device)
    raise InputError(
        f"--model {spec}: not a model; give an exported folder (model.onnx + model.json, e.g. {DEFAULT_MODEL}), "
        "an .onnx file, a trained network's folder (model.safetensors + model.json, e.g. models/finetuned) or "
        "weights file with its card (models/distilled/distilled.safetensors + distilled.json), or a registered "
        "model (models:/<name>@<alias>)"
    )


class Files(Dataset):
    """Each file decoded under clean's rules and put through the eval transform; a file that fails gives a
    zero image and its reason, so that one bad file never stops a batch."""

    def __init__(self, paths: Sequence[Path], rules: InputChecks, data: DataConfig) -> None:
        self.paths, self.rules, self.data = list(paths), rules, data
        self.transform = data.eval_transform()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            rgb = decode_checked(self.paths[index], self.rules, self.data.eval_decode_side).rgb
            return self.transform(rgb), ""
        except Rejected as rejected:
            reason = str(rejected)
        except OSError as error:
            reason = f"unreadable: {error}"
        side = self.data.input_size
        return torch.zeros(3, side, side), reason


def files_in(inputs: Sequence[str]) -> list[Path]:
    """The files named, and every visible file under the folders named, in a stable order."""
    found = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found += list_files(path)
        elif path.exists() or path.is_symlink():
            found.append(path)
        else:
            raise InputError(f"{name}: no such file or folder")
    return [p for p in found if not is_hidden(p.name)]


def rows_for(
    paths: list[Path], probabilities: np.ndarray, reasons: list[str], classes: list[str], top_k: int
) -> list[dict]:
    rows = []
    for path, row, reason in zip(paths, probabilities, reasons, strict=True):
        entry: dict = {"path": str(path), "label": "", "confidence": ""}
        order = np.argsort(-row, kind="stable")[:top_k]
        for rank in range(top_k):
            entry[f"top{rank + 1}"] = "" if reason else classes[order[rank]]
            entry[f"top{rank + 1}_probability"] = "" if reason else f"{row[order[rank]]:.4f}"
        if not reason:
            entry["label"], entry["confidence"] = classes[order[0]], f"{row[order[0]]:.4f}"
        entry["reason"] = reason
        rows.append(entry)
    return rows


def predict_files(
    paths: list[Path], model: Model, top_k: int, calibrated: bool, batch_size: int, threads: int
) -> list[dict]:
    """Rows for image files; `threads` decode and transform the next batches while the model runs one
    (reprotune/data/datasets.py: in_order)."""
    files = Files(paths, model.checks, model.data)
    logits, reasons = [], []
    torch_threads = torch.get_num_threads()
    # With ONNX Runtime running the model, torch only preprocesses: its small per-image ops gain nothing from
    # threads, which would contend with ONNX Runtime's for the same cores.
    if model.onnx:
        torch.set_num_threads(1)
    try:
        batches = in_order(files, batch_size, threads)
        for batch in progress(batches, "predict", total=-(-len(files) // batch_size), unit="batch"):
            logits.append(model.logits(torch.stack([image for image, _ in batch])))
            reasons += [why for _, why in batch]
    finally:
        torch.set_num_threads(torch_threads)
    scores = np.concatenate(logits) if logits else np.zeros((0, len(model.classes)))
    probabilities = softmax(scores / (model.temperature if calibrated and model.temperature else 1.0), axis=1)
    return rows_for(paths, probabilities, reasons, model.classes, min(top_k, len(model.classes)))


def predict_texts(
    paths: list[Path], model: Model, top_k: int, calibrated: bool, batch_size: int
) -> list[dict]:
    """Every text of the files (reprotune/data/texts.py: read_unlabelled), in order, with its label."""
    from reprotune.data.texts import read_unlabelled
    from reprotune.models.text_encoders import eval_texts, in_row_order

    found = [row for path in paths for row in read_unlabelled(path)]
    readable = [index for index, (_, _, reason) in enumerate(found) if not reason]
    scores = np.zeros((len(found), len(model.classes)))
    if readable:
        loader = eval_texts([found[i][1] for i in readable], [0] * len(readable), model.data, batch_size)
        batches = [torch.from_numpy(model.logits(ids)) for ids, _ in loader]
        scores[readable] = in_row_order(torch.cat(batches), loader).numpy()
    probabilities = softmax(scores / (model.temperature if calibrated and model.temperature else 1.0), axis=1)
    rows = rows_for(
        [Path(name) for name, _, _ in found],
        probabilities,
        [reason for _, _, reason in found],
        model.classes,
        min(top_k, len(model.classes)),
    )
    for row, (name, text, _) in zip(rows, found, strict=True):
        row["path"] = name  # `<file>:<line>`, as given
        row["text"] = text
    return [{"path": r.pop("path"), "text": r.pop("text"), **r} for r in rows]


def write_csv(rows: list[dict], out: Path | None) -> None:
    if not rows:
        return
    if out is None:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return
    from reprotune.pipeline.atomic_io import atomic_output

    with atomic_output(out) as temporary, temporary.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from reprotune.training.devices import pick_device

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Label new images (or texts) with a trained model: one CSV row per file (or text).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        help="image files or folders; for a text model, CSV/JSONL files with a text column or files of one "
        "text per line",
    )
    parser.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help=f"an exported folder or .onnx file (default {DEFAULT_MODEL}), a trained network's folder "
        "(models/finetuned), or a registered model (models:/reprotune@candidate)",
    )
    parser.add_argument(
        "--top-k", type=int, default=3, help="labels per row, most probable first (default 3)"
    )
    parser.add_argument("-o", "--output", type=Path, help="CSV file (default: standard output)")
    parser.add_argument("--no-calibration", action="store_true", help="raw softmax, no temperature")
    parser.add_argument("--batch-size", type=int, default=32, help="default 32")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "int8"),
        default="auto",
        help="exported models: auto (default) runs the int8 file on a CPU where export shipped one and it "
        "passes its check there, else float32; fp32 always float32; int8 refuses to run without a passing "
        "int8 file",
    )
    parser.add_argument(
        "--tracking-uri",
        help="the MLflow store of a models:/ model (default: MLFLOW_TRACKING_URI, else the project's mlflow.db "
        "in this folder or above it)",
    )
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if options.top_k < 1 or options.batch_size < 1:
            raise InputError("--top-k and --batch-size must be at least 1")
        device = pick_device(options.device, "--device")
        model = load_model(options.model, device, options.tracking_uri, options.precision)
        paths = files_in(options.inputs)
        calibrated = not options.no_calibration
        if model.modality == TEXT:
            rows = predict_texts(paths, model, options.top_k, calibrated, options.batch_size)
        else:
            rows = predict_files(
                paths, model, options.top_k, calibrated, options.batch_size, os.cpu_count() or 1
            )
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    write_csv(rows, options.output)
    failed = sum(1 for row in rows if row["reason"])
    items = "texts" if model.modality == TEXT else "files"
    calibration = (
        "raw softmax (--no-calibration)"
        if options.no_calibration
        else f"calibrated at temperature {model.temperature:g}"
        if model.temperature
        else "raw softmax (this model carries no temperature; the exported and registered ones do)"
    )
    print(
        f"{len(rows) - failed} of {len(rows)} {items} labelled with {model.source}, {calibration}"
        + (f"; {failed} could not be read (see the reason column)" if failed else ""),
        file=sys.stderr,
    )
    if len(rows) == failed:
        print(f"error: no {items[:-1]} could be labelled", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
