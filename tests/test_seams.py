"""DVC re-runs a stage when a file in its `deps` or a key in its `params` changes, and only then. These tests
prove that dvc.yaml says exactly what each stage's code uses, so an edit re-runs the stages it touches and
no others:
- code: the project modules a stage imports, followed transitively through `import` statements anywhere in
  a module (function-level imports too), equal the `.py` files it declares;
- params: the params.yaml keys its code can read equal the keys its `params:` entries cover.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from reprotune.pipeline.params import Params
from tests.conftest import ROOT

PACKAGES = ("reprotune", "stages")
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


# --- code ------------------------------------------------------------------------------------------------


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name (None outside the project, or for a package)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    path = ROOT.joinpath(*name.split(".")).with_suffix(".py")
    return path if path.is_file() else None


def imported_files(path: Path) -> set[Path]:
    """Project files that `path` imports directly: `import a.b`, `from a.b import c` (c a name or a module)."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {file for file in map(module_file, names) if file is not None}
    return found


def transitive_imports(path: Path) -> set[Path]:
    seen, todo = {path}, [path]
    while todo:
        for file in imported_files(todo.pop()) - seen:
            seen.add(file)
            todo.append(file)
    return seen


def declared_code(stage: dict) -> set[Path]:
    return {ROOT / dep for dep in stage["deps"] if isinstance(dep, str) and dep.endswith(".py")}


@pytest.mark.parametrize("name", list(STAGES))
def test_a_stage_declares_exactly_the_modules_it_imports(name: str):
    stage = STAGES[name]
    assert stage["cmd"].startswith(f"python -m stages.{name}")
    imported = transitive_imports(ROOT / "stages" / f"{name}.py")
    declared = declared_code(stage)
    relative = lambda files: sorted(str(f.relative_to(ROOT)) for f in files)  # noqa: E731
    assert not imported - declared, f"{name} imports but does not declare {relative(imported - declared)}"
    assert not declared - imported, f"{name} declares but never imports {relative(declared - imported)}"


def test_no_stage_imports_a_stage_and_the_library_imports_none():
    """Stages share library code, never each other: a stage's module is a code dependency of that stage
    alone, so an edit to it re-runs that stage (and what reads its outputs), nothing beside it."""
    for path in sorted((ROOT / "stages").glob("*.py")) + sorted((ROOT / "reprotune").rglob("*.py")):
        imported = {f for f in imported_files(path) if f.parent == ROOT / "stages"}
        assert not imported, (
            f"{path.relative_to(ROOT)} imports {sorted(str(f.relative_to(ROOT)) for f in imported)}"
        )


def test_the_library_has_no_import_cycles():
    """No module of reprotune/ reaches itself through imports (function-level ones included)."""
    for path in sorted((ROOT / "reprotune").rglob("*.py")):
        for other in imported_files(path):
            assert path not in transitive_imports(other), (
                f"{path.relative_to(ROOT)} and {other.relative_to(ROOT)} import each other"
            )


def test_package_inits_hold_no_code():
    """`python -m stages.x` runs both package __init__ files, which no stage declares: they must stay empty
    of code, or an edit to them would change a stage without re-running it."""
    for init in sorted(ROOT.glob("stages/__init__.py")) + sorted(ROOT.glob("reprotune/**/__init__.py")):
        body = ast.parse(init.read_text()).body
        assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body), init


# --- the modality seam -----------------------------------------------------------------------------------

MODALITY_NAMES = {"image", "text", "images", "texts"}


def modality_branches(source: str) -> list[int]:
    """Lines of `source` that tell one modality from another: a comparison that involves a `.modality`, the
    IMAGE or TEXT constants or a modality's name, any other use of IMAGE or TEXT (a table keyed by
    modality), or a test of what an object can do (`hasattr`) in place of the recorded modality."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for part in ast.walk(node):
                if (
                    isinstance(part, ast.Attribute)
                    and part.attr == "modality"
                    or isinstance(part, ast.Name)
                    and part.id in ("IMAGE", "TEXT")
                    or isinstance(part, ast.Constant)
                    and part.value in MODALITY_NAMES
                ):
                    found.append(node.lineno)
                    break
        elif isinstance(node, ast.Name) and node.id in ("IMAGE", "TEXT"):
            found.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hasattr":
            found.append(node.lineno)
    return sorted(set(found))


def test_stages_hold_no_modality_branches():
    """What differs between images and texts lives behind reprotune/modalities/ (one module per modality and
    job); a stage asks the modality ingest recorded for it, and never tells the two apart itself."""
    for path in sorted((ROOT / "stages").glob("*.py")):
        lines = modality_branches(path.read_text())
        assert not lines, f"{path.relative_to(ROOT)} branches on the modality at lines {lines}"


def test_the_branch_finder_sees_every_kind_of_branch():
    code = """
