"""How every stage saves a matplotlib figure (headless, atomically, at one resolution), and the image gallery
the evaluate and label_issues stages draw."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI machines; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from reprotune.images import Background, load_rgb
from reprotune.layout import atomic_output


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
