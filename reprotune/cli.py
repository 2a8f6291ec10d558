"""The `reprotune` command: what a user does outside `dvc repro`, which trains.

    reprotune predict <images or texts>   label them with a trained model (any folder the pipeline wrote)
    reprotune compare                     the MLflow runs side by side
    reprotune serve                       the registered or exported model over HTTP
    reprotune doctor                      what is installed and whether the pipeline can run here

Each subcommand is its own module with its own `main(argv, prog)`, imported only when it runs, so that
`reprotune doctor` does not pay for torch's import twice and a broken optional piece breaks one subcommand.
The `python -m reprotune.predict` and `python -m reprotune.compare` forms stay as aliases.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "predict": ("reprotune.serving.predict", "label images or texts with a trained model"),
    "compare": ("reprotune.serving.compare", "the MLflow runs side by side: params that differ, metrics"),
    "serve": (
        "reprotune.serving.serve",
        "the registered or exported model over HTTP (MLflow's scoring server)",
    ),
    "doctor": ("reprotune.pipeline.doctor", "versions, device, offline weights, MLflow store, DVC remote"),
}

USAGE = """usage: reprotune <command> [options]   (reprotune <command> --help for each one's options)

The pipeline itself runs with `dvc repro` (params.yaml says what runs); these commands work on what it made.

commands:
{commands}

examples:
  reprotune predict --model models/finetuned photos/
  reprotune compare --last 10 --sort finetune.test.macro_f1
  reprotune serve --port 5001
  reprotune doctor
"""


def usage() -> str:
    width = max(map(len, COMMANDS))
    return USAGE.format(
        commands="\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items())
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0 if arguments else 2
    if arguments[0] == "--version":
        from importlib.metadata import version

        print(f"reprotune {version('reprotune')}")
        return 0
    name, rest = arguments[0], arguments[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; the commands are {', '.join(COMMANDS)}"
        print(f"reprotune: unknown command {name!r}{hint}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=f"reprotune {name}") or 0


if __name__ == "__main__":
    sys.exit(main())
