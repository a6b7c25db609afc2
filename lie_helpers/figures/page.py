"""The logit-perturbation heatmaps as one self-contained HTML page (notebook 03), and a screenshot of it.

`heatmap_page` fills `page_template.html` (package data, read with importlib.resources): its @NAME@
fields with HTML-escaped text, @DATA@ with the JSON data (every checkpoint and pair as base64 float16,
`encode_frames`). The page has a checkpoint slider, a pair menu, a fixed or per-frame colour scale and a
readout, and names no URL but data: ones, so it works offline, from file:// and from a static host.
`screenshot_page` is a PNG of it as headless Chromium draws it (the README's picture).
"""
from __future__ import annotations

import base64
import html
import json
from importlib import resources
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .heatmaps import SIGNED_CMAP, bracket_examples, check_lr, color_limit
from .style import attribute_colours

TEMPLATE = "page_template.html"


def page_template() -> str:
    """The page's HTML, with its @NAME@ and @DATA@ fields still to fill."""
    return resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")


def encode_frames(values) -> tuple[str, list]:
    """[checkpoints, pairs, rows, outputs] values as base64 little-endian float16 of value / max|frame|,
    and the per-frame scales (max |value|, 1 for an all-zero frame), checkpoint-major.

    Dividing by the frame's maximum keeps every frame inside float16's range (raw magnitudes reach
    1e4 and more); the relative error of each value is then at most 2⁻¹¹ (about 0.05%) down to
    6e-5 of its frame's maximum, far below what a colour or a 3-digit readout shows.
    """
    values = np.asarray(values, dtype=np.float64)
    scale = np.abs(values).max(axis=(2, 3))
    scale[scale == 0] = 1.0
    halves = (values / scale[..., None, None]).astype("<f2")
    return base64.b64encode(halves.tobytes()).decode("ascii"), scale.ravel().tolist()


def adam_frames(records, percentile: float) -> dict | None:
    """Adam's bracket's frames for the page's menu (None without them): values per unit lr² like the SGD
    bracket's, κ per checkpoint (the order effect right after two Adam steps is lr²·κ·𝔅, analysis.adam_records)
    and which checkpoints have it at all (none at step 0, where Adam has no state)."""
    if getattr(records, "adam_logit_perturbation", None) is None:
        return None
    values = records.adam_logit_perturbation.double().numpy()
    defined = np.isfinite(values).all(axis=(1, 2, 3))
    values = np.where(np.isfinite(values), values, 0.0)
    encoded, scale = encode_frames(values)
    n_checkpoints, n_pairs = values.shape[:2]
    kappa = records.adam_scales.double().numpy()[:, 0]
    return {"values": encoded, "scale": scale, "defined": defined.tolist(),
            "kappa": [float(k) if np.isfinite(k) else 0.0 for k in kappa],
            "frame_limit": [[color_limit(values[c, p], percentile) for p in range(n_pairs)] for c in range(n_checkpoints)],
            "fixed_limit": [color_limit(values[defined, p], percentile) if defined.any() else 1.0 for p in range(n_pairs)]}


