"""Every figure function, rendered on tiny synthetic data shaped like a real run's: no text leaves the figure
and no two texts overlap.

The texts are the ones matplotlib actually draws (tick labels, axis labels, titles, legend texts, annotations,
colour bar labels, figure texts), recorded while `fig.canvas.draw()` runs; empty and hidden texts are not
drawn. Boxes come from `Text.get_window_extent(renderer)`; a rotated text is its rotated rectangle, not the
axis-aligned box around it, so that slanted tick labels side by side do not count as touching. The caption
`save_figure` adds lies under the figure on purpose (saving uses a tight box): its own test checks it.
"""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace
from unittest import mock

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from lie_helpers.analysis import first_order, rms_law, summaries  # noqa: E402
from lie_helpers.analysis.symmetry import StepGrowth  # noqa: E402
from lie_helpers.data.attributes import ATTRIBUTES  # noqa: E402
from lie_helpers.engine import toy  # noqa: E402
from lie_helpers.engine.brackets import lie_bracket  # noqa: E402
from lie_helpers.analysis.persistence import Persistence  # noqa: E402
from lie_helpers.analysis.swap_orders import LOGIT_RESIDUALS, PARAM_RESIDUALS, SwapOrders  # noqa: E402
from lie_helpers.figures import adam, brackets, heatmaps, study, style, symmetry, theory, training  # noqa: E402
from lie_helpers.study.contrasts import CONTRASTS, PAIRED, RunShares  # noqa: E402
from lie_helpers.study.known_answers import DOSE_EXPECTED  # noqa: E402
from lie_helpers.study.sources import SOURCES  # noqa: E402
from lie_helpers.study.design import study_arms  # noqa: E402
from lie_helpers.training.config import get_profile  # noqa: E402
from test_baselines import synthetic_records as baseline_records  # noqa: E402
from test_heatmap_page import full_size_records  # noqa: E402
from test_plots import fake_metrics  # noqa: E402
from test_summaries import HAIR, synthetic_records  # noqa: E402

TOLERANCE = 1.0   # pixels: boxes that touch, or poke out by rounding, are fine


# ----------------------------------------------------------------------------- the check

def drawn_texts(fig) -> list[Text]:
    """Every non-empty Text drawn when the figure is drawn (hidden ones, and ticks outside the view, are not)."""
    drawn, draw = [], Text.draw

    def record(self, renderer):
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)
        return draw(self, renderer)

    with mock.patch.object(Text, "draw", record):
        fig.canvas.draw()
    return list(dict.fromkeys(drawn))


