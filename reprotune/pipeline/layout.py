"""Where every stage reads and writes, derived from `params.paths`, and how it writes.

The folders come from params.yaml, which dvc.yaml interpolates too, so a path is written once; the file
names inside them live here (tests/test_layout.py checks dvc.yaml declares each one). How outputs are
written (atomically) is reprotune/pipeline/atomic_io.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reprotune.pipeline.errors import InputError
from reprotune.pipeline.params import Paths

if TYPE_CHECKING:
    import pandas as pd


def project_root(folder: Path | None = None) -> Path:
    """The project the stage belongs to. `dvc exp run --queue/--temp` runs stages in a copy under
    <project>/.dvc/tmp/exps/; their runs must land in the project's store, not in the throwaway copy's."""
    folder = (folder or Path.cwd()).resolve()
    parts = folder.parts
    for index in range(len(parts) - 3):
        if parts[index : index + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:index])
    return folder


SPLITS = ("train", "val", "test")
MODELS = ("baseline", "head", "finetune")  # the order of every table and plot
STUDENTS = ("distilled", "label_only")  # distill's two students, evaluated after MODELS when it is enabled


@dataclass(frozen=True)
class Layout:
    paths: Paths

    # ingest
    @property
    def raw(self) -> Path:
        return Path(self.paths.raw)

    @property
    def ingested(self) -> Path:
        return Path(self.paths.ingested)

    @property
    def ingest_manifest(self) -> Path:
        return self.ingested / "manifest.csv"

    @property
    def sample(self) -> Path:
        return self.ingested / "sample"

    @property
    def text_sample(self) -> Path:
        """The built-in text sample as shipped (read-only)."""
        return Path(self.paths.text_sample)

    @property
    def text_sample_copy(self) -> Path:
        """ingest's copy of it, which the manifest names, when the pipeline runs on it."""
        return self.ingested / "text_sample"

    @property
    def data_kind(self) -> Path:
        """What the data are (images or texts, a built-in sample or not): ingest decides it, once."""
        return self.ingested / "data_kind.json"

    @property
    def modality(self) -> str:
        """`image` or `text`, as ingest recorded it."""
        from reprotune.pipeline import data_kind

        return data_kind.read(self.data_kind).modality

    # clean
    @property
    def cleaned(self) -> Path:
        return Path(self.paths.cleaned)

    @property
    def clean_manifest(self) -> Path:
        return self.cleaned / "manifest.csv"

    @property
    def resized_copies(self) -> Path:
        return self.cleaned / "resized.safetensors"

    @property
    def duplicate_hashes(self) -> Path:
        """Each kept image's near-duplicate hash set, row i for the clean manifest's row i."""
        return self.cleaned / "hashes.safetensors"

    @property
    def cleaning_report(self) -> Path:
        return self.reports / "cleaning.json"

    @property
    def cleaning_summary(self) -> Path:
        return self.reports / "cleaning.md"

    @property
    def class_balance(self) -> Path:
        return self.reports / "class_balance.png"

    # split
    @property
    def splits(self) -> Path:
        return Path(self.paths.splits)

    @property
    def split_manifest(self) -> Path:
        return self.splits / "manifest.csv"

    @property
    def split_report(self) -> Path:
        return self.reports / "split.json"

    # featurize
    @property
    def features(self) -> Path:
        return Path(self.paths.features)

    def features_file(self, split: str) -> Path:
        return self.features / f"{split}.safetensors"

    @property
    def features_meta(self) -> Path:
        return self.features / "features.json"

    # leakage
    @property
    def leakage_report(self) -> Path:
        return self.reports / "leakage.json"

    @property
    def leakage_pairs(self) -> Path:
        return self.reports / "leakage.csv"

    @property
    def label_descriptions(self) -> Path:
        """Yours to edit (text only): label,description rows that zero-shot embeds instead of class names."""
        return Path(self.paths.label_descriptions)

    @property
    def label_embeddings(self) -> Path:
        """Text only: each class name's embedding, in the classes' order (zero-shot)."""
        return self.features / "labels.safetensors"

    # train_head
    @property
    def head(self) -> Path:
        return Path(self.paths.head)

    @property
    def head_weights(self) -> Path:
        return self.head / "head.safetensors"

    @property
    def head_meta(self) -> Path:
        return self.head / "head.json"

    # baseline
    @property
    def baseline(self) -> Path:
        return Path(self.paths.baseline)

    @property
    def baseline_scores(self) -> Path:
        """The baseline's log-probabilities on val and test (softmax of them gives its probabilities)."""
        return self.baseline / "scores.safetensors"

    @property
    def baseline_meta(self) -> Path:
        return self.baseline / "baseline.json"

    # learning_curve
    @property
    def learning_curve(self) -> Path:
        return self.reports / "learning_curve.json"

    @property
    def learning_curve_table(self) -> Path:
        """The same points as a flat table, for `dvc plots`."""
        return self.reports / "learning_curve.csv"

    @property
    def learning_curve_plot(self) -> Path:
        return self.reports / "learning_curve.png"

    # label_issues
    @property
    def relabel(self) -> Path:
        return Path(self.paths.relabel)

    @property
    def label_issues(self) -> Path:
        return self.reports / "label_issues.csv"

    @property
    def label_issues_gallery(self) -> Path:
        return self.reports / "label_issues.png"

    # finetune
    @property
    def finetuned(self) -> Path:
        return Path(self.paths.finetuned)

    @property
    def finetuned_weights(self) -> Path:
        return self.finetuned / "model.safetensors"

    @property
    def finetuned_meta(self) -> Path:
        return self.finetuned / "finetune.json"

    @property
    def embedding_cache(self) -> Path:
        """Shared by every copy of the project (see project_root): a relative path is the project's."""
        folder = Path(self.paths.embedding_cache)
        return folder if folder.is_absolute() else project_root() / folder

    @property
    def checkpoint(self) -> Path:
        return Path(self.paths.checkpoints) / "finetune"

    @property
    def tune_study(self) -> Path:
        """tune's Optuna study (SQLite), shared by every copy of the project (see project_root)."""
        path = Path(self.paths.tune_study)
        return path if path.is_absolute() else project_root() / path

    @property
    def tune_checkpoints(self) -> Path:
        return Path(self.paths.checkpoints) / "tune"

    @property
    def tune_summary(self) -> Path:
        return self.reports / "tune.json"

    @property
    def tune_report(self) -> Path:
        return self.reports / "tune.md"

    def training_copies(self, key: str) -> Path:
        """finetune's resized copies of its training images for one training set and side (see
        stages/finetune.py: training_copies); kept beside the checkpoint while a run may resume."""
        return Path(self.paths.checkpoints) / f"train-copies-{key}.safetensors"

    @property
    def finetune_history(self) -> Path:
        return self.reports / "finetune_history.csv"

    # distill
    @property
    def unlabeled(self) -> Path:
        return Path(self.paths.unlabeled)

    @property
    def distilled(self) -> Path:
        return Path(self.paths.distilled)

    def student_weights(self, student: str) -> Path:
        return self.distilled / f"{student}.safetensors"

    @property
    def distill_meta(self) -> Path:
        return self.distilled / "distill.json"

    def distill_checkpoint(self, student: str) -> Path:
        return Path(self.paths.checkpoints) / f"distill-{student}"

    @property
    def distill_history(self) -> Path:
        return self.reports / "distill_history.csv"

    # adapt
    @property
    def target(self) -> Path:
        return Path(self.paths.target)

    @property
    def adapted(self) -> Path:
        return Path(self.paths.adapted)

    @property
    def adapt_meta(self) -> Path:
        return self.adapted / "adapt.json"

    @property
    def adapt_report(self) -> Path:
        return self.reports / "adapt.json"

    @property
    def adapt_checkpoint(self) -> Path:
        return Path(self.paths.checkpoints) / "adapt"

    @property
    def latency(self) -> Path:
        """Measured, not computed: the one output that differs between two runs of the same params and data."""
        return self.reports / "latency.json"

    # evaluate
    @property
    def reports(self) -> Path:
        return Path(self.paths.reports)

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics.json"

    @property
    def per_class(self) -> Path:
        return self.reports / "per_class.json"

    @property
    def predictions(self) -> Path:
        return self.reports / "predictions.csv"

    @property
    def report(self) -> Path:
        return self.reports / "report.md"

    def report_section(self, stage: str) -> Path:
        """The part of report.md that `stage` writes (the stages own their sections; reprotune/reporting/report.py
        puts them in order)."""
        return self.reports / "sections" / f"{stage}.md"

    @property
    def plots(self) -> Path:
        return self.reports / "plots"

    # export
    @property
    def exported(self) -> Path:
        return Path(self.paths.exported)

    @property
    def onnx_model(self) -> Path:
        return self.exported / "model.onnx"

    @property
    def int8_model(self) -> Path:
        return self.exported / "model.int8.onnx"

    @property
    def student_export(self) -> Path:
        """The distilled student's exported files (same names as the fine-tuned network's), when distill ran."""
        return self.exported / "student"

    @property
    def model_card(self) -> Path:
        return self.exported / "model.json"

    @property
    def export_report(self) -> Path:
        return self.reports / "export.json"

    @property
    def export_summary(self) -> Path:
        return self.reports / "export.md"

    # track
    @property
    def mlflow_run(self) -> Path:
        return self.reports / "mlflow_run.json"

    def read_manifest(self, manifest: Path, dtype: Any = str) -> pd.DataFrame:
        """A manifest whose every image path lies inside the data folder or the built-in sample, and whose
        every file a stage will open also resolves there with symlinks followed: an absolute path elsewhere,
        a `..` or a link out is refused, so no stage reads a file outside the data it was given. (Rows the
        ingest stage already flagged, `issue` set, are reported by clean and never opened.)"""
        import pandas as pd

        table = pd.read_csv(manifest, dtype=dtype, keep_default_na=False)
        folders = (self.raw, self.ingested)
        opened = table["issue"] == "" if "issue" in table else pd.Series(True, index=table.index)
        for path, will_open in zip(table["path"], opened, strict=True):
            inside = any(Path(os.path.abspath(path)).is_relative_to(os.path.abspath(f)) for f in folders)
            if inside and will_open:
                inside = any(Path(path).resolve().is_relative_to(f.resolve()) for f in folders)
            if not inside:
                raise InputError(
                    f"{manifest}: image path {path!r} is outside the data folders ({self.raw}, "
                    f"{self.ingested}); a manifest may only name files inside them"
                )
        return table
