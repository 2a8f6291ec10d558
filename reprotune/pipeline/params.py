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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

PARAMS_FILE = Path("params.yaml")

# Every number has an upper bound too: a huge value is a typo, and it would otherwise surface as an
# overflow deep inside numpy or torch (or as a run that never ends) instead of as a line naming the key.
Count = Annotated[int, Field(gt=0, le=1_000_000)]
Epochs = Annotated[int, Field(gt=0, le=10_000)]
BatchSize = Annotated[int, Field(gt=0, le=65_536)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]  # numpy's and torch's seed range
Side = Annotated[int, Field(gt=0, le=65_535)]  # the largest JPEG side
Fraction = Annotated[float, Field(ge=0, lt=1)]
Auto = Literal[
    "auto"
]  # resolved by reprotune/pipeline/resolve.py from the data ingest found (the rule is beside the key)
Workers = Auto | Annotated[int, Field(ge=0, le=256)]
# auto (CUDA when visible, else the CPU), cpu, cuda, or one GPU of several: cuda:1
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]{1,2})?)$")]
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
    tune_study: str
    text_sample: str
    label_descriptions: str


class Ingest(Section):
    modality: Literal["auto", "image", "text"]
    sample_image_size: Annotated[int, Field(ge=32, le=1024)]


class InputChecks(Section):
    """clean's rules that one input passes or fails on its own: what clean applies to each file or text, and
    what predict, serving, distill and adapt apply to new inputs. A model card records these (and only these:
    how clean grouped, dropped or ran changes no model's inputs)."""

    formats: Auto | Annotated[list[ImageFormat], Field(min_length=1)]
    min_side: Auto | Side
    max_aspect_ratio: Auto | Annotated[float, Field(ge=1, le=65_535)]
    max_pixels: Auto | Annotated[int, Field(gt=0, le=65_535**2)]
    background: (
        Auto
        | tuple[
            Annotated[int, Field(ge=0, le=255)],
            Annotated[int, Field(ge=0, le=255)],
            Annotated[int, Field(ge=0, le=255)],
        ]
    )
    max_text_length: Auto | Annotated[int, Field(ge=1, le=10_000_000)]  # characters
    long_text: Auto | Literal["truncate", "drop"]


class Clean(InputChecks):
    near_duplicate_distance: Auto | Annotated[int, Field(ge=0, le=128)] | None  # bits of 256
    label_conflict: Literal["drop", "majority"]
    min_class_size: Count
    small_class: Literal["drop", "fail"]
    num_workers: Workers


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
    name: Annotated[str, Field(min_length=1)]  # `auto` too
    weights: str | None
    input_size: Auto | InputSize
    channels_last: Auto | bool


class Featurize(Section):
    batch_size: BatchSize
    num_workers: Workers
    device: Device
    precision: Literal["float32", "bfloat16"]


class Leakage(Section):
    min_cosine: Auto | Annotated[float, Field(gt=0, le=1)] | None


ClassWeights = Literal["none", "balanced", "effective"]  # reprotune/models/imbalance.py
EffectiveBeta = Annotated[float, Field(ge=0.5, lt=1)]
SelectionMetric = Literal["accuracy", "macro_f1", "balanced_accuracy"]


InverseRegularisation = Annotated[float, Field(gt=0, le=1e12)]


class TrainHead(Section):
    C: (
        InverseRegularisation | Annotated[list[InverseRegularisation], Field(min_length=1)]
    )  # a list: the best on val
    selection_metric: SelectionMetric  # what picks C from a list
    max_iter: Count
    class_weights: ClassWeights
    class_weight_beta: EffectiveBeta  # with class_weights: effective


class Augment(Section):
    scale: Auto | tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]]
    hflip: Auto | Probability
    color_jitter: Auto | Annotated[float, Field(ge=0, le=1)]
    auto_augment: Annotated[str, Field(pattern=r"^(rand-|augmix-|trivialaugment|original|v0)")] | None
    mixup: Annotated[float, Field(ge=0, le=100)]  # Beta(alpha, alpha)
    cutmix: Annotated[float, Field(ge=0, le=100)]

    @field_validator("scale")
    @classmethod
    def _ordered(cls, scale: str | tuple[float, float]) -> str | tuple[float, float]:
        if scale != "auto" and scale[0] > scale[1]:
            raise ValueError("scale must be [low, high] with low <= high")
        return scale


