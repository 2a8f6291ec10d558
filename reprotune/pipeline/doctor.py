"""`reprotune doctor`: whether the pipeline can run here, one line per check, before an hour goes into a run.

Checks: the versions of what the pipeline runs on; the CPU's instruction sets (int8 kernels differ between
AVX2-only and AVX-512/VNNI CPUs) and any GPU; params.yaml; whether the backbone's weights (and the text
encoder's) load offline; the MLflow store and whether it answers; the DVC remote. Exit status 1 when a check
failed, 0 otherwise (a warning does not fail it).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "onnxruntime",
    "mlflow",
    "dvc",
    "sentence-transformers",
    "cleanlab",
)
OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"

EXAMPLES = """examples:
  reprotune doctor                 # in the project: everything, weights loaded offline
  reprotune doctor --no-weights    # skip loading the weights (a few seconds each)
"""


def versions() -> tuple[str, str]:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} missing")
    state = FAIL if any(v.endswith("missing") for v in found) else OK
    return state, f"python {platform.python_version()}; " + ", ".join(found)


def cpu() -> tuple[str, str]:
    from reprotune.training.devices import cpu_instruction_sets

    isa = cpu_instruction_sets()
    return OK, f"{platform.machine()}, {os.cpu_count()} cores" + (f", {' '.join(isa)}" if isa else "")


def gpu() -> tuple[str, str]:
    import torch

    if not torch.cuda.is_available():
        return OK, "no CUDA device: the stages run on the CPU (device: auto)"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return OK, "; ".join(f"cuda:{i} {name}" for i, name in enumerate(names))


def params_file() -> tuple[str, str]:
    from reprotune.pipeline import params as params_module

    if not params_module.PARAMS_FILE.is_file():
        return WARN, "no params.yaml here: run the doctor in the project folder to check it and its backbone"
    try:
        params_module.load()
    except params_module.ParamsError as error:
        return FAIL, "; ".join(error.problems)
    return OK, "params.yaml is valid"


def weights() -> list[tuple[str, str, str]]:
    """The backbone params.yaml names (each modality's default where it says auto), loaded offline."""
    from reprotune.modalities import encoding
    from reprotune.pipeline import params as params_module
    from reprotune.pipeline.data_kind import IMAGE, TEXT
    from reprotune.pipeline.errors import InputError
    from reprotune.pipeline.resolve import for_data

    try:
        params = params_module.load()
    except params_module.ParamsError:
        return []
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # what the stages will find without a network
    rows, refused = [], {}
    for modality in (IMAGE, TEXT):
        try:
            backbone = for_data(params, modality).backbone
        except params_module.ParamsError as error:  # keys set for the other modality (images' input_size)
            refused[modality] = "; ".join(error.problems)
            continue
        if params.backbone.name != "auto" and modality == TEXT and backbone.name == params.backbone.name:
            continue  # one named backbone: checked once, as the modality it is for
        try:
            loaded = encoding.of(modality).load(backbone)
            rows.append((OK, f"weights ({modality})", f"{backbone.name}: {loaded.weights}"))
        except InputError as error:
            rows.append((FAIL, f"weights ({modality})", str(error)[:400]))
        except Exception as error:  # noqa: BLE001 - a loader can fail in many ways; the doctor reports them
            rows.append(
                (FAIL, f"weights ({modality})", f"{backbone.name}: {type(error).__name__}: {error}"[:400])
            )
    # params.yaml that fits one modality only is fine; one that fits neither cannot run
    state = SKIP if len(refused) < 2 else FAIL
    for modality, problems in refused.items():
        detail = f"not checked: params.yaml does not fit {modality}s: " if state == SKIP else ""
        rows.append((state, f"weights ({modality})", (detail + problems)[:400]))
    return rows


def mlflow_store() -> tuple[str, str]:
    from reprotune.pipeline.errors import InputError
    from reprotune.reporting.tracking import command_tracking_uri

    try:
        uri = command_tracking_uri()
    except InputError:
        return WARN, "no MLflow store yet (the track stage creates mlflow.db at the project root)"
    try:
        from mlflow.tracking import MlflowClient

        experiments = MlflowClient(uri).search_experiments(max_results=50)
    except Exception as error:  # noqa: BLE001 - a server's errors come in many types
        return FAIL, f"{uri} does not answer: {str(error).splitlines()[0][:300]}"
    return OK, f"{uri} answers ({len(experiments)} experiment(s))"


def dvc_remote() -> tuple[str, str]:
    here = Path.cwd().resolve()
    if not any((folder / ".dvc").is_dir() for folder in (here, *here.parents)):
        return WARN, "not in a DVC project: run the doctor in the project folder to check its remote"
    beside = Path(sys.executable).parent / "dvc"  # this environment's, even when it is not activated
    try:
        done = subprocess.run(
            [str(beside) if beside.is_file() else "dvc", "remote", "list"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return FAIL, f"dvc did not run: {error}"
    if done.returncode != 0:
        return WARN, (done.stderr.strip().splitlines() or ["not a DVC project here"])[-1]
    remotes = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    if not remotes:
        return OK, "no DVC remote (results stay on this machine; docs/teams.md adds one)"
    return OK, "remotes: " + ", ".join(remotes)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Whether the pipeline can run here: versions, CPU and GPU, params.yaml, the backbone's "
        "weights offline, the MLflow store, the DVC remote.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--no-weights", action="store_true", help="do not load the backbone's weights")
    options = parser.parse_args(argv)
    checks: list[tuple[str, Callable[[], tuple[str, str]]]] = [
        ("versions", versions),
        ("cpu", cpu),
        ("gpu", gpu),
        ("params", params_file),
        ("mlflow", mlflow_store),
        ("dvc", dvc_remote),
    ]
    rows = [(state, name, detail) for name, check in checks for state, detail in [check()]]
    if not options.no_weights:
        rows[4:4] = weights()
    width = max(len(name) for _, name, _ in rows)
    for state, name, detail in rows:
        print(f"{state:<4}  {name:<{width}}  {detail}")
    failed = [name for state, name, _ in rows if state == FAIL]
    if failed:
        print(f"\n{len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