def corners(text: Text, renderer) -> np.ndarray:
    """The text's box in display pixels as 4 corners: its rotated rectangle when it is slanted."""
    box = text.get_window_extent(renderer)
    angle = text.get_rotation() % 180
    if min(angle % 90, 90 - angle % 90) < 1e-6:
        return np.array([[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1]])
    text.set_rotation(0)
    flat = text.get_window_extent(renderer)
    text.set_rotation(angle)
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [flat.width / 2, flat.height / 2]
    theta = math.radians(angle)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return half @ rotation.T + [(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2]


def overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Do two convex quadrilaterals overlap by more than TOLERANCE (separating axis test)?"""
    for polygon in (a, b):
        for p, q in zip(polygon, np.roll(polygon, -1, axis=0)):
            normal = np.array([q[1] - p[1], p[0] - q[0]])
            normal /= np.linalg.norm(normal)
            pa, pb = a @ normal, b @ normal
            if min(pa.max(), pb.max()) - max(pa.min(), pb.min()) <= TOLERANCE:
                return False
    return True


def describe(text: Text) -> str:
    return repr(text.get_text()[:60])


def data_points(ax) -> np.ndarray:
    """Display coordinates of the axes' markers (lines drawn with a marker, and scatter points) inside it."""
    points = [line.get_transform().transform(line.get_xydata()) for line in ax.get_lines()
              if line.get_visible() and line.get_marker() not in (None, "None", "", " ") and len(line.get_xdata())]
    points += [c.get_offset_transform().transform(c.get_offsets()) for c in ax.collections
               if isinstance(c, PathCollection) and c.get_visible() and len(c.get_offsets())]
    if not points:
        return np.empty((0, 2))
    points = np.concatenate(points)
    box = ax.bbox
    return points[(points[:, 0] >= box.x0) & (points[:, 0] <= box.x1) & (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1)]


def covered_points(text: Text, box: np.ndarray, points: np.ndarray) -> int:
    """How many of `points` lie inside the text's box (shrunk by TOLERANCE)."""
    low, high = box.min(0) + TOLERANCE, box.max(0) - TOLERANCE
    return int(np.sum(np.all((points > low) & (points < high), axis=1)))


def layout_problems(fig) -> list[str]:
    """What is wrong with the figure's texts: each one outside the figure, each pair that overlaps, and each
    text placed in an axes (ax.text, ax.annotate) that covers a data point of that axes."""
    texts = drawn_texts(fig)
    renderer = fig.canvas.get_renderer()
    boxes = {text: corners(text, renderer) for text in texts}
    width, height = fig.bbox.width, fig.bbox.height
    problems = [f"{describe(t)} leaves the figure ({box.min(0).round()} – {box.max(0).round()} of {width:.0f} × {height:.0f})"
                for t, box in boxes.items()
                if box[:, 0].min() < -TOLERANCE or box[:, 1].min() < -TOLERANCE
                or box[:, 0].max() > width + TOLERANCE or box[:, 1].max() > height + TOLERANCE]
    problems += [f"{describe(a)} overlaps {describe(b)}" for a, b in itertools.combinations(texts, 2)
                 if overlap(boxes[a], boxes[b])]
    for ax in fig.axes:
        points = data_points(ax)
        problems += [f"{describe(t)} covers {n} data point(s)" for t in ax.texts if t in boxes
                     and (n := covered_points(t, boxes[t], points))]
    return problems


# ----------------------------------------------------------------------------- tiny data, shaped like a run's

RNG = np.random.default_rng(0)
PROFILE = get_profile("default")
LR = 5e-3
EPS_SCAN = np.logspace(-2.5, 0.5, 13)


def check(lrs, rel_err, slope=1.0):
    return SimpleNamespace(lrs=np.asarray(lrs), rel_err=np.asarray(rel_err), slope=slope)


def neuron():
    return toy.neuron_pair((1.0, 0.3), (1.0, -0.5), theta=(0.0, 1.5))


def vector_fields():
    q2 = toy.random_quadratics(n=2, d=2, r=4, seed=0)
    x, y = q2.examples
    path_xy = [p["theta"] for p in toy.sgd_path(q2.model, q2.loss_fn, [x, y], 0.35)]
    path_yx = [p["theta"] for p in toy.sgd_path(q2.model, q2.loss_fn, [y, x], 0.35)]
    return theory.plot_vector_fields(q2, path_xy, path_yx, lie_bracket(q2.model, q2.loss_fn, x, y)["theta"], 0.35)


def commuting_control():
    pair, control = neuron(), toy.neuron_pair((1.0, -1.0), (1.0, -0.5), theta=(0.0, 1.5))
    gaps = theory.order_gaps(pair, EPS_SCAN)
    return theory.plot_commuting_control(pair, control, EPS_SCAN, gaps, np.zeros_like(gaps), 0.5)


def bracket_field():
    grid = theory.plane_grid(15)
    return theory.plot_bracket_field(neuron(), grid, toy.neuron_bracket(grid, (1.0, 0.3), (1.0, -0.5)),
                                     torch.tensor([0.9, 0.1], dtype=torch.float64))


def quadratic_exact():
    lrs = np.logspace(-3, 1, 9)
    return theory.plot_quadratic_exact({(i, j): check(lrs, 1e-16 * RNG.uniform(1, 9, 9) / lrs**2)
                                        for i, j in itertools.combinations(range(4), 2)}, lrs)


def minibatch_bilinearity():
    lrs = np.logspace(-5, -1, 9)
    bracket = {"w": torch.randn(60, dtype=torch.float64)}
    pairwise = [{"w": bracket["w"] + torch.randn(60, dtype=torch.float64)} for _ in range(16)]
    mb = SimpleNamespace(bracket=bracket, pairwise_mean=bracket, swap=check(lrs, 1e-3 * lrs / lrs[0], 1.0))
    return theory.plot_minibatch_bilinearity(mb, pairwise)


def smith_order_average():
    lrs = np.logspace(-3.5, -1.5, 5)
    return theory.plot_smith_order_average(SimpleNamespace(
        lrs=lrs, err_flow=lrs**2, err_modified=lrs**3, err_order=lrs, slope_flow=1.97, slope_modified=2.96,
        slope_order=1.0, order=(0, 1, 2, 3)))


def first_order_baselines():
    records = baseline_records(1.0, n_steps=20, outputs=40)
    comparison = first_order.compare_with_first_order(records, ATTRIBUTES, HAIR)
    return brackets.plot_first_order(comparison, rms_law.rms_law_with_null(records, [0, 6, 13, 19]))


def real_swaps():
    n = 8
    table = {"step": np.repeat([200, 400, 600, 800], n // 4), "lr_order": RNG.uniform(0.85, 1.15, n)}
    for key in ("sgd", "bracket", "gradient", "adam_frozen", "adam_aware"):
        table[f"{key}_cosine"] = RNG.uniform(-0.5, 1, n)
        table[f"{key}_ratio"] = 10 ** RNG.uniform(-3.5, 0.1, n)
    return brackets.plot_real_swaps(table)


def attribute_perturbation():
    summary = summaries.summarise_attributes(synthetic_records(hair_factor=1.0), ATTRIBUTES, HAIR, top=10)
    return brackets.plot_attribute_perturbation(summary, ATTRIBUTES, lr=LR)


def run_shares(arms, seeds=8):
    def share():
        return {k: float(RNG.normal(0, 0.3)) for k in SOURCES[:-1]}
    return {arm: [RunShares(arm, k, share(), share(), share(), 0.1, 0.3) for k in range(seeds)] for arm in arms}


def contrasts():
    def row(mean, p, level=0.99, half=0.2):
        return {"mean": mean, "low": mean - half, "high": mean + half, "p_holm": p, "level": level}
    q = {name: row(m, p) for name, m, p in zip(CONTRASTS, (0.0, 0.09, 0.6, -0.1, 0.3), (1, 0.039, 0.062, 1, 0.04))}
    q[list(CONTRASTS)[0]].update(low=-np.inf, high=np.inf)
    first = {name: row(q[name]["mean"] / 2, 0.5, 0.9875) for name in PAIRED}
    paired = {name: row(q[name]["mean"] - 0.1, 0.2, 0.9875) for name in PAIRED}
    return study.plot_contrasts({"Q": q, "Q^g": first, "against J·g": paired})


def dose_record():
    weights = [1.0, 2.0, 4.0, 8.0]
    def dose():
        readouts = {}
        for name, (expected, _) in DOSE_EXPECTED.items():
            slope = expected if not name.startswith("old") else RNG.normal(0, 0.2)
            readouts[name] = {"values": list(slope * np.log10(weights) + RNG.normal(0, 0.3)), "slope": slope,
                              "expected": expected}
        return {"weights": weights, "readouts": readouts}
    return {"dose": {"HAIR": dose(), "Smiling": dose()}}


TRAINING_DOSE = {"arms": ["independent, no bands", "independent, bands / 3", "independent"], "bands": [0.0, 0.1, 0.3],
                 "seeds": [0, 1, 2, 3], "per_seed": {"independent, no bands": [0.05, 0.06, 0.04, 0.05],
                                                     "independent, bands / 3": [0.2, 0.18, 0.22, 0.21],
                                                     "independent": [0.42, 0.45, 0.41, 0.44]},
                 "means": [0.05, 0.2, 0.43]}


def growth(eps):
    return [StepGrowth(lr, (1 + eps * 1e4 / lr) * lr**2 * np.full((3, 22), 2.0), lr**2 * np.full((3, 22), 2.0),
                       np.zeros((3, 22)), np.zeros((3, 22)))
            for lr in (1e-3, 1e-2, 1e-1, 1.0)]


def with_exact_zeros(shape, low, high):
    values = 10 ** RNG.uniform(low, high, shape)
    values.flat[::7] = 0.0
    return values


def swap_orders():
    """Residuals of four swaps on both stems, each falling at its expected order from the training lr."""
    lrs = 5e-3 * 0.25 ** np.arange(7)
    results = []
    for stem in ("max", "avg"):
        for k in range(4):
            scale = RNG.uniform(0.5, 2)
            results.append(SwapOrders(step=200 * (k + 1), ambiguous=k % 2, stem=stem, lrs=lrs,
                                      params={n: scale * 10.0 ** -o * (lrs / lrs[0]) ** o for n, o in PARAM_RESIDUALS.items()},
                                      logits={n: scale * 10.0 ** -o * (lrs / lrs[0]) ** o for n, o in LOGIT_RESIDUALS.items()}))
    return results


def persistence():
    """Four swaps: the ratio grows over 80 zero-gradient steps and 20 later minibatches, drained part near 𝔅."""
    zero_ks, later_ks = np.array([0, 1, 2, 5, 10, 20, 40, 80]), np.array([0, 1, 2, 5, 10, 20])
    return [Persistence(step=200 * (k + 1), ambiguous=k % 2, stem="max", lr=5e-3, later_ks=later_ks,
                        later=1 + 0.05 * later_ks * RNG.uniform(0.8, 1.2), later_vs_zero_cosine=np.full(6, 0.46),
                        zero_ks=zero_ks, zero=1 + 0.5 * (1 - np.exp(-zero_ks / 10)),
                        drained={"adam_cosine": 0.97 + 0.005 * k, "adam_ratio": 0.98, "sgd_cosine": 0.08})
            for k in range(4)]


FIGURES = {
    "adam.plot_swap_orders": lambda: adam.plot_swap_orders(swap_orders()),
    "adam.plot_persistence": lambda: adam.plot_persistence(persistence()),
    # notebook 01 (and 03's training curves)
    "training.plot_image_grid": lambda: training.plot_image_grid(
        torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), (torch.rand(16, 40) > 0.7).long(), 16,
        "The first 16 training images at 32 px, with their labels", marked=[k % 5 == 0 for k in range(16)],
        marked_label="ambiguous shade"),
    "training.plot_base_rates": lambda: training.plot_base_rates(
        dict(zip(ATTRIBUTES, RNG.uniform(0, 1, 40))), dict(zip(ATTRIBUTES, RNG.uniform(0, 1, 40))),
        "Rate of each attribute: train split vs target", labels=("train split", "target: CelebA's published rate")),
    "training.plot_training_curves": lambda: training.plot_training_curves(
        fake_metrics(steps=tuple(range(0, 1001, 50))),
        "Training MXResNet18 (width 0.25) on 40 attributes, Adam lr 0.005, batch 64",
        references={"best possible (Bayes) for Black_Hair / Brown_Hair": 0.93}),
    # notebook 00
    "theory.plot_vector_fields": vector_fields,
    "theory.plot_two_orders": lambda: theory.plot_two_orders(neuron(), 0.5, EPS_SCAN),
    "theory.plot_two_orders_grid": lambda: theory.plot_two_orders_grid(neuron(), (0.25, 0.5, 1.0, 1.5), EPS_SCAN),
    "theory.plot_commuting_control": commuting_control,
    "theory.plot_bracket_field": bracket_field,
    "theory.plot_quadratic_exact": quadratic_exact,
    "theory.plot_swap_remainder": lambda: theory.plot_swap_remainder(
        check(np.logspace(-5, -1, 9), 1e-5 * np.logspace(0, 4, 9), 1.0), np.logspace(-5, -1, 9)),
    "theory.plot_minibatch_bilinearity": minibatch_bilinearity,
    "theory.plot_smith_order_average": smith_order_average,
    # notebooks 02 and 03
    "brackets.plot_rms_loglog": lambda: brackets.plot_rms_loglog(synthetic_records(), [0, 2, 4, 5]),
    "brackets.plot_attribute_perturbation": attribute_perturbation,
    "brackets.plot_first_order": first_order_baselines,
    "brackets.plot_real_swaps": real_swaps,
    "heatmaps.heatmap_frame": lambda: heatmaps.heatmap_frame(full_size_records(), ATTRIBUTES, lr=LR, highlight=HAIR)[0],
    "heatmaps.plot_logit_heatmaps": lambda: heatmaps.plot_logit_heatmaps(
        full_size_records(), 0, [0, 6, 13, 20], ATTRIBUTES, lr=LR, highlight=HAIR),
    # notebook 04
    "study.plot_dose_control": lambda: study.plot_dose_control(dose_record()),
    "study.plot_source_shares": lambda: study.plot_source_shares(run_shares(study.MAIN_ARMS)),
    "study.plot_contrasts": contrasts,
    "study.plot_training_dose": lambda: study.plot_training_dose(TRAINING_DOSE),
    "study.plot_dial": lambda: study.plot_dial(get_profile("study"), run_shares(a.name for a in study_arms(get_profile("study")))),
    # notebook 05
    "symmetry.plot_batchnorm_scale_symmetry": lambda: symmetry.plot_batchnorm_scale_symmetry(
        {eps: 10 ** RNG.uniform(-2, 0, (3, 22)) * eps for eps in (1e-3, 1e-5, 1e-7, 1e-9, 1e-11, 1e-13)},
        10 ** RNG.uniform(-3, -1, (3, 22)), 1e-5, 1.0),
    "symmetry.plot_relu_rescale_symmetry": lambda: symmetry.plot_relu_rescale_symmetry(
        {"relu": (with_exact_zeros((6, 16), -17, -14), with_exact_zeros((15, 16), -17, -14)),
         "tanh": (10 ** RNG.uniform(-3, 0, (6, 16)), 10 ** RNG.uniform(-3, 0, (15, 16)))}),
    "symmetry.plot_softmax_translation_symmetry": lambda: symmetry.plot_softmax_translation_symmetry(
        {"categorical hair (5 softmax rows)": (10 ** RNG.uniform(-17, -11, 6), 10 ** RNG.uniform(-17, -13, 15)),
         "independent hair (4 sigmoid rows)": (10 ** RNG.uniform(-3, -0.3, 6), 10 ** RNG.uniform(-2, -0.3, 15))}),
    "symmetry.plot_sgd_norm_growth": lambda: symmetry.plot_sgd_norm_growth({1e-5: growth(1e-5), 1e-13: growth(1e-13)},
                                                                        1e-5),
}


@pytest.fixture(autouse=True)
def styled():
    style.set_style()   # as every notebook draws
    yield
    plt.close("all")


@pytest.mark.parametrize("name", FIGURES)
def test_no_text_leaves_the_figure_or_overlaps_another(name, one_thread):
    fig = FIGURES[name]()
    assert layout_problems(fig) == []


def test_every_figure_function_is_checked():
    """A new figure function joins FIGURES: every public plot_* of lie_helpers.figures is in it."""
    modules = (adam, brackets, heatmaps, study, symmetry, theory, training)
    public = {f"{m.__name__.rsplit('.', 1)[1]}.{name}" for m in modules for name in dir(m)
              if name.startswith("plot_") and callable(getattr(m, name))}
    assert public <= set(FIGURES), sorted(public - set(FIGURES))


def test_the_check_sees_texts_outside_overlapping_and_over_points():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_ylabel("a y label far longer than the axes are tall, as 03_first_order_baselines had it")
    ax.text(0.5, 0.5, "one")
    ax.text(0.52, 0.5, "two")
    ax.scatter([0.3, 0.9], [0.9, 0.9])
    ax.text(0.28, 0.88, "over a point")
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.text(0.5, 0.3, "")   # empty: ignored
    ax.text(0.5, 0.3, "hidden").set_visible(False)
    fig.tight_layout()
    problems = layout_problems(fig)
    assert any(p.startswith("'a y label") and "leaves the figure" in p for p in problems)
    assert "'one' overlaps 'two'" in problems and "'over a point' covers 1 data point(s)" in problems
    assert not any("hidden" in p for p in problems)


def test_slanted_labels_side_by_side_do_not_count_as_overlapping():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_xticks(range(6), ["Wearing_Lipstick"] * 6, rotation=60, ha="right", rotation_mode="anchor")
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    upright = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
    assert upright[0].overlaps(upright[1])   # their upright boxes overlap; the labels do not
    assert layout_problems(fig) == []


def test_the_caption_is_wrapped_to_the_figure_and_sits_under_it(tmp_path):
    fig = FIGURES["theory.plot_quadratic_exact"]()   # a narrow figure (6 in) and a long caption
    caption = style.figure_caption(PROFILE, "03", "mean |J·[v_i, v_j]| over 15 brackets and 32 images, per "
                                   "attribute; ranks within each checkpoint; one symmetric colour scale for the four panels")
    style.save_figure(fig, tmp_path, "03_test", caption)
    renderer = fig.canvas.get_renderer()
    (text,) = [t for t in fig.texts if t.get_text().replace("\n", " ") == caption]
    box = text.get_window_extent(renderer)
    assert box.x1 <= fig.bbox.width and box.y1 <= 0 < box.height   # within the width, below the figure
    saved = fig.get_tightbbox(renderer)   # inches: what save_figure's bbox_inches="tight" writes
    assert saved.y0 * fig.dpi <= box.y0 + TOLERANCE and saved.x1 * fig.dpi >= box.x1 - TOLERANCE
    assert f"profile '{PROFILE.name}'" in caption and "notebook 03" in caption