class Baseline(Section):
    image_size: Auto | Annotated[int, Field(ge=4, le=128)]
    C: Annotated[list[Annotated[float, Field(gt=0, le=1e6)]], Field(min_length=1)]
    gamma: Auto | Annotated[list[Annotated[float, Field(gt=0, le=1e3)]], Field(min_length=1)]
    max_train_images: Auto | Annotated[int, Field(ge=10, le=1_000_000)]
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
    device: Device
    strategy: Literal["frozen", "last_n", "full", "gradual"]
    unfreeze_last_n: Annotated[int, Field(gt=0, le=1000)]
    gradual_frozen_epochs: Annotated[int, Field(ge=0, le=10_000)]
    head_init: Literal["probe", "scratch"]
    epochs: Auto | Epochs
    batch_size: BatchSize
    optimizer: Literal["adamw", "sgd"]
    momentum: Annotated[float, Field(ge=0, lt=1)]
    lr: Annotated[float, Field(gt=0, le=10)]
    backbone_lr_factor: Auto | Annotated[float, Field(ge=0, le=100)]
    layer_decay: Annotated[float, Field(gt=0, le=1)] | None
    weight_decay: Annotated[float, Field(ge=0, le=10)]
    warmup_epochs: Auto | Annotated[float, Field(ge=0, le=10_000)]
    label_smoothing: Annotated[float, Field(ge=0, lt=1)]
    class_weights: ClassWeights
    class_weight_beta: EffectiveBeta  # with class_weights: effective
    selection_metric: SelectionMetric
    sampler: Literal["shuffle", "balanced"]
    patience: Epochs
    freeze_bn_stats: Auto | bool
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


SearchKey = Annotated[str, Field(pattern=r"^finetune\.[a-z_.]+$")]


class SearchRange(Section):
    """A number drawn between low and high (inclusive), on a log scale with `log`; a whole number for a key
    that takes whole numbers (epochs, patience)."""

    key: SearchKey
    low: int | float
    high: int | float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> SearchRange:
        if self.low >= self.high:
            raise ValueError(f"low must be below high (got {self.low} and {self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0 (got {self.low})")
        return self


class SearchChoices(Section):
    """One of these values (any the key accepts: a string, a number, a list such as an augment scale)."""

    key: SearchKey
    choices: Annotated[list[Any], Field(min_length=1)]


