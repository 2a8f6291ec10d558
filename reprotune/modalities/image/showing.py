"""Images as people see them in the reports: by their path in tables, as thumbnails in figures."""

from __future__ import annotations

from pathlib import Path

from reprotune.reporting.figures import gallery


class ImageShowing:
    column = "path"  # the file is the image: its path shows it in a table

    def figure(
        self, items: list[tuple[str, str]], background: list[int] | str, title: str, path: Path
    ) -> None:
        gallery(items, tuple(background), title, path)


SHOWING = ImageShowing()
