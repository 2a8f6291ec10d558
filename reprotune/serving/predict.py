"""Label new images (or texts) with a trained model.

    python -m reprotune.predict <folder or files>... [--model models/export] [--top-k 3] [-o predictions.csv]

A text model (the project's data are texts) is read from `--model models/finetuned`; its inputs are CSV or
JSON Lines files with a `text` column, or any other file with one text per line; each text gets a row named
`<file>:<line>`, with the text beside its label. Texts longer than the encoder's max_seq_length tokens are
read up to it, as in training.

`--model` is an exported model folder (`models/export`: model.onnx beside its model.json card), an `.onnx`
file with its model.json beside it, a registered MLflow model (`models:/reprotune@candidate`, from the
project's store or MLFLOW_TRACKING_URI), or the fine-tuned torch model (`models/finetuned`, read with this
project's params.yaml, data/features/features.json and the temperature in reports/metrics.json).

Folders are read the way ingest and clean read data/raw: hidden files skipped, every format clean accepts,
EXIF orientation applied, modes converted alike, large JPEGs decoded at reduced scale; then the backbone's
own eval transform. Each file gets one row: path, label, confidence and the top-k labels with their
probabilities, or a reason when the file cannot be used (it never stops the run; a count of them is printed
at the end). Probabilities are calibrated with the temperature evaluate fitted on validation
(`--no-calibration`: raw softmax). Nothing it reads is written to.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from reprotune.data.checks import Rejected, decode_checked
from reprotune.data.dataconfig import DataConfig
from reprotune.data.files import is_hidden, list_files
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.params import Clean

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path("models/export")


@dataclass
class Model:
    """What predict needs of any model: the logits of a preprocessed batch, and how to preprocess."""

    logits: Callable[[torch.Tensor], np.ndarray]
    classes: list[str]
    data: DataConfig
    temperature: float
    checks: Clean  # the rules an input file must pass: clean's, as the training images passed them
    source: str


def onnx_model(path: Path) -> Model:
    from reprotune.serving.onnx_models import ModelCard, OnnxClassifier

    onnx = path / "model.onnx" if path.is_dir() else path
    card_path = onnx.with_name("model.json")
    if not onnx.is_file() or not card_path.is_file():
        raise InputError(
            f"--model {path}: needs an .onnx file with its model.json beside it (as export writes them)"
        )
    card = ModelCard.read(card_path)
    classifier = OnnxClassifier(onnx)
    return Model(
        lambda batch: classifier.logits(batch.numpy()),
        card.classes,
        card.data,
        card.temperature,
        card.checks,
        str(onnx),
    )


def torch_model(path: Path) -> Model:
    from reprotune.modalities import encoding as modality_encoding
    from reprotune.models.classifier import load_trained_classifier
    from reprotune.pipeline import params as params_module
    from reprotune.pipeline.atomic_io import read_json
    from reprotune.pipeline.layout import Layout
    from reprotune.pipeline.stage import as_run

    params = as_run(params_module.load())  # every auto as the pipeline resolved it (the sample's input size)
    layout = Layout(params.paths)
    classes = read_json(layout.features_meta)["classes"]
    encoding = modality_encoding.of(layout.modality)
    model, backbone = load_trained_classifier(
        params.backbone, path / "model.safetensors", len(classes), load=encoding.load
    )
    temperature = read_json(layout.metrics)["finetune"]["test"].get("temperature", 1.0)

    @torch.inference_mode()
    def logits(batch: torch.Tensor) -> np.ndarray:
        return model(batch).float().numpy()

    return Model(logits, classes, backbone.data, temperature, params.clean, str(path))


def mlflow_model(uri: str) -> Model:
    """A registered model (`models:/reprotune@candidate`): the ONNX file and card it was logged with, run as
    any exported model, so that it predicts exactly what `models/export` does."""
    import mlflow

    from reprotune.reporting.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except mlflow.exceptions.MlflowException as error:
        raise InputError(f"--model {uri}: {str(error).splitlines()[0]}") from None
    model = onnx_model(folder / "artifacts")
    model.source = uri
    return model


def load_model(spec: str) -> Model:
    path = Path(spec)
    if spec.startswith("models:/"):
        return mlflow_model(spec)
    if path.suffix == ".onnx" or (path / "model.onnx").is_file():
        return onnx_model(path)
    if (path / "model.safetensors").is_file():
        return torch_model(path)
    raise InputError(
        f"--model {spec}: not a model; give an exported folder (model.onnx + model.json, e.g. {DEFAULT_MODEL}), "
        "an .onnx file, or the fine-tuned folder (model.safetensors, e.g. models/finetuned)"
    )


class Files(Dataset):
    """Each file decoded under clean's rules and put through the eval transform; a file that fails gives a
    zero image and its reason, so that one bad file never stops a batch."""

    def __init__(self, paths: Sequence[Path], rules: Clean, data: DataConfig) -> None:
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
    paths: list[Path], model: Model, top_k: int, calibrated: bool, batch_size: int, workers: int
) -> list[dict]:
    loader = DataLoader(Files(paths, model.checks, model.data), batch_size=batch_size, num_workers=workers)
    logits, reasons = [], []
    for images, why in tqdm(loader, desc="predict", unit="batch", disable=None):
        logits.append(model.logits(images))
        reasons += list(why)
    scores = np.concatenate(logits) if logits else np.zeros((0, len(model.classes)))
    probabilities = softmax(scores / (model.temperature if calibrated else 1.0), axis=1)
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
    probabilities = softmax(scores / (model.temperature if calibrated else 1.0), axis=1)
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


def main(argv: Sequence[str] | None = None) -> int:
    from reprotune.data.datasets import worker_count
    from reprotune.pipeline import params as params_module

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "inputs",
        nargs="+",
        help="image files or folders; for a text model, CSV/JSONL files with a text column or files of one "
        "text per line",
    )
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help=f"default {DEFAULT_MODEL}")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("-o", "--output", type=Path, help="CSV file (default: standard output)")
    parser.add_argument("--no-calibration", action="store_true", help="raw softmax, no temperature")
    parser.add_argument("--batch-size", type=int, default=32)
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if options.top_k < 1 or options.batch_size < 1:
            raise InputError("--top-k and --batch-size must be at least 1")
        model = load_model(options.model)
        paths = files_in(options.inputs)
        if hasattr(model.data, "tokenize"):  # a text model
            rows = predict_texts(paths, model, options.top_k, not options.no_calibration, options.batch_size)
        else:
            rows = predict_files(
                paths,
                model,
                options.top_k,
                not options.no_calibration,
                options.batch_size,
                worker_count("auto"),
            )
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except params_module.ParamsError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    write_csv(rows, options.output)
    failed = sum(1 for row in rows if row["reason"])
    print(
        f"{len(rows) - failed} of {len(rows)} {'texts' if rows and 'text' in rows[0] else 'files'} labelled "
        f"with {model.source}" + (f"; {failed} could not be read (see the reason column)" if failed else ""),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