def _leaf_annotation(key: str) -> Any:
    """The schema of a key written `section.a.b` (its type with the field's constraints), or None when there
    is no such leaf."""
    model: Any = Params
    field = None
    for part in key.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return None
        field = fields[part]
        model = field.annotation
    if field is None or (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    return Annotated[model, field]  # the FieldInfo carries the bounds (gt, le) pydantic moved off the type


def whole_numbers(key: str) -> bool:
    """Whether a finetune key takes whole numbers only (then a range draws integers)."""
    from typing import get_args

    def leaves(annotation: Any) -> set[Any]:
        args = get_args(annotation)
        if not args:
            return {annotation}
        if getattr(annotation, "__metadata__", None) is not None:  # Annotated[int, Field(...)]
            return leaves(args[0])
        return set().union(*(leaves(a) for a in args))

    found = leaves(_leaf_annotation(key))
    return int in found and float not in found


class Tune(Section):
    """tune: an Optuna search (TPE, seeded; median pruning on val per epoch) over finetune's keys, scored on
    val by finetune.selection_metric (reprotune/training/tuning.py)."""

    enabled: bool
    trials: Annotated[int, Field(gt=0, le=10_000)]  # finished trials (complete or pruned) in the study
    minutes: Annotated[float, Field(gt=0, le=100_000)] | None  # this run's wall-clock budget
    seed: Seed
    pruning: bool
    space: Annotated[list[SearchRange | SearchChoices], Field(min_length=1)]

    def dimensions(self) -> dict[str, SearchRange | SearchChoices]:
        """The space by key."""
        return {dimension.key: dimension for dimension in self.space}

    @field_validator("space")
    @classmethod
    def _finetune_keys_and_values(cls, space: list[Any]) -> list[Any]:
        from pydantic import TypeAdapter

        keys = [dimension.key for dimension in space]
        if len(set(keys)) < len(keys):
            raise ValueError(f"each key once (got {keys})")
        for dimension in space:
            key = dimension.key
            annotation = _leaf_annotation(key)
            if annotation is None:
                raise ValueError(f"{key}: not a finetune key, e.g. finetune.lr or finetune.augment.scale")
            candidates = (
                dimension.choices if isinstance(dimension, SearchChoices) else [dimension.low, dimension.high]
            )
            for value in candidates:
                try:
                    TypeAdapter(annotation).validate_python(value, strict=not isinstance(value, list))
                except ValidationError as error:
                    reason = error.errors()[-1]["msg"]
                    raise ValueError(f"{key}: {value!r} is not a value it takes ({reason})") from None
        return space


class Evaluate(Section):
    top_k: Annotated[int, Field(gt=0, le=1000)]
    calibration_bins: Annotated[int, Field(ge=2, le=100)]
    bootstrap_resamples: Annotated[int, Field(ge=100, le=100_000)]
    seed: Seed
    temperature_scaling: bool
    gallery_size: Annotated[int, Field(ge=0, le=100)]


class Export(Section):
    opset: Annotated[int, Field(ge=17, le=23)]
    calibration_images: Auto | Annotated[int, Field(gt=0, le=100_000)]
    seed: Seed
    max_logit_difference: Annotated[float, Field(gt=0, le=1)]
    min_int8_agreement: Annotated[float, Field(ge=0, le=1)]


class Track(Section):
    experiment: Annotated[str, Field(min_length=1)]
    model_name: Annotated[str, Field(min_length=1)]
    alias: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")]


class Params(Section):
    paths: Paths
    ingest: Ingest
    clean: Clean
    split: Split
    backbone: Backbone
    featurize: Featurize
    leakage: Leakage
    train_head: TrainHead
    baseline: Baseline
    learning_curve: LearningCurve
    label_issues: LabelIssues
    finetune: Finetune
    tune: Tune
    distill: Distill
    adapt: Adapt
    evaluate: Evaluate
    export: Export
    track: Track
    # What reprotune/pipeline/resolve.py decided for each auto-able key (key -> Choice); None before resolution.
    _as_run: dict[str, Any] | None = PrivateAttr(default=None)


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


# Sections that once replaced other keys' values behind the user's back; their keys now say `auto`.
RETIRED_SECTIONS = {
    "sample": "this section is gone: its keys (backbone.input_size, finetune.augment.hflip) say auto, which "
    "gives the sample its values; an explicit value is used as written. Remove the section",
    "text": "this section is gone: backbone.name, finetune.epochs, backbone_lr_factor and warmup_epochs say "
    "auto, which gives texts their values; an explicit value is used as written. Remove the section",
}


def _key_of(location: tuple) -> str:
    """The dotted params key an error is about: its location's leading field names (pydantic appends the
    union member that failed, e.g. `literal['auto']` or `constrained-int`, and list indices)."""
    model: Any = Params
    parts = []
    for part in location:
        fields = getattr(model, "model_fields", None)
        if not isinstance(part, str) or fields is None or part not in fields:
            break
        parts.append(part)
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return ".".join(parts) or "(top level)"


def _nearest_keys(location: tuple) -> str:
    """Did-you-mean for a misspelt key: the closest keys its section accepts, or all of them when none is
    close (a short list), so the line alone is enough to fix the file."""
    import difflib

    model: Any = Params
    for part in location[:-1]:
        model = model.model_fields[part].annotation if part in getattr(model, "model_fields", {}) else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return "check the spelling against the schema in reprotune/pipeline/params.py"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(str(location[-1]), allowed, n=3, cutoff=0.6)
    section = ".".join(map(str, location[:-1])) or "the top level"
    if close:
        return "did you mean " + " or ".join(f"'{name}'" for name in close) + "?"
    return f"{section} accepts: {', '.join(allowed)}"


def _describe(errors: list[dict[str, Any]], source: Path) -> list[str]:
    """One line per key: a value that may also be `auto` fails twice (not `auto`, and not valid as a value);
    the line gives the second reason and says that auto is allowed."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for error in errors:
        by_key.setdefault(_key_of(error["loc"]), []).append(error)
    lines = []
    for key, found in by_key.items():
        first = found[0]
        if first["type"] == "extra_forbidden":
            key = ".".join(map(str, first["loc"]))
            if key in RETIRED_SECTIONS:
                lines.append(f"{source}: {key}: {RETIRED_SECTIONS[key]}")
                continue
            lines.append(f"{source}: {key}: unknown key; {_nearest_keys(first['loc'])}")
            continue
        if first["type"] == "missing" and len(first["loc"]) == key.count(".") + 1:
            lines.append(f"{source}: {key}: missing; it must be set")
            continue
        autos = [e for e in found if e["type"] == "literal_error" and "literal['auto']" in map(str, e["loc"])]
        rest = [e for e in found if e not in autos] or found
        message = "; ".join(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in rest))
        if autos and rest is not found:
            message += " (or auto)"
        lines.append(f"{source}: {key}: {message} (got {rest[0]['input']!r})")
    return lines


def validate(raw: Any, source: Path = PARAMS_FILE) -> Params:
    """Turn an already-parsed params mapping into Params, or raise ParamsError listing every problem."""
    if not isinstance(raw, dict):
        raise ParamsError([f"{source}: the file must be a mapping of sections (got {type(raw).__name__})"])
    try:
        return Params.model_validate_json(json.dumps(raw))
    except ValidationError as error:
        raise ParamsError(_describe(error.errors(), source)) from None


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
