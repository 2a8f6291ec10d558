"""The one typed schema for params.yaml.

Every stage validates the whole file before touching any output, so a typo in a section a stage does not
read still stops it: the user learns about the problem on the first `dvc repro`, not halfway through.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PARAMS_FILE = Path("params.yaml")

# Every number has an upper bound too: a huge value is a typo, and it would otherwise surface as an
# overflow deep inside numpy or torch (or as a run that never ends) instead of as a line naming the key.
Count = Annotated[int, Field(gt=0, le=1_000_000)]
Epochs = Annotated[int, Field(gt=0, le=10_000)]
BatchSize = Annotated[int, Field(gt=0, le=65_536)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]  # numpy's and torch's seed range
Side = Annotated[int, Field(gt=0, le=65_535)]  # the largest JPEG side
Fraction = Annotated[float, Field(ge=0, lt=1)]
Workers = Literal["auto"] | Annotated[int, Field(ge=0, le=256)]
ImageFormat = Literal["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"]


class Section(BaseModel):
    # Unknown keys are errors (a misspelt key silently ignored is a wasted experiment). Validation runs in
    # strict JSON mode: YAML lists become tuples and ints pass as floats, but `lr: "1e-3"` (a string) is
    # rejected rather than guessed at.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Paths(Section):
    raw: str
    ingested: str
    cleaned: str
    splits: str
    features: str
    head: str
    finetuned: str
    baseline: str
    relabel: str
    unlabeled: str
    distilled: str
    target: str
    adapted: str
    exported: str
    reports: str
    checkpoints: str
    embedding_cache: str
    text_sample: str
    label_descriptions: str


class Ingest(Section):
    modality: Literal["auto", "image", "text"]
    sample_image_size: Annotated[int, Field(ge=32, le=1024)]


class Clean(Section):
    formats: Annotated[list[ImageFormat], Field(min_length=1)]
    min_side: Side
    max_aspect_ratio: Annotated[float, Field(ge=1, le=65_535)]
    max_pixels: Annotated[int, Field(gt=0, le=65_535**2)]
    background: tuple[
        Annotated[int, Field(ge=0, le=255)],
        Annotated[int, Field(ge=0, le=255)],
        Annotated[int, Field(ge=0, le=255)],
    ]
    near_duplicate_distance: Annotated[int, Field(ge=0, le=128)] | None  # bits of 256
    label_conflict: Literal["drop", "majority"]
    min_class_size: Count
    small_class: Literal["drop", "fail"]
    max_text_length: Annotated[int, Field(ge=1, le=10_000_000)]  # characters
    long_text: Literal["truncate", "drop"]


class Split(Section):
    seed: Seed
    val_fraction: Fraction
    test_fraction: Fraction

    @model_validator(mode="after")
    def _leave_room_for_training(self) -> Split:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction must be < 0.9 so that training keeps some data "
                f"(got {self.val_fraction} + {self.test_fraction})"
            )
        return self


InputSize = Annotated[int, Field(ge=16, le=1024)] | None
Probability = Annotated[float, Field(ge=0, le=1)]


class Backbone(Section):
    name: Annotated[str, Field(min_length=1)]
    weights: str | None
    input_size: InputSize
    channels_last: bool


class Featurize(Section):
    batch_size: BatchSize
    num_workers: Workers
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["float32", "bfloat16"]


class TrainHead(Section):
    C: Annotated[float, Field(gt=0, le=1e12)]
    max_iter: Count


class Augment(Section):
    scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]]
    hflip: Probability
    color_jitter: Annotated[float, Field(ge=0, le=1)]
    auto_augment: Annotated[str, Field(pattern=r"^(rand-|augmix-|trivialaugment|original|v0)")] | None
    mixup: Annotated[float, Field(ge=0, le=100)]  # Beta(alpha, alpha)
    cutmix: Annotated[float, Field(ge=0, le=100)]

    @field_validator("scale")
    @classmethod
    def _ordered(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if scale[0] > scale[1]:
            raise ValueError(f"scale must be [low, high] with low <= high (got {list(scale)})")
        return scale


class Baseline(Section):
    image_size: Annotated[int, Field(ge=4, le=128)]
    C: Annotated[list[Annotated[float, Field(gt=0, le=1e6)]], Field(min_length=1)]
    gamma: Annotated[list[Annotated[float, Field(gt=0, le=1e3)]], Field(min_length=1)]
    max_train_images: Annotated[int, Field(ge=10, le=1_000_000)]
    seed: Seed


class LearningCurve(Section):
    draws: Annotated[int, Field(ge=2, le=1000)]
    seed: Seed


class LabelIssues(Section):
    folds: Annotated[int, Field(ge=2, le=100)]
    seed: Seed
    filter_by: Literal[
        "low_self_confidence", "prune_by_noise_rate", "prune_by_class", "both", "confident_learning"
    ]
    gallery_size: Annotated[int, Field(ge=0, le=100)]


class Finetune(Section):
    seed: Seed
    device: Literal["auto", "cpu", "cuda"]
    strategy: Literal["frozen", "last_n", "full", "gradual"]
    unfreeze_last_n: Annotated[int, Field(gt=0, le=1000)]
    gradual_frozen_epochs: Annotated[int, Field(ge=0, le=10_000)]
    head_init: Literal["probe", "scratch"]
    epochs: Epochs
    batch_size: BatchSize
    optimizer: Literal["adamw", "sgd"]
    momentum: Annotated[float, Field(ge=0, lt=1)]
    lr: Annotated[float, Field(gt=0, le=10)]
    backbone_lr_factor: Annotated[float, Field(ge=0, le=100)]
    layer_decay: Annotated[float, Field(gt=0, le=1)] | None
    weight_decay: Annotated[float, Field(ge=0, le=10)]
    warmup_epochs: Annotated[float, Field(ge=0, le=10_000)]
    label_smoothing: Annotated[float, Field(ge=0, lt=1)]
    patience: Epochs
    freeze_bn_stats: bool
    augment: Augment
    num_workers: Workers
    compile: bool


class Distill(Section):
    """A smaller student trained to match the fine-tuned network (the teacher). What is not here (batch size,
    optimizer, augmentation, warm-up, weight decay, label smoothing, device, workers) is finetune's."""

    enabled: bool
    student: Annotated[str, Field(min_length=1)]
    student_weights: str | None
    input_size: InputSize
    temperature: Annotated[float, Field(gt=0, le=100)]
    alpha: Probability  # weight of the label loss; 1 - alpha weighs the distillation loss
    epochs: Epochs
    patience: Epochs
    lr: Annotated[float, Field(gt=0, le=10)]
    mixup: Annotated[float, Field(ge=0, le=100)]  # Beta(alpha, alpha); 0 = off
    label_only: bool
    latency_runs: Annotated[int, Field(ge=1, le=10_000)]
    seed: Seed


