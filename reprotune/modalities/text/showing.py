"""Texts as people see them in the reports: the text itself beside its path in tables, as cards in
figures."""

from __future__ import annotations

from pathlib import Path

from reprotune.reporting.figures import text_cards


class TextShowing:
    column = "text"

    def figure(
        self, items: list[tuple[str, str]], background: list[int] | str, title: str, path: Path
    ) -> None:
        text_cards(items, title, path)


SHOWING = TextShowing()
