"""Every benchmark, one after another, each in its own process; figures merge into reports/bench.json.

    .venv/bin/python -m benchmarks [--only clean diagnostics duplicates export featurize finetune leakage probe rerun sharding speed text gpu]

Run on a quiet machine: the figures are ratios within one run, but a busy neighbour still skews them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

BENCHMARKS = [
    "clean",
    "diagnostics",
    "duplicates",
    "export",
    "featurize",
    "finetune",
    "leakage",
    "probe",
    "rerun",
    "sharding",
    "speed",
    "text",
    "gpu",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    options = parser.parse_args()
    failed = [
        name
        for name in options.only
        if subprocess.run([sys.executable, "-m", f"benchmarks.bench_{name}"]).returncode != 0
    ]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
