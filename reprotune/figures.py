"""How every stage saves a matplotlib figure: headless, atomically, at one resolution."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI machines; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from reprotune.layout import atomic_output


def save(figure: Figure, path: Path) -> None:
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)
