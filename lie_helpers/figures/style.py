"""One style for every figure: the seaborn theme, one colour per attribute, and saving with a caption.

Colours. `PALETTE` is seaborn's colour-blind palette, the theme `set_style` sets (C0 … C9; C7 is grey,
kept for "the other attributes"). An attribute has one colour in every figure: `ATTRIBUTE_COLOURS`
for the attributes the figures name, `GROUP_COLOURS` for a group of them drawn as one line (the study's
dial). An attribute without a colour of its own takes, in one figure, a palette colour that no other
attribute of that figure has (`attribute_colours`); lines that are not attributes take the colours the
figure's attributes leave (`other_colours`); checkpoints run along viridis (`checkpoint_colours`).

Captions. `save_figure` prints the caption (profile and data: `figure_caption`, or
`training.config.describe_source` plus details) under the figure, wrapped to its width, and saves
with a tight bounding box, so nothing is cut, whatever style is active.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.transforms import ScaledTranslation

from ..analysis.currency import CORRELATED_CONTROLS, HAIR_PAIR
from ..training.config import Profile, describe_source

PALETTE = tuple(sns.color_palette("colorblind").as_hex())   # C0 … C9 once set_style has run
GREY = PALETTE[7]

ATTRIBUTE_COLOURS = {
    "Black_Hair": PALETTE[0],        # blue
    "Brown_Hair": PALETTE[1],        # orange
    "Eyeglasses": PALETTE[2],        # green
    "Gray_Hair": PALETTE[5],         # tan
    "Heavy_Makeup": PALETTE[6],      # pink
    "Blond_Hair": PALETTE[8],        # yellow
    "Male": PALETTE[9],              # sky blue
}
GROUP_COLOURS = {
    HAIR_PAIR: PALETTE[4],           # purple: Black_Hair and Brown_Hair as one line
    CORRELATED_CONTROLS: PALETTE[3],  # vermilion: Heavy_Makeup and Wearing_Lipstick as one line
}
LABEL_COLOURS = tuple(c for c in PALETTE if c != GREY)   # every colour an attribute can take

CAPTION_FONTSIZE = 7


def set_style() -> None:
    """The project's seaborn style; call once at the top of a notebook."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight",
                         "pdf.fonttype": 42, "svg.hashsalt": "lie-helpers"})


def attribute_colours(names) -> dict[str, str]:
    """A colour for each attribute of `names` (those one figure colours): its own where it has one
    (ATTRIBUTE_COLOURS), else the first palette colour no other attribute of `names` takes (colours
    that belong to no attribute at all first)."""
    names = list(dict.fromkeys(names))
    own = {name: ATTRIBUTE_COLOURS[name] for name in names if name in ATTRIBUTE_COLOURS}
    spare = sorted((c for c in LABEL_COLOURS if c not in own.values()),
                   key=lambda c: c in ATTRIBUTE_COLOURS.values())
    if len(names) - len(own) > len(spare):
        raise ValueError(f"{len(names)} attributes in one figure, but only {len(LABEL_COLOURS)} colours.")
    return {name: own[name] if name in own else spare.pop(0) for name in names}


def group_colour(names) -> str:
    """The colour of a group of attributes drawn as one line: one attribute's own colour, or GROUP_COLOURS."""
    names = tuple(names)
    if len(names) == 1:
        return attribute_colours(names)[names[0]]
    if names not in GROUP_COLOURS:
        raise ValueError(f"no colour for the group {names}: add it to GROUP_COLOURS.")
    return GROUP_COLOURS[names]


def other_colours(n: int, used=()) -> list[str]:
    """`n` colours for lines that are not attributes, none of them in `used` (the figure's attribute colours)."""
    used = set(used)
    free = sorted((c for c in LABEL_COLOURS if c not in used), key=lambda c: c in ATTRIBUTE_COLOURS.values())
    if n > len(free):
        raise ValueError(f"{n} lines need colours, but only {len(free)} are left beside {list(used)}.")
    return free[:n]


def checkpoint_colours(n: int):
    """One colour per checkpoint, early (dark) to late (light)."""
    return plt.cm.viridis(np.linspace(0, 0.9, n))


def figure_caption(profile: Profile, notebook: str, *details: str, data: bool = True) -> str:
    """A figure's caption: the profile and its data (`describe_source`), the notebook, then `details`.
    data=False for figures of toy problems, which read no data (the profile then only names the seed)."""
    source = describe_source(profile) if data else f"profile '{profile.name}' (seed {profile.seed}) · no data"
    return " · ".join([source, f"notebook {notebook}", *details])


def wrap_to_figure(fig, text: str, fontsize: float) -> str:
    """`text` wrapped to the figure's width (DejaVu Sans averages about 0.55 em a character; 0.62 is safe)."""
    per_line = int(fig.get_figwidth() * 72 * 0.98 / (0.62 * fontsize))
    return "\n".join(textwrap.fill(part, per_line, break_on_hyphens=False) for part in text.split("\n"))


def add_caption(fig, caption: str):
    """The caption as a Text under the figure (just below its bottom edge, wrapped to its width)."""
    below = fig.transFigure + ScaledTranslation(0, -4 / 72, fig.dpi_scale_trans)
    return fig.text(0.01, 0, wrap_to_figure(fig, caption, CAPTION_FONTSIZE), fontsize=CAPTION_FONTSIZE, color="0.35", ha="left",
                    va="top", transform=below)


def save_figure(fig, figures_dir, name: str, caption: str) -> list[Path]:
    """Write `fig` as <name>.png and <name>.pdf, with `caption` (profile and data) printed under it."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    add_caption(fig, caption)
    paths = [figures_dir / f"{name}.png", figures_dir / f"{name}.pdf"]
    fig.savefig(paths[0], bbox_inches="tight", pad_inches=0.1)
    fig.savefig(paths[1], bbox_inches="tight", pad_inches=0.1, metadata={"CreationDate": None, "ModDate": None})
    return paths
