"""Any params: hypothesis mutates params.yaml, and every stage answers with one readable line per problem
naming the key, exits 2, and writes nothing."""

import contextlib
import copy
import importlib
import io
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reprotune.pipeline import params as params_module
from reprotune.pipeline.params import ParamsError, flatten
from tests.conftest import PIPELINE_STAGES, tiny_params_raw

STAGES = PIPELINE_STAGES
BASE = tiny_params_raw()
LEAVES = sorted(flatten(BASE))
SECTIONS = sorted(BASE)
NUMBERS = sorted(
    k for k, v in flatten(BASE).items() if isinstance(v, int | float) and not isinstance(v, bool)
)

texts = st.text(max_size=8).filter(lambda s: not s.strip().lstrip("-").replace(".", "").isdigit())
mappings = st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), min_size=1)


# Keys whose value here is text but which also take a whole number ("auto" or a worker count).
TEXT_OR_COUNT = {"featurize.num_workers", "finetune.num_workers"}


def wrong_type_for(key: str, value) -> st.SearchStrategy:
    """Values of a type the key never takes (a mapping is wrong for every leaf)."""
    if value == "auto" and key not in TEXT_OR_COUNT:
        return (
            mappings  # auto or a value of the key's own type (a number, a list, text): a mapping is neither
        )
    if isinstance(value, str) and key in TEXT_OR_COUNT:
        return st.one_of(st.lists(st.integers(), min_size=1), mappings)
    if isinstance(value, str):
        return st.one_of(st.integers(), st.lists(st.integers(), min_size=1), mappings)
    if isinstance(value, list):
        return st.one_of(texts, mappings)
    if isinstance(value, bool | int | float):
        return st.one_of(texts, st.lists(st.integers(), min_size=1), mappings)
    return mappings  # None: the key takes null or something else


out_of_range = st.one_of(
    st.integers(min_value=2**40, max_value=2**80),
    st.sampled_from([1e30, float("inf"), float("-inf"), float("nan"), -1, -1.5, -(2**70)]),
)


def set_key(raw: dict, key: str, value) -> None:
    *sections, leaf = key.split(".")
    node = raw
    for section in sections:
        node = node[section]
    node[leaf] = value


@st.composite
def broken_params(draw) -> tuple[dict, str]:
    """(params with one fault, the key a message must name)."""
    raw = copy.deepcopy(BASE)
    fault = draw(
        st.sampled_from(["wrong_type", "out_of_range", "unknown_key", "missing_section", "fractions"])
    )
    if fault == "wrong_type":
        key = draw(st.sampled_from(LEAVES))
        set_key(raw, key, draw(wrong_type_for(key, flatten(BASE)[key])))
    elif fault == "out_of_range":
        key = draw(st.sampled_from(NUMBERS))
        set_key(raw, key, draw(out_of_range))
    elif fault == "unknown_key":
        section = draw(st.sampled_from(SECTIONS))
        name = draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(lambda n: n not in raw[section]))
        raw[section][name] = 1
        key = f"{section}.{name}"
    elif fault == "missing_section":
        key = draw(st.sampled_from(SECTIONS))
        del raw[key]
    else:
        val = draw(st.floats(0.45, 0.89))
        raw["split"].update(val_fraction=val, test_fraction=draw(st.floats(0.9 - val, 0.89)))
        key = "split"
    return raw, key


@given(broken_params())
@settings(max_examples=300, deadline=None)
def test_every_fault_is_named(case):
    raw, key = case
    with pytest.raises(ParamsError) as caught:
        params_module.validate(raw)
    problems = caught.value.problems
    assert problems and all("\n" not in line for line in problems)
    assert any(f": {key}" in line for line in problems), (key, problems)


@given(broken_params(), st.sampled_from(STAGES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_stage_refuses_bad_params_and_writes_nothing(tmp_path: Path, case, stage):
    raw, key = case
    folder = tmp_path / f"run-{abs(hash((stage, key, repr(raw)))) % 10**9}"
    folder.mkdir()
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    errors = io.StringIO()
    previous = Path.cwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stderr(errors), pytest.raises(SystemExit) as exited:
            importlib.import_module(f"stages.{stage}").main()
    finally:
        os.chdir(previous)
    assert exited.value.code == 2
    lines = errors.getvalue().strip().splitlines()
    assert lines and all(line.startswith("error: params.yaml: ") for line in lines), lines
    assert any(f": {key}" in line for line in lines)
    assert sorted(p.name for p in folder.iterdir()) == ["params.yaml"]