text = layout.modality == "text"
if kind.modality == TEXT: pass
name = "cleaned texts" if "text" in frame.columns else "cleaned images"
loader = {IMAGE: a, TEXT: b}[m]
if hasattr(model.data, "tokenize"): pass
cleaning = modality_cleaning.of(layout.modality)
"""
    assert modality_branches(code) == [2, 3, 4, 5, 6]


def test_the_import_walk_follows_function_level_and_package_imports(tmp_path: Path):
    """The walk itself: it must see what a stage would really import, or the test above proves nothing."""
    evaluate = transitive_imports(ROOT / "stages" / "evaluate.py")
    reporting = ROOT / "reprotune" / "reporting"
    assert reporting / "evaluation_plots.py" in evaluate  # `from reprotune.reporting import x as y`
    assert reporting / "figures.py" in evaluate  # transitively, through evaluation_plots
    track = transitive_imports(ROOT / "stages" / "track.py")
    assert ROOT / "reprotune" / "serving" / "pyfunc.py" in track  # imported inside a function
    assert ROOT / "stages" / "finetune.py" not in evaluate  # evaluate no longer imports the finetune stage


# --- params ----------------------------------------------------------------------------------------------

Key = tuple[str, ...]


def section_fields(model: type[BaseModel]) -> dict[str, type | None]:
    """Each field of a params section: its sub-section's class, or None for a value."""
    fields = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        fields[name] = annotation if is_section else None
    return fields


def leaves(model: type[BaseModel], prefix: Key = ()) -> set[Key]:
    found = set()
    for name, section in section_fields(model).items():
        found |= leaves(section, (*prefix, name)) if section else {(*prefix, name)}
    return found


def section_at(key: Key) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Params
    for part in key:
        model = section_fields(model)[part] if model else None
    return model


def is_params_annotation(annotation: ast.expr | None) -> bool:
    return (
        isinstance(annotation, ast.Name)
        and annotation.id == "Params"
        or (isinstance(annotation, ast.Constant) and annotation.value == "Params")
    )


class ParamsReads(ast.NodeVisitor):
    """The params keys a module's code can read, found statically.

    A function argument annotated `Params` is the root. From it, `x.a.b` reads key a.b; a local name bound to
    a section (`settings = params.finetune`) stands for that section. A section used as a whole anywhere
    else (passed to a function, put in a tuple, dumped) counts as reading every key under it, since what
    receives it may read any of them; a method on the root (`params.model_dump()`) reads everything, except
    `params.model_copy(update=...)`, which only copies (the copy is a Params like the root). Passing
    the root itself on is not a read: the project functions that receive it annotate it `Params` and are
    analysed too.
    """

    def __init__(self) -> None:
        self.reads: set[Key] = set()
        self.scopes: list[dict[str, Key]] = [{}]

    def key_of(self, node: ast.expr) -> Key | None:
        """The params key an expression denotes (a section or a value), or None."""
        if isinstance(node, ast.Name):
            for scope in reversed(self.scopes):
                if node.id in scope:
                    return scope[node.id]
            return None
        if isinstance(node, ast.Attribute):
            base = self.key_of(node.value)
            section = section_at(base) if base is not None else None
            if section is not None and node.attr in section_fields(section):
                return (*base, node.attr)
        return None

    def read(self, key: Key) -> None:
        section = section_at(key)
        self.reads |= {(*key, *leaf) for leaf in leaves(section)} if section else {key}

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        self.scopes.append({a.arg: () for a in arguments if is_params_annotation(a.annotation)})
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign) -> None:
        key = self.key_of(node.value)
        if key is not None and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            self.scopes[-1][node.targets[0].id] = key  # an alias: reads through it are counted as they happen
            return
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        key = self.key_of(node)
        if key is not None:
            self.read(key)  # the outermost key of a chain; an enclosing chain would have stopped here
            return
        base = self.key_of(node.value)
        if base == () and node.attr == "model_copy":
            return  # a copy with a section replaced reads nothing; its keys are counted where they are read
        if base is not None:
            self.read(base)  # a method or attribute that is no field (model_dump, ...): the whole section
            return
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        key = self.key_of(node)
        if key:  # a section alias used whole; the root itself () is not a read
            self.read(key)


# reprotune/pipeline/resolve.py reads every key only to put a value in place of `auto`, and a key's resolved value
# depends on that key alone (tests/test_resolve.py proves it): what a stage then reads is counted where it
# reads it, so the resolver itself counts as reading nothing.
RESOLVER = ROOT / "reprotune" / "pipeline" / "resolve.py"


def params_read(files: set[Path]) -> set[Key]:
    """What the code reads (the resolver aside)."""
    reader = ParamsReads()
    for file in files - {RESOLVER}:
        reader.visit(ast.parse(file.read_text(), str(file)))
    return reader.reads


