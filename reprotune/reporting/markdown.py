"""Numbers as report.md shows them, for every stage that writes a section of it."""

from __future__ import annotations


def value_cell(key: str, split: dict) -> str:
    """One metric of a split's metrics (reprotune/reporting/metrics.py), with its 95% interval beside it where
    it has one (`<key>_ci_low`, `<key>_ci_high`)."""
    if key not in split:
        return "–"
    value = split[key]
    if f"{key}_ci_low" in split:
        return f"{value:.4f} [{split[f'{key}_ci_low']:.4f}, {split[f'{key}_ci_high']:.4f}]"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def lines_of(section: list[str]) -> str:
    """A section's lines as the text of its file (read back and joined by reprotune/reporting/report.py)."""
    return "\n".join(section) + "\n"
