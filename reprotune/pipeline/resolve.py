"""Every `auto` in params.yaml turned into the value that runs, in this one place, from what ingest found.

A key whose good value depends on the data says `auto` in params.yaml; its rule is in RULES below (and in
the comment beside the key). Two things decide: the modality (images or texts) and whether the data are
the built-in image sample, both recorded once by ingest (reprotune/pipeline/data_kind.py). An explicit value always
wins, except on data it cannot apply to: a key for images only (or texts only) holding a value on the other
modality, or a key that switches on something the modality lacks (distill on texts), is refused with one
line naming it, before any output is touched. Nothing is silently replaced.

Each key's resolved value depends only on that key's written value and on the data kind, never on another
key: so a stage that reads a key depends on exactly that key (dvc.yaml, tests/test_seams.py), and this
module, which only puts values in place of `auto`, counts as reading nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from reprotune.pipeline.data_kind import IMAGE, TEXT, DataKind
from reprotune.pipeline.params import Params, ParamsError, flatten

log = logging.getLogger(__name__)

NOT_USED = object()  # a key's value on data it does not apply to (refused when given explicitly)


@dataclass(frozen=True)
class Rule:
    """What `auto` becomes: `image` on an image folder, `sample` on the built-in image sample (default: as
    `image`), `text` on texts. `neutral` is what a key holds where it does not apply: `auto` as written,
    or, for a key that shared code reads on every modality (the training loop's channels_last), a harmless
    value; `why` is shown in the
    report next to the value."""

    why: str
    image: Any = NOT_USED
    text: Any = NOT_USED
    sample: Any = NOT_USED
    neutral: Any = "auto"

    def value(self, kind: DataKind) -> Any:
        if kind.modality == TEXT:
            return self.text
        return self.image if self.sample is NOT_USED or not kind.sample else self.sample

    def applies(self, kind: DataKind) -> bool:
        return self.value(kind) is not NOT_USED


IMAGE_FORMATS = ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"]

RULES: dict[str, Rule] = {
    "backbone.name": Rule(
        "images: EfficientNet-Lite0 (shipped); texts: all-MiniLM-L6-v2 (shipped)",
        image="tf_efficientnet_lite0",
        text="sentence-transformers/all-MiniLM-L6-v2",
    ),
    "backbone.input_size": Rule(
        "the backbone's own; 128 on the sample (its 64 px digits gain nothing from 224)",
        image=None,
        sample=128,
    ),
    "backbone.channels_last": Rule("images: on (about 1.4x faster for Lite0)", image=True, neutral=False),
    "clean.formats": Rule("images: every format Pillow opens safely", image=IMAGE_FORMATS),
    "clean.min_side": Rule("images: 32 px", image=32),
    "clean.max_aspect_ratio": Rule("images: 10", image=10.0),
    "clean.max_pixels": Rule("images: Pillow's own limit", image=89478485),
    "clean.background": Rule("images: white", image=[255, 255, 255]),
    "clean.near_duplicate_distance": Rule("images: 40 bits of 256", image=40),
    "clean.num_workers": Rule("images: every core (resolved when clean runs)", image="auto"),
    "leakage.min_cosine": Rule(
        "images: 0.9 (every copy beyond clean's grouping distance, no distinct photo pair); off on the sample "
        "(distinct 8x8 digits embed above 0.9) and on texts",
        image=0.9,
        sample=None,
        text=None,
    ),
    "clean.max_text_length": Rule("texts: 2000 characters", text=2000),
    "clean.long_text": Rule("texts: truncate", text="truncate"),
    "baseline.image_size": Rule("images: 32 px", image=32),
    "baseline.gamma": Rule("images: 0.3, 1, 3", image=[0.3, 1.0, 3.0]),
    "baseline.max_train_images": Rule("images: 2000 (an SVM costs the square)", image=2000),
    "finetune.epochs": Rule("images: 10; texts: 3", image=10, text=3),
    "finetune.backbone_lr_factor": Rule("images: 0.3; texts: 0.05", image=0.3, text=0.05),
    "finetune.warmup_epochs": Rule("images: 0.2; texts: 0.1", image=0.2, text=0.1),
    "finetune.freeze_bn_stats": Rule("images: on", image=True, neutral=True),
    "finetune.augment.scale": Rule("images: 0.6 to 1", image=[0.6, 1.0]),
    "finetune.augment.hflip": Rule(
        "photos: 0.5; 0 on the sample (a mirrored digit is another digit)", image=0.5, sample=0.0
    ),
    "finetune.augment.color_jitter": Rule("images: 0.1", image=0.1),
    "export.calibration_images": Rule(
        "images: 128 (static int8 calibrates on training images; texts use dynamic int8, which needs none)",
        image=128,
    ),
}

# Keys that switch on what a modality does not have: there, only their `off` value is accepted.
OFF_ON_TEXT: dict[str, tuple[Any, str]] = {
    "distill.enabled": (False, "distillation is built for image networks"),
    "adapt.method": ("none", "adaptation adapts image networks to target images"),
    "finetune.augment.auto_augment": (None, "augmentation policies transform images"),
    "finetune.augment.mixup": (0.0, "mixup mixes images"),
    "finetune.augment.cutmix": (0.0, "cutmix mixes images"),
}


@dataclass(frozen=True)
class Choice:
    """One key as it runs: what params.yaml says, the value used, and why (for auto)."""

    written: Any
    value: Any
    why: str = ""
    used: bool = True


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *sections, leaf = key.split(".")
    for section in sections:
        tree = tree[section]
    tree[leaf] = value


def choices(params: Params, kind: DataKind) -> dict[str, Choice]:
    """Every auto-able or modality-bound key: written value, value as run, and why. Raises ParamsError with
    one line per key that cannot apply to this data."""
    flat = flatten(params.model_dump(mode="json"))
    problems, found = [], {}
    data = "texts" if kind.modality == TEXT else "images"
    earlier = decisions(
        params
    )  # params resolved already: a key still at its resolved value was written as then
    for key, rule in RULES.items():
        written = flat[key]
        if key in earlier and earlier[key].value == written:
            written = earlier[key].written
        if not rule.applies(kind):
            if written not in ("auto", rule.neutral):  # the neutral value says the same: off
                only = "texts" if kind.modality == IMAGE else "images"
                problems.append(
                    f"params.yaml: {key}: applies to {only} only and the data are {data} "
                    f"(ingest.modality); set it to auto (got {written!r})"
                )
            found[key] = Choice(written, rule.neutral, f"not used on {data}", used=False)
        elif written == "auto":
            found[key] = Choice(written, rule.value(kind), rule.why)
        else:
            found[key] = Choice(written, written)
    if kind.modality == TEXT:
        for key, (off, reason) in OFF_ON_TEXT.items():
            if flat[key] != off:
                problems.append(
                    f"params.yaml: {key}: {reason}; the data are texts (set it to {json.dumps(off)}, "
                    f"got {flat[key]!r})"
                )
    if problems:
        raise ParamsError(problems)
    return found


def resolve(params: Params, kind: DataKind) -> Params:
    """params with every `auto` replaced by its value for this data (see the module's docstring)."""
    tree = params.model_dump(mode="json")
    made = choices(params, kind)
    for key, choice in made.items():
        _set(tree, key, choice.value)
    resolved = Params.model_validate_json(json.dumps(tree))
    resolved._as_run = made
    return resolved


def for_data(params: Params, modality: str = IMAGE, sample: bool = False) -> Params:
    """params resolved for data of a kind known without ingest (the benchmarks' generated photos)."""
    return resolve(params, DataKind(modality, sample))


def decisions(params) -> dict[str, Choice]:
    """The record `resolve` kept of the keys it decided (empty for params that held no `auto`). The argument
    is not annotated Params on purpose: this reads the record, no key (tests/test_seams.py)."""
    return dict(params._as_run or {})


def log_choices(params, kind: DataKind) -> None:
    """One INFO line naming what each `auto` became (the report and the MLflow run record the same)."""
    made = {k: c.value for k, c in decisions(params).items() if c.used and c.written == "auto"}
    if made:
        log.info("%s: auto -> %s", kind.describe(), ", ".join(f"{k}={v!r}" for k, v in made.items()))