def declared_params(stage: dict) -> set[Key]:
    """The keys a stage's `params:` entries cover; `params.yaml:` alone is the whole file."""
    declared: set[Key] = set()
    for entry in stage.get("params", []):
        if isinstance(entry, dict):  # {"params.yaml": None}: every key
            return leaves(Params)
        key = tuple(entry.split("."))
        section = section_at(key)
        declared |= {(*key, *leaf) for leaf in leaves(section)} if section else {key}
    return declared


def without_paths(keys: set[Key]) -> set[str]:
    """`paths.*` reach dvc.yaml as the interpolated deps and outs themselves (a moved folder is a changed
    dep or out), and the two that are not (checkpoints, the embedding cache) change no result."""
    return {".".join(k) for k in keys if k[0] != "paths"}


@pytest.mark.parametrize("name", list(STAGES))
def test_a_stage_declares_exactly_the_params_it_reads(name: str):
    stage = STAGES[name]
    read = without_paths(params_read(transitive_imports(ROOT / "stages" / f"{name}.py")))
    declared = without_paths(declared_params(stage))
    assert not read - declared, f"{name} reads but does not declare {sorted(read - declared)}"
    assert not declared - read, f"{name} declares but never reads {sorted(declared - read)}"


def test_the_params_reader_sees_every_kind_of_read():
    code = """
def stage(params: Params, other):
    settings = params.finetune
    use(settings.lr, params.clean.background)      # values, direct and through an alias
    use(settings.augment)                          # a section passed on: all of it
    other.finetune.epochs                          # not params: nothing
    backbone = params.backbone
    check(backbone)                                # an alias used whole
    params.model_copy(update={"finetune": x})      # a copy: nothing
def track(params: Params):
    params.model_dump()                            # everything
"""
    reader = ParamsReads()
    tree = ast.parse(code)
    reader.visit(tree.body[0])
    augment = {
        f"finetune.augment.{k}" for k in ("scale", "hflip", "color_jitter", "auto_augment", "mixup", "cutmix")
    }
    backbone = {f"backbone.{k}" for k in ("name", "weights", "input_size", "channels_last")}
    assert {".".join(k) for k in reader.reads} == {"finetune.lr", "clean.background"} | augment | backbone
    reader = ParamsReads()
    reader.visit(tree.body[1])
    assert reader.reads == leaves(Params)


def test_every_stage_resolves_through_the_one_resolver():
    """The exemption above covers one module, which every stage reaches through stage.py."""
    for name in STAGES:
        assert RESOLVER in transitive_imports(ROOT / "stages" / f"{name}.py"), name


def test_the_schema_walk_knows_sections_from_values():
    assert section_at(("finetune", "augment")) is not None and section_at(("finetune", "lr")) is None
    assert ("finetune", "augment", "scale") in leaves(Params)
    assert ("finetune", "augment") not in leaves(Params)  # a section is never a leaf


# --- what track logs, what report.md shows ---------------------------------------------------------------


def test_track_depends_on_every_output_it_logs():
    """track logs what the stages declare (reprotune/reporting/tracking.py): reports (`cache: false`) and models
    (`type: model`), never data. Each is one of track's deps, so a changed report or model re-runs it."""
    from reprotune.pipeline import params as params_module
    from reprotune.reporting.tracking import declared_artifacts

    paths = params_module.load(ROOT / "params.yaml").paths

    def filled(entry: str) -> str:
        return re.sub(r"\$\{paths\.(\w+)\}", lambda found: str(getattr(paths, found.group(1))), entry)

    logged = declared_artifacts(paths, ROOT / "dvc.yaml")
    assert not {a.path.as_posix() for a in logged} - {filled(dep) for dep in STAGES["track"]["deps"]}
    folders = {a.path.as_posix(): a.folder for a in logged}
    assert folders[paths.finetuned] == "models/finetuned" and folders[paths.exported] == "models/export"
    assert folders[f"{paths.reports}/metrics.json"] == "reports"  # a metrics: entry is an output too
    assert folders[f"{paths.reports}/plots"] == "reports/plots"
    data = [Path(p) for p in (paths.ingested, paths.cleaned, paths.splits, paths.features)]
    assert not [a for a in logged if any(a.path.is_relative_to(folder) for folder in data)]
    assert "track" not in {a.stage for a in logged}


def test_report_sections_are_declared_by_their_stages_and_read_by_evaluate():
    from reprotune.reporting.report import SECTIONS

    declared = {
        name
        for name, stage in STAGES.items()
        for entry in stage.get("outs", [])
        if isinstance(entry, dict) and next(iter(entry)) == f"${{paths.reports}}/sections/{name}.md"
    }
    assert set(SECTIONS) == declared
    assert {f"${{paths.reports}}/sections/{name}.md" for name in SECTIONS} <= set(STAGES["evaluate"]["deps"])
    for name in SECTIONS:  # the stage's module writes it
        assert f'report_section("{name}")' in (ROOT / "stages" / f"{name}.py").read_text(), name
