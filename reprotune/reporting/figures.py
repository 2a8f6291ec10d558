"""How every stage saves a matplotlib figure (headless, atomically, at one resolution), and the galleries
the evaluate and label_issues stages draw: of images, or of texts as cards."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI machines; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from reprotune.data.images import Background, load_rgb
from reprotune.pipeline.atomic_io import atomic_output


def save(figure: Figure, path: Path) -> None:
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)


def gallery(
    items: list[tuple[str, str]], background: Background, title: str, path: Path, columns: int = 4
) -> None:
    """Thumbnails of images (path, caption), in the order given; `title` says when there are none."""
    rows = max(1, -(-len(items) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image_path, caption) in zip(axes.flat, items, strict=False):
        thumbnail = load_rgb(Path(image_path), background)
        thumbnail.thumbnail((160, 160))
        ax.imshow(thumbnail)
        ax.set_title(caption, fontsize=8)
    figure.suptitle(title, fontsize=10)
    save(figure, path)


def text_cards(items: list[tuple[str, str]], title: str, path: Path, columns: int = 3) -> None:
    """Texts (text, caption) as cards, in the order given, wrapped and cut to a few lines; the gallery of a
    text dataset. `title` says when there are none."""
    rows = max(1, -(-len(items) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 1.5 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (text, caption) in zip(axes.flat, items, strict=False):
        lines = textwrap.wrap(" ".join(text.split()), 44) or [""]
        shown = "\n".join(lines[:5]) + ("\n..." if len(lines) > 5 else "")
        ax.text(
            0.0,
            1.0,
            shown,
            va="top",
            ha="left",
            fontsize=8,
            wrap=False,
            family="monospace",
            bbox={"boxstyle": "round", "facecolor": "whitesmoke", "edgecolor": "lightgrey"},
        )
        ax.set_title(caption, fontsize=8, loc="left")
    figure.suptitle(title, fontsize=10)
    save(figure, path)