class Adapt(Section):
    """Domain adaptation to the unlabelled images of `paths.target`; the target-aware fine-tune trains
    with finetune's settings."""

    method: Literal["none", "adabn", "coral", "finetune"]
    target_loss: Literal["mcc", "entropy"]
    weight: Annotated[float, Field(ge=0, le=100)]
    coral_regularization: Annotated[float, Field(gt=0, le=1e6)]
    seed: Seed


class Evaluate(Section):
    top_k: Annotated[int, Field(gt=0, le=1000)]
    calibration_bins: Annotated[int, Field(ge=2, le=100)]
    bootstrap_resamples: Annotated[int, Field(ge=100, le=100_000)]
    seed: Seed
    temperature_scaling: bool
    gallery_size: Annotated[int, Field(ge=0, le=100)]


class Export(Section):
    opset: Annotated[int, Field(ge=17, le=23)]
    calibration_images: Annotated[int, Field(gt=0, le=100_000)]
    seed: Seed
    max_logit_difference: Annotated[float, Field(gt=0, le=1)]


class Track(Section):
    experiment: Annotated[str, Field(min_length=1)]
    model_name: Annotated[str, Field(min_length=1)]
    alias: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")]


class SampleBackbone(Section):
    input_size: InputSize


class SampleAugment(Section):
    hflip: Probability


