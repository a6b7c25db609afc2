"""Live figures for a running kernel: a figure redrawn as ipywidgets controls move (notebooks 00 and 03).

The figure is a PNG in an Image widget rather than a plot in an Output widget (`ipywidgets.interact`):
headless runs (papermill, nbclient) mimic Output widgets by talking back to the kernel mid-cell, which
intermittently hangs (jupyter/nbclient#312). Without a kernel (GitHub, nbviewer) nothing renders; the
notebooks save a static figure beside each viewer.
"""
from __future__ import annotations

import io
from typing import Callable

import ipywidgets as widgets
import matplotlib.pyplot as plt


def png_bytes(fig, dpi: int) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def live_image(controls, render: Callable[[], bytes]):
    """An Image widget showing `render()`, called again whenever one of `controls` changes its value."""
    image = widgets.Image(format="png")

    def redraw(_change=None):
        image.value = render()

    for control in controls:
        control.observe(redraw, names="value")
    redraw()
    return image


def figure_slider(draw, slider, *, dpi: int = 80):
    """A slider (any ipywidgets value widget) above the figure `draw(value)` returns, redrawn when it moves.

    Each drawn figure is closed once rendered, so the notebook's backend shows none of them.
    """
    def render() -> bytes:
        fig = draw(slider.value)
        try:
            return png_bytes(fig, dpi)
        finally:
            plt.close(fig)

    return widgets.VBox([slider, live_image([slider], render)])
