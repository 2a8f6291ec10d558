"""Nothing unsafe is loaded, nothing outside the data is read, nothing listens beyond the loopback."""

import ast
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import _Yaml12FloatLoader
from tests.conftest import ROOT

SOURCES = sorted(p for folder in ("reprotune", "stages", "benchmarks") for p in (ROOT / folder).rglob("*.py"))
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "_Yaml12FloatLoader"}


def keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"import {m}" for m in modules if m.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = ast.unparse(node.func)
        if name == "torch.load":
            weights_only = keyword(node, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append("torch.load without weights_only=True")
        elif name in {"yaml.load", "yaml.load_all"}:
            loader = keyword(node, "Loader")
            if loader is None or ast.unparse(loader).split(".")[-1] not in SAFE_YAML_LOADERS:
                found.append(f"{name} with an unsafe Loader")
        elif name in {"yaml.unsafe_load", "yaml.full_load", "pd.read_pickle", "pandas.read_pickle"}:
            found.append(name)
        elif node.func.attr == "load" and ast.unparse(node.func.value) in {"np", "numpy"}:
            allow = keyword(node, "allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append("np.load with allow_pickle")
    return found


def test_the_scan_finds_what_it_looks_for():
    bad = ast.parse(
        "import pickle\nimport torch, yaml, numpy as np\ntorch.load(f)\ntorch.load(f, weights_only=False)\n"
        "yaml.load(s, Loader=yaml.Loader)\nnp.load(f, allow_pickle=True)\nyaml.unsafe_load(s)\n"
    )
    assert len(unsafe_uses(bad)) == 6
    good = ast.parse(
        "torch.load(f, weights_only=True)\nyaml.safe_load(s)\nyaml.load(s, Loader=_Yaml12FloatLoader)\n"
    )
    assert unsafe_uses(good) == []


def test_no_source_file_loads_anything_unsafely():
    assert SOURCES and issubclass(_Yaml12FloatLoader, yaml.SafeLoader)
    problems = {str(p.relative_to(ROOT)): unsafe_uses(ast.parse(p.read_text())) for p in SOURCES}
    assert {k: v for k, v in problems.items() if v} == {}


def test_nothing_binds_beyond_the_loopback():
    texts = [p.read_text() for p in SOURCES] + [
        (ROOT / name).read_text() for name in ("README.md", "dvc.yaml")
    ]
    assert not any("0.0.0.0" in text for text in texts)


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    from reprotune.pipeline import params as params_module
    from tests.conftest import tiny_params_raw

    return Layout(params_module.validate(tiny_params_raw(tmp_path)).paths)


def write_manifest(path: Path, paths: list[str], issue: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"path": paths, "label": "a", "issue": issue}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("escape", ["absolute", "dotdot", "symlink"])
def test_a_manifest_naming_a_file_outside_the_data_is_refused(layout: Layout, tmp_path: Path, escape: str):
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    inside = layout.raw / "a"
    inside.mkdir(parents=True)
    (inside / "ok.png").write_bytes(b"x")
    path = {
        "absolute": str(outside),
        "dotdot": os.path.join(str(inside), "..", "..", "secret.png"),
        "symlink": str(inside / "link.png"),
    }[escape]
    if escape == "symlink":
        (inside / "link.png").symlink_to(outside)
    manifest = write_manifest(tmp_path / "m.csv", [str(inside / "ok.png"), path])
    with pytest.raises(InputError, match=r"m\.csv: image path .* is outside the data folders"):
        layout.read_manifest(manifest)


def test_a_manifest_inside_the_data_reads_and_flagged_links_are_left_to_clean(layout: Layout, tmp_path: Path):
    inside = layout.raw / "a"
    inside.mkdir(parents=True)
    (inside / "ok.png").write_bytes(b"x")
    (inside / "link.png").symlink_to(tmp_path / "elsewhere.png")
    table = layout.read_manifest(write_manifest(tmp_path / "m.csv", [str(inside / "ok.png")]))
    assert table["path"].tolist() == [str(inside / "ok.png")]
    flagged = write_manifest(tmp_path / "f.csv", [str(inside / "link.png")], issue="outside_root")
    assert len(layout.read_manifest(flagged)) == 1  # ingest flagged it; clean reports it and never opens it
