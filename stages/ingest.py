"""ingest: list every source image, or every labelled text, in a manifest (path, label, given split, bytes,
sha256).

The source is `paths.raw`: images laid out as <class>/<image> or <split>/<class>/<image>, or texts in CSV or
JSON Lines files directly inside it. Which of the two it holds is the modality (`ingest.modality: auto`
finds it; holding both is an error; reprotune/modalities/files.py). It is decided here, once, and recorded
with whether the data are a built-in sample (data_kind.json, reprotune/pipeline/data_kind.py): every later stage
reads that record, and params.yaml's `auto`s are resolved from it (reprotune/pipeline/resolve.py). When the folder
holds no files, the modality's built-in sample is used instead, copied under `paths.ingested`, never into
the raw folder: scikit-learn's digits upscaled to PNG photos, or with `ingest.modality: text` Banking77
(`paths.text_sample`). Files and rows this stage cannot use get an `issue` code; the clean stage reports
them with everything else it drops.
"""

from __future__ import annotations

import logging

import pandas as pd

from reprotune.data.files import list_files
from reprotune.modalities import files as modality_files
from reprotune.pipeline import data_kind, stage
from reprotune.pipeline.atomic_io import atomic_output
from reprotune.pipeline.data_kind import DataKind
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Params
from reprotune.pipeline.resolve import resolve

log = logging.getLogger(__name__)


def ingest(params: Params) -> None:
    layout = Layout(params.paths)
    if not layout.raw.is_dir():
        raise InputError(f"{layout.raw}: folder not found; create it (it may stay empty for the sample)")
    files = list_files(layout.raw)
    found = modality_files.detect(layout.raw, files, params.ingest.modality)
    kind = DataKind(found.modality, sample=not files)
    resolve(params, kind)  # refuses, before anything is written, a key that cannot apply to these data
    with atomic_output(layout.ingested) as staging:
        staging.mkdir()
        data_kind.write(staging / layout.data_kind.name, kind)
        if files:
            manifest = found.scan(layout.raw, files)
            log.info("read %d %s (%s) under %s", len(manifest), found.units, found.modality, layout.raw)
        else:
            manifest = found.sample(layout, staging, params.ingest.sample_image_size)
        manifest.to_csv(staging / layout.ingest_manifest.name, index=False)
    log.info(
        "manifest: %d %s, %d classes",
        len(manifest),
        found.units,
        manifest["label"].replace("", pd.NA).nunique(),
    )


def main() -> None:
    stage.run(ingest, resolved=False)


if __name__ == "__main__":
    main()