def heatmap_page(records, output_names, *, lr: float, caption: str, highlight=("Black_Hair", "Brown_Hair"),
                 pair: int = 0, percentile: float = 99.0, row_notes=None) -> str:
    """One self-contained HTML page of the logit-perturbation heatmaps: every checkpoint and pair.

    A checkpoint slider (opening at the last one), a pair menu, a menu of the bracket (plain SGD's, and Adam's
    where the records hold it: analysis.adam_records), a colour scale fixed over the pair's
    checkpoints or set per frame (both at `percentile` of |value|), the pair's own examples' rows and
    the `highlight` columns boxed, a readout in logits per unit lr² and in logits at `lr` (the run's
    learning rate), an explanation and the data `caption`. Everything is inline (data as base64
    float16, see `encode_frames`): no network request, so it opens from disk or any static host.
    `row_notes` (optional, one short text per batch image, e.g. its hair colour) label the rows.
    """
    output_names, highlight = list(output_names), list(highlight)
    values = records.logit_perturbation.double().numpy()
    n_checkpoints, n_pairs, n_rows, n_outputs = values.shape
    if (n_checkpoints, n_pairs, n_outputs) != (len(records.steps), len(records.pairs), len(output_names)):
        raise ValueError(f"logit_perturbation has shape {tuple(values.shape)} but the records have "
                         f"{len(records.steps)} steps and {len(records.pairs)} pairs and there are {len(output_names)} "
                         "output names: pass the output names of the loss the run trained with.")
    if missing := [name for name in highlight if name not in output_names]:
        raise ValueError(f"highlight names {missing} are not output names; choose among {output_names}.")
    check_lr(lr)
    if not 0 <= pair < n_pairs:
        raise ValueError(f"pair {pair} is not an index into the {n_pairs} pairs.")
    n_examples = bracket_examples(records, n_rows)
    if row_notes is not None and len(row_notes) != n_rows:
        raise ValueError(f"row_notes has {len(row_notes)} entries; give one per batch image ({n_rows}).")
    encoded, scale = encode_frames(values)
    lut = (plt.get_cmap(SIGNED_CMAP)(np.linspace(0, 1, 256))[:, :3] * 255).round().astype(int)
    data = {
        "steps": list(records.steps), "pairs": [list(p) for p in records.pairs], "outputs": output_names,
        "highlight": highlight, "highlight_colours": list(attribute_colours(highlight).values()),
        "rows": n_rows, "examples": n_examples,
        "row_notes": list(row_notes) if row_notes is not None else None, "lr": lr, "percentile": percentile,
        "pair": pair, "values": encoded, "scale": scale,
        "frame_limit": [[color_limit(values[c, p], percentile) for p in range(n_pairs)] for c in range(n_checkpoints)],
        "fixed_limit": [color_limit(values[:, p], percentile) for p in range(n_pairs)],
        "colormap": ["#%02x%02x%02x" % tuple(rgb) for rgb in lut],
        "adam": adam_frames(records, percentile),
    }
    text = {"@TITLE@": "Brackets pushed onto the logits of a fixed batch", "@CAPTION@": caption,
            "@LR@": f"{lr:g}", "@LR2@": f"{lr * lr:.3g}", "@PCT@": f"{percentile:g}", "@ROWS@": str(n_rows),
            "@EXAMPLES@": str(data["examples"]), "@PAIRS@": str(n_pairs), "@CHECKPOINTS@": str(n_checkpoints),
            "@OUTPUTS@": str(n_outputs), "@LASTEXAMPLE@": str(data["examples"] - 1),
            "@HIGHLIGHT@": " and ".join(highlight) or "no attribute"}
    page = page_template()
    for key, value in text.items():
        page = page.replace(key, html.escape(value))
    # JSON inside <script>: "</" would end the element early
    return page.replace("@DATA@", json.dumps(data, separators=(",", ":")).replace("</", "<\\/"))


def screenshot_page(html_path, png_path, *, browser: str = "/usr/bin/chromium", width: int = 1100,
                    scale: float = 2.0) -> None:
    """A PNG of the whole page at `html_path` as headless Chromium draws it (for the README).

    Needs the test extra (playwright, `pip install -e .[test]`) and a Chromium binary (Debian:
    `apt-get install chromium`); playwright drives that browser, it downloads none.
    """
    # playwright is a test-only dependency (the test extra), imported here so that the package imports without it.
    from playwright.sync_api import sync_playwright

    html_path = Path(html_path).resolve()
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser)
        page = chromium.new_page(viewport={"width": width, "height": 800}, device_scale_factor=scale)
        page.goto(html_path.as_uri())
        page.wait_for_selector("#readout[data-ready]")
        page.screenshot(path=str(png_path), full_page=True)
        chromium.close()