class SampleFinetune(Section):
    augment: SampleAugment


class TextBackbone(Section):
    name: Annotated[str, Field(min_length=1)]
    weights: str | None
    channels_last: bool


class TextFinetune(Section):
    epochs: Epochs
    batch_size: BatchSize
    lr: Annotated[float, Field(gt=0, le=10)]
    backbone_lr_factor: Annotated[float, Field(ge=0, le=100)]
    warmup_epochs: Annotated[float, Field(ge=0, le=10_000)]
    weight_decay: Annotated[float, Field(ge=0, le=10)]


class Text(Section):
    """The text modality's own values for a few keys of the sections above (same names, same rules). They
    replace params.yaml's values while the pipeline runs on text (the manifest says so), and only then."""

    backbone: TextBackbone
    finetune: TextFinetune


class Sample(Section):
    """The built-in sample's own values for a few keys of the sections above (same names, same rules). They
    replace params.yaml's values while the pipeline runs on the sample, and only then: the sample is 8x8
    digits upscaled, which want what would hurt photos (mirrored digits are other digits)."""

    backbone: SampleBackbone
    finetune: SampleFinetune


class Params(Section):
    paths: Paths
    ingest: Ingest
    clean: Clean
    split: Split
    backbone: Backbone
    featurize: Featurize
    train_head: TrainHead
    baseline: Baseline
    learning_curve: LearningCurve
    label_issues: LabelIssues
    finetune: Finetune
    distill: Distill
    adapt: Adapt
    evaluate: Evaluate
    export: Export
    track: Track
    sample: Sample
    text: Text

    def on_sample(self) -> Params:
        """These params with the sample's own values in place of the keys it sets."""
        return Params.model_validate_json(
            json.dumps(_merge(self.model_dump(mode="json"), self.sample.model_dump(mode="json")))
        )

    def on_text(self) -> Params:
        """These params with the text modality's own values in place of the keys it sets."""
        return Params.model_validate_json(
            json.dumps(_merge(self.model_dump(mode="json"), self.text.model_dump(mode="json")))
        )

    def text_settings(self) -> dict[str, Any]:
        """The keys the text section sets, dotted, with its values."""
        return flatten(self.text.model_dump(mode="json"))

    def sample_settings(self) -> dict[str, Any]:
        """The keys the sample sets, dotted, with its values."""
        return flatten(self.sample.model_dump(mode="json"))


def _merge(tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(tree)
    for key, value in overrides.items():
        merged[key] = _merge(tree[key], value) if isinstance(value, dict) else value
    return merged


class _Yaml12FloatLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `1e-3` is a string; DVC (ruamel) reads it as a float. Agree with DVC."""


_Yaml12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


class ParamsError(Exception):
    """params.yaml is missing, unreadable or invalid; `problems` has one readable line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _describe(error: dict[str, Any], source: Path) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{source}: {key}: unknown key (check the spelling against the schema in reprotune/params.py)"
    if error["type"] == "missing":
        return f"{source}: {key}: missing; it must be set"
    message = error["msg"].removeprefix("Value error, ")
    return f"{source}: {key}: {message} (got {error['input']!r})"


def validate(raw: Any, source: Path = PARAMS_FILE) -> Params:
    """Turn an already-parsed params mapping into Params, or raise ParamsError listing every problem."""
    if not isinstance(raw, dict):
        raise ParamsError([f"{source}: the file must be a mapping of sections (got {type(raw).__name__})"])
    try:
        return Params.model_validate_json(json.dumps(raw))
    except ValidationError as error:
        raise ParamsError([_describe(e, source) for e in error.errors()]) from None


def load(path: Path = PARAMS_FILE) -> Params:
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12FloatLoader)  # noqa: S506 (safe loader)
    except FileNotFoundError:
        raise ParamsError([f"{path}: not found; run the stage from the project root"]) from None
    except yaml.YAMLError as error:
        raise ParamsError([f"{path}: not valid YAML: {error}"]) from None
    return validate(raw, path)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the key style of `dvc params diff` and of MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
