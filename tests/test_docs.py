"""The docs a newcomer reads: README short, measured tables written from the benchmark results (never copied by
hand, so never stale), no paths outside the project, no links to missing pages."""

from __future__ import annotations

import re

from benchmarks import tables
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_measured_tables_are_what_the_benchmark_results_say():
    assert tables.main(["--check"]) == 0, "run: python -m benchmarks.tables"


def test_readme_reads_in_five_minutes():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    assert lines.index("## Quick start") < lines.index("## Your own data") < 60


def test_no_doc_points_outside_the_project_or_reads_like_a_notebook():
    for path in DOCS:
        text = path.read_text()
        assert "../shared" not in text, path
        assert not re.search(r"\bthis session\b|\bI (did|measured|ran)\b", text), path


def test_every_link_to_a_project_file_resolves():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.relative_to(ROOT)} links to missing {target}"
