"""What you write is what runs: every `auto` resolved in one place (reprotune/pipeline/resolve.py), an explicit value
always used as written, and a key that cannot apply to the data refused with its name."""

from __future__ import annotations

import copy
import typing
from typing import Any

import pytest
import yaml

from reprotune.pipeline import params as params_module
from reprotune.pipeline.data_kind import IMAGE, TEXT, DataKind
from reprotune.pipeline.params import Params, ParamsError, flatten
from reprotune.pipeline.resolve import OFF_ON_TEXT, RULES, decisions, resolve
from tests.conftest import ROOT, real_params_raw

KINDS = {
    "sample": DataKind(IMAGE, sample=True),
    "image folder": DataKind(IMAGE, sample=False),
    "texts": DataKind(TEXT, sample=False),
}


def field_annotation(key: str) -> Any:
    model: Any = Params
    *sections, leaf = key.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    return model.model_fields[leaf].annotation


def literals(annotation: Any) -> list[Any]:
    """Every literal value an annotation allows (through unions and Annotated)."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [value for argument in typing.get_args(annotation) for value in literals(argument)]


def candidates(key: str, value: Any) -> list[Any]:
    """Values to change `key` to, most plausible first; the first that validates is used."""
    rule = RULES.get(key)
    found = [v for v in literals(field_annotation(key)) if v != value]
    if rule is not None:
        found += [v for v in (rule.image, rule.text, rule.sample) if isinstance(v, (int, float, str, list))]
    if isinstance(value, bool):
        found.append(not value)
    elif isinstance(value, int):
        found += [value + 1, value - 1]
    elif isinstance(value, float):
        found += [value / 2, value + 0.05, 0.5]
    elif isinstance(value, list):
        found += [value[:1], [value[0], value[0]], [0.5, 1.0]]
    elif isinstance(value, str) and value != "auto":
        found += [value + "x", "other"]
    found += [None, True, 3, 160, 0.7, [0.5, 1.0], "rand-m7-mstd0.5", "w.safetensors", "other", "cpu"]
    return [v for v in found if v != value]


def changed(raw: dict, key: str) -> tuple[dict, Any] | None:
    """`raw` with `key` set to another valid value, and that value."""
    for value in candidates(key, flatten(raw)[key]):
        edited = copy.deepcopy(raw)
        tree = edited
        *sections, leaf = key.split(".")
        for section in sections:
            tree = tree[section]
        tree[leaf] = value
        try:
            params_module.validate(edited)
        except ParamsError:
            continue
        return edited, value
    return None


EDITABLE = sorted(k for k in flatten(real_params_raw()) if not k.startswith("paths."))


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_key_edited_changes_what_runs_or_is_refused_by_name(kind: str):
    """For every key of params.yaml, on the sample, on a user's image folder and on texts: an edit either
    reaches the resolved params as written (and no other key's value moves, so the stages that declare the
    key are exactly those it affects: tests/test_seams.py) or is refused with a line naming the key."""
    data = KINDS[kind]
    raw = real_params_raw()
    base = flatten(resolve(params_module.validate(raw), data).model_dump(mode="json"))
    unchanged = []
    for key in EDITABLE:
        edit = changed(raw, key)
        assert edit is not None, f"{key}: no other valid value found to try"
        edited, value = edit
        try:
            resolved = flatten(resolve(params_module.validate(edited), data).model_dump(mode="json"))
        except ParamsError as error:
            assert all(line.startswith(f"params.yaml: {key}:") for line in error.problems), error.problems
            continue
        if value == "auto":
            expected = decisions(resolve(params_module.validate(edited), data))[key].value
        else:
            expected = list(value) if isinstance(value, tuple) else value
        if resolved[key] != expected:
            unchanged.append((key, value, resolved[key]))
        others = {k for k in resolved if k != key and resolved[k] != base[k]}
        assert not others, f"{key}: editing it moved {sorted(others)}"
    assert not unchanged, f"edited but not run as written on {kind}: {unchanged}"


def test_auto_resolves_by_the_data_and_an_explicit_value_always_wins():
    params = params_module.validate(real_params_raw())
    sample, folder, texts = (resolve(params, KINDS[k]) for k in KINDS)
    assert sample.backbone.input_size == 128 and folder.backbone.input_size is None
    assert sample.finetune.augment.hflip == 0.0 and folder.finetune.augment.hflip == 0.5
    assert folder.backbone.name == "tf_efficientnet_lite0"
    assert texts.backbone.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert (folder.finetune.epochs, texts.finetune.epochs) == (10, 3)
    assert (folder.finetune.backbone_lr_factor, texts.finetune.backbone_lr_factor) == (0.3, 0.05)
    raw = real_params_raw()
    raw["backbone"]["input_size"] = 160
    raw["finetune"]["augment"]["hflip"] = 0.25
    explicit = resolve(params_module.validate(raw), KINDS["sample"])
    assert explicit.backbone.input_size == 160 and explicit.finetune.augment.hflip == 0.25
    made = decisions(explicit)
    assert made["backbone.input_size"].written == 160 and made["backbone.name"].written == "auto"


def test_a_key_that_cannot_apply_is_refused_with_one_line_naming_it():
    raw = real_params_raw()
    raw["backbone"]["input_size"] = 160
    raw["distill"]["enabled"] = True
    raw["clean"]["long_text"] = "drop"
    with pytest.raises(ParamsError) as error:
        resolve(params_module.validate(raw), KINDS["texts"])
    assert [line.split(":")[1].strip() for line in error.value.problems] == [
        "backbone.input_size",
        "distill.enabled",
    ]
    with pytest.raises(ParamsError, match="clean.long_text: applies to texts only"):
        resolve(params_module.validate(raw), KINDS["image folder"])


def test_resolving_twice_changes_nothing():
    params = params_module.validate(real_params_raw())
    for kind in KINDS.values():
        once = resolve(params, kind)
        assert resolve(once, kind).model_dump() == once.model_dump()


def test_every_auto_key_has_one_rule_and_params_yaml_ships_auto():
    """No rule without a key that can say auto, no auto-able key without a rule, and the shipped file
    leaves each to its rule (so one params.yaml runs on images and on texts)."""
    shipped = flatten(yaml.safe_load((ROOT / "params.yaml").read_text()))

    def accepts_auto(key: str) -> bool:
        return "auto" in literals(field_annotation(key))

    auto_able = {k for k in shipped if not k.startswith("paths.") and accepts_auto(k)} | {"backbone.name"}
    # resolved where they run, by the machine (cores, a visible GPU), or by ingest itself (the modality)
    auto_able -= {"featurize.num_workers", "finetune.num_workers", "featurize.device", "finetune.device"}
    auto_able -= {"ingest.modality"}
    assert auto_able == set(RULES)
    assert all(shipped[key] == "auto" for key in RULES)
    assert all(shipped[key] == off for key, (off, _) in OFF_ON_TEXT.items())
