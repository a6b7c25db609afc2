"""One figure style for the project, and saving figures as PNG (README) and PDF (papers)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns


def set_style() -> None:
    """The project's seaborn style; call once at the top of a notebook."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight",
                         "pdf.fonttype": 42, "svg.hashsalt": "lie-helpers"})


def save_figure(fig, figures_dir, name: str, caption: str) -> list[Path]:
    """Write `fig` as <name>.png and <name>.pdf, with `caption` (profile and data) printed under it."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    fig.text(0.01, -0.02, caption, fontsize=7, color="0.35", ha="left", va="top")
    paths = [figures_dir / f"{name}.png", figures_dir / f"{name}.pdf"]
    fig.savefig(paths[0])
    fig.savefig(paths[1], metadata={"CreationDate": None, "ModDate": None})
    return paths
