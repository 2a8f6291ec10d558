from pathlib import Path

import pytest
import yaml

from reprotune.pipeline import params as params_module
from reprotune.pipeline.params import ParamsError, flatten
from tests.conftest import ROOT, real_params_raw


def problems_for(mutate) -> list[str]:
    raw = real_params_raw()
    mutate(raw)
    with pytest.raises(ParamsError) as caught:
        params_module.validate(raw)
    return caught.value.problems


def test_repository_params_validate():
    params = params_module.load(ROOT / "params.yaml")
    assert params.backbone.name == "auto"  # resolved by the data (tests/test_resolve.py)
    assert params.split.val_fraction + params.split.test_fraction < 1


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda r: r["train_head"].update(Cee=1.0),
            "train_head.Cee: unknown key; train_head accepts: C, selection_metric, max_iter, class_weights, class_weight_beta",
        ),
        (lambda r: r["finetune"].update(lrr=1.0), "finetune.lrr: unknown key; did you mean 'lr'?"),
        (lambda r: r.update(extra_section={}), "extra_section: unknown key"),
        (lambda r: r["finetune"].update(lr=-1.0), "finetune.lr: Input should be greater than 0"),
        (lambda r: r["finetune"].update(lr="fast"), "finetune.lr: Input should be a valid number"),
        (lambda r: r["finetune"].update(epochs=2.5), "finetune.epochs: Input should be a valid integer"),
        (lambda r: r["finetune"].update(strategy="half"), "finetune.strategy: Input should be 'frozen'"),
        (lambda r: r["finetune"].update(device="tpu"), "finetune.device"),
        (
            lambda r: r["split"].update(val_fraction=0.5, test_fraction=0.5),
            "split: val_fraction + test_fraction",
        ),
        (lambda r: r["split"].update(test_fraction=1.5), "split.test_fraction: Input should be less than 1"),
        (lambda r: r.pop("backbone"), "backbone: missing"),
        (lambda r: r["clean"].update(formats=["JPEG", "HEIC"]), "clean.formats: Input should be 'JPEG'"),
        (lambda r: r["clean"].update(background=[0, 0]), "clean.background"),
        (lambda r: r["finetune"]["augment"].update(scale=[0.9, 0.2]), "finetune.augment.scale"),
        (lambda r: r["featurize"].update(num_workers=-1), "featurize.num_workers"),
    ],
)
def test_each_bad_value_is_named(mutate, expected):
    problems = problems_for(mutate)
    assert any(expected in line for line in problems), problems
    assert all(line.startswith("params.yaml: ") for line in problems)


def test_every_problem_is_reported_at_once():
    def two_mistakes(raw):
        raw["finetune"]["lr"] = 0
        raw["train_head"]["max_iter"] = "many"

    problems = problems_for(two_mistakes)
    assert len(problems) == 2


def test_scientific_notation_reads_as_a_float(tmp_path: Path):
    text = (ROOT / "params.yaml").read_text().replace("lr: 0.001 ", "lr: 3e-4 ")
    assert "lr: 3e-4" in text
    (tmp_path / "params.yaml").write_text(text)
    assert params_module.load(tmp_path / "params.yaml").finetune.lr == pytest.approx(3e-4)


def test_unreadable_file_is_one_clear_line(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("finetune: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        params_module.load(tmp_path / "params.yaml")
    with pytest.raises(ParamsError, match="not found"):
        params_module.load(tmp_path / "missing.yaml")


def test_flatten_matches_dvc_key_style():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert "finetune.augment.scale" in flatten(raw)


def test_a_retired_overlay_section_says_what_replaced_it():
    raw = real_params_raw()
    raw["sample"] = {"backbone": {"input_size": 128}}
    with pytest.raises(ParamsError) as error:
        params_module.validate(raw)
    assert error.value.problems == [f"params.yaml: sample: {params_module.RETIRED_SECTIONS['sample']}"]
