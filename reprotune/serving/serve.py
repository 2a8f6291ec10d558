"""Serve a trained model over HTTP: MLflow's scoring server (`mlflow models serve`) on the registered model, or
on an exported folder, which is wrapped as the same MLflow model first (reprotune/serving/pyfunc.py). It runs
the int8 file where export shipped one and it passes its check on this CPU, else the float32 file.

    reprotune serve [--model models:/reprotune@candidate] [--host 127.0.0.1] [--port 5001]

POST /invocations takes `{"dataframe_split": {"columns": ["image"], "data": [["<base64 image>"], ...]}}` (for a
text model: `"columns": ["text"], "data": [["<text>"], ...]`) and answers one row per item: label, confidence,
error and p:<class> (docs/use-the-model.md); GET /ping is the health check. It runs in this environment
(`--env-manager local`): nothing is installed or downloaded.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from reprotune.pipeline.errors import InputError

EXAMPLES = """examples:
  reprotune serve                                    # models:/<track.model_name>@<track.alias> of this project
  reprotune serve --model models/export --port 8080  # the exported folder, without the registry
  reprotune serve --model models:/reprotune@candidate --tracking-uri http://mlflow.internal:5000

  curl -s localhost:5001/invocations -H 'Content-Type: application/json' \\
    -d "{\\"dataframe_split\\": {\\"columns\\": [\\"image\\"], \\"data\\": [[\\"$(base64 -w0 cat.jpg)\\"]]}}"
  curl -s localhost:5001/invocations -H 'Content-Type: application/json' \\
    -d '{"dataframe_split": {"columns": ["text"], "data": [["I lost my card"], ["top up failed"]]}}'
"""


def default_model() -> str:
    """The project's registered model at its alias (params.yaml's track section), else reprotune's."""
    from reprotune.pipeline import params as params_module

    try:
        track = params_module.load().track
    except params_module.ParamsError:
        return "models:/reprotune@candidate"
    return f"models:/{track.model_name}@{track.alias}"


def registered(uri: str, tracking: str) -> None:
    """Fail now, with one line, when the store has no such model (the server would start and then 500)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking)
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/MLmodel")
    except MlflowException as error:
        raise InputError(f"--model {uri}: {str(error).splitlines()[0]} (in {tracking})") from None


def wrapped(folder: Path, into: Path) -> Path:
    """An exported folder (model.onnx + model.json) saved as the MLflow model track registers."""
    import mlflow

    import reprotune
    from reprotune.serving import pyfunc

    if not (folder / "model.onnx").is_file() or not (folder / "model.json").is_file():
        raise InputError(
            f"--model {folder}: not an exported folder (model.onnx + model.json, as export writes them); "
            "serve a registered model (models:/<name>@<alias>) or an exported one (models/export)"
        )
    path = into / "model"
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=pyfunc.__file__,
        artifacts=pyfunc.artifacts_of(folder, into),
        code_paths=[str(Path(reprotune.__file__).parent)],
        pip_requirements=pyfunc.requirements(),
    )
    return path


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from reprotune.reporting.tracking import command_tracking_uri

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a trained model over HTTP (MLflow's scoring server): images or texts in, labels out.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", help="a registered model (models:/name@alias) or an exported folder")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    parser.add_argument("--port", type=int, default=5001, help="default 5001")
    parser.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else the project's mlflow.db")
    options = parser.parse_args(argv)
    model = options.model or default_model()
    with tempfile.TemporaryDirectory(prefix="reprotune-serve-") as scratch:
        env = dict(os.environ)
        try:
            if model.startswith(("models:/", "runs:/")):
                tracking = command_tracking_uri(options.tracking_uri)
                registered(model, tracking)
                env["MLFLOW_TRACKING_URI"] = tracking
                served = model
            else:
                served = str(wrapped(Path(model), Path(scratch)))
        except InputError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", served, "--env-manager", "local"]
        command += ["--host", options.host, "--port", str(options.port), "--workers", str(options.workers)]
        print(
            f"serving {model} at http://{options.host}:{options.port}/invocations (Ctrl-C stops)",
            file=sys.stderr,
        )
        try:
            return subprocess.run(command, env=env).returncode
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
