"""Write the measured tables from reports/bench.json, so that no number in the docs is copied by hand:
benchmarks/README.md (every benchmark's figures) and README.md's table of expected run times (between its
`run-times` markers).

    .venv/bin/python -m benchmarks.tables           # rewrite both after running benchmarks
    .venv/bin/python -m benchmarks.tables --check   # exit 1 if either is out of date (tests/test_docs.py)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_FILE = ROOT / "reports" / "bench.json"
BENCH_README = ROOT / "benchmarks" / "README.md"
README = ROOT / "README.md"
START, END = "<!-- run-times: written by benchmarks/tables.py -->", "<!-- run-times: end -->"

INTRO = """# Benchmarks

Measured figures, written by `python -m benchmarks.tables` from `reports/bench.json`, which the benchmarks
fill: `python -m benchmarks` runs them all (or `--only speed text ...`), each in its own process. They run by
hand, never as timed tests. Each section says the machine it ran on (`cores`, `machine`) and, from when it
was added, the code it measured (`commit`); compare ratios within one section, since the machine may be shared
and noisy. What each benchmark does is in its module's
docstring (`benchmarks/bench_<name>.py`).
"""


def flat(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flat(value, f"{name}.")
        elif isinstance(value, list):
            rows.append((name, ", ".join(map(str, value))))
        else:
            rows.append((name, value))
    return rows


def bench_readme(bench: dict) -> str:
    parts = [INTRO]
    for section in sorted(bench):
        rows = flat(bench[section])
        table = "".join(f"| `{name}` | {value} |\n" for name, value in rows)
        parts.append(f"## {section}\n\n| figure | value |\n|---|---|\n{table}")
    return "\n".join(parts)


def minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_times(bench: dict) -> str:
    """README's table: what a run costs on the machine class the benchmarks ran on."""
    speed, rerun, text = bench["speed"], bench["rerun"], bench["text"]
    at224 = speed["sides"]["224"]
    machine = f"{speed['cores']}-core {speed['machine']} {speed['device'].upper()}"
    rows = [
        (
            f"the whole pipeline, {rerun['finetune_epochs']} epoch at {rerun['input_size']} px",
            f"{rerun['images']:,} small images",
            minutes(rerun["full_pipeline_seconds"]),
        ),
        (
            "featurize (frozen backbone), 224 px",
            "1,000 photos",
            minutes(1000 / at224["featurize_images_per_second"]),
        ),
        (
            "full fine-tuning at 224 px, one epoch",
            "1,000 photos",
            minutes(1000 / at224["full_finetune_images_per_second"]),
        ),
        (
            "full fine-tuning at 224 px, 10 epochs",
            "5,000 photos",
            minutes(50_000 / at224["full_finetune_images_per_second"]),
        ),
        (
            "featurize texts (MiniLM)",
            "10,000 texts",
            minutes(10_000 / text["encode_texts_per_s"]["featurize"]),
        ),
        (
            "fine-tuning MiniLM, one epoch",
            "10,000 texts",
            minutes(10_000 / text["train_texts_per_s"]["length_grouped"]),
        ),
    ]
    lines = [
        START,
        f"| run | data | {machine} ({speed['backbone']} for images) |",
        "|---|---|---|",
        *[f"| {what} | {data} | {time} |" for what, data, time in rows],
        END,
    ]
    return "\n".join(lines)


def with_run_times(readme: str, table: str) -> str:
    if START not in readme or END not in readme:
        raise SystemExit(f"{README}: the run-times markers are missing")
    before, rest = readme.split(START, 1)
    return before + table + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a written file is out of date")
    options = parser.parse_args(argv)
    bench = json.loads(BENCH_FILE.read_text())
    wanted = {BENCH_README: bench_readme(bench), README: with_run_times(README.read_text(), run_times(bench))}
    stale = [path for path, text in wanted.items() if not path.is_file() or path.read_text() != text]
    if options.check:
        for path in stale:
            print(
                f"{path.relative_to(ROOT)} is out of date: run python -m benchmarks.tables", file=sys.stderr
            )
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
