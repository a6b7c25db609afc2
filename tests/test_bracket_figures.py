"""Figures of notebook 03 on synthetic records: the expected artists and numbers (the page: test_heatmap_page)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lie_helpers.figures import brackets, heatmaps  # noqa: E402
from lie_helpers.analysis import summaries  # noqa: E402
from lie_helpers.data.attributes import ATTRIBUTES  # noqa: E402
from test_summaries import HAIR, STEPS, synthetic_records  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_rms_loglog_draws_points_fits_and_a_slope_one_reference():
    records = synthetic_records(slope=1.0)
    fig = brackets.plot_rms_loglog(records, [1, 3, 5])
    per_pair, per_tensor = fig.axes
    for ax, n_points in [(per_pair, 6 * 12), (per_tensor, 12)]:
        assert ax.get_xscale() == ax.get_yscale() == "log"
        assert [len(c.get_offsets()) for c in ax.collections] == [n_points] * 3
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels[:3] == [f"step {s}: slope 1.00, r 1.00" for s in (50, 150, 250)]
        assert labels[3].startswith("slope 1")
        assert len(ax.get_lines()) == 4


def test_color_limit_is_symmetric_and_never_zero():
    values = np.concatenate([np.linspace(-1, 1, 99), [1000.0]])
    assert heatmaps.color_limit(values, 100) == 1000.0
    assert heatmaps.color_limit(values, 90) < 1.0
    assert heatmaps.color_limit(np.zeros(5)) == 1.0


LR = 5e-3


def test_heatmap_frame_updates_data_scale_and_title():
    records = synthetic_records()
    fig, update = heatmaps.heatmap_frame(records, ATTRIBUTES, lr=LR, highlight=HAIR)
    heatmap = fig.axes[0].images[0]
    # one scale over the pair's checkpoints: the same limits at two checkpoints
    limit = np.percentile(np.abs(records.logit_perturbation[:, 2].numpy()), 99)
    update(1, 2)
    assert heatmap.get_clim() == pytest.approx((-limit, limit))
    update(4, 2)
    assert heatmap.get_clim() == pytest.approx((-limit, limit))
    np.testing.assert_array_equal(heatmap.get_array(), records.logit_perturbation[4, 2].numpy())
    assert "step 200" in fig.get_suptitle() and "[v0, v3]" in fig.get_suptitle()
    label = fig.axes[1].get_ylabel()
    assert f"±{limit:.3g}" in label and f"±{limit * LR**2:.2g} logits at lr = {LR:g}" in label
    # the pair's own examples (rows 0 and 3) boxed and marked
    boxes = [p.get_y() for p in fig.axes[0].patches if p.get_width() == len(ATTRIBUTES)]
    assert sorted(boxes) == [-0.5, 2.5]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][:4] == ["▶ v0", "v1", "v2", "▶ v3"]
    pairs_panel = fig.axes[2]
    ticks = {t.get_text(): t for t in pairs_panel.get_xticklabels()}
    assert list(ticks) == list(ATTRIBUTES)
    assert ticks["Black_Hair"].get_color() != ticks["Male"].get_color()
    # The pairs panel shows each pair's outputs relative to its median; the planted hair stands out.
    relative = pairs_panel.images[0].get_array()
    assert relative.shape == (len(records.pairs), 40)
    assert np.all(relative[:, ATTRIBUTES.index("Brown_Hair")] > 2)


def test_static_heatmaps_share_one_stated_scale_readable_labels_and_mark_the_pair():
    records = synthetic_records()   # magnitudes 10x per checkpoint: per-panel scales would differ 100000x
    shown = [0, 2, 4, 5]
    fig = heatmaps.plot_logit_heatmaps(records, 1, shown, ATTRIBUTES, lr=LR, highlight=HAIR)
    panels = [ax for ax in fig.axes if ax.images and ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == [f"step {STEPS[c]}" for c in shown]
    limit = np.percentile(np.abs(records.logit_perturbation[shown, 1].numpy()), 99)
    for ax in panels:
        assert ax.images[0].get_clim() == pytest.approx((-limit, limit))   # one scale for all panels
        assert sum(isinstance(p, matplotlib.patches.Rectangle) and not p.get_fill() and p.get_height() == 8
                   for p in ax.patches) == 2   # the hair columns
        rows = sorted(p.get_y() for p in ax.patches if p.get_width() == len(ATTRIBUTES))
        assert rows == [-0.5, 1.5]   # pair 1 is (0, 2): its two examples' rows
        assert [t.get_text() for t in ax.get_yticklabels()][:4] == ["▶ v0", "v1", "▶ v2", "v3"]
    colorbars = [ax for ax in fig.axes if ax not in panels and ax.get_visible()]
    assert len(colorbars) == 1
    label = colorbars[0].get_ylabel()
    assert "all 4 panels" in label and f"±{limit:.3g}" in label
    assert f"±{limit * LR**2:.2g} logits at lr = {LR:g} (× lr²)" in label
    # Tick labels of at least 7 pt at the saved size (saving keeps the figure's size), and no two overlap.
    fig.canvas.draw()
    for ax in panels:
        for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
            assert min(t.get_fontsize() for t in ticks) >= 7
            boxes = [t.get_window_extent() for t in ticks]
            assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:])), "tick labels overlap"


def test_heatmap_figures_need_the_learning_rate():
    records = synthetic_records()
    with pytest.raises(ValueError, match="lr must be positive"):
        heatmaps.plot_logit_heatmaps(records, 0, [1], ATTRIBUTES, lr=0.0)


def test_interactive_viewer_offers_every_checkpoint_and_pair():
    records = synthetic_records()
    viewer = heatmaps.interactive_heatmaps(records, ATTRIBUTES, lr=LR, highlight=HAIR, dpi=30)
    (step, pair), image = viewer.children[0].children, viewer.children[1]
    assert list(step.options) == STEPS and step.value == STEPS[-1]
    assert [value for _, value in pair.options] == list(range(len(records.pairs)))
    first = bytes(image.value)
    assert first.startswith(b"\x89PNG")
    pair.value = 3   # redraws without a kernel
    assert bytes(image.value).startswith(b"\x89PNG") and bytes(image.value) != first
    assert plt.get_fignums() == []   # the viewer's figure is not left for the notebook to show


def test_attribute_figure_names_the_hair_colours_and_every_leading_output():
    records = synthetic_records()
    summary = summaries.summarise_attributes(records, ATTRIBUTES, HAIR, top=2)
    fig = brackets.plot_attribute_perturbation(summary, ATTRIBUTES, lr=LR)
    ax, ax_rank = fig.axes
    assert ax.get_yscale() == "log"
    labelled = {line.get_label().split(" (")[0]: line for line in ax.get_lines() if not line.get_label().startswith("_")}
    # brute force: the most perturbed output of every trained checkpoint
    leaders = [ATTRIBUTES[int(np.argmax(summary.magnitude[c]))] for c, step in enumerate(STEPS) if step > 0]
    others = {"Blond_Hair", "Gray_Hair", *leaders} - set(HAIR)
    assert set(labelled) == {f"the other {40 - len(HAIR) - len(others)} outputs", "median output", *HAIR, *others}
    for name in (*HAIR, *others):
        np.testing.assert_allclose(labelled[name].get_ydata(), summary.magnitude[:, ATTRIBUTES.index(name)])
        assert f"(leads at {leaders.count(name)} of {len(leaders)})" in labelled[name].get_label()
    np.testing.assert_allclose(labelled["median output"].get_ydata(), summary.median)
    assert len(ax.get_lines()) == (40 - len(HAIR) - len(others)) + 1 + 1 + len(others) + len(HAIR)
    # the right axis reads the same curves in logits at the learning rate: × lr²
    fig.canvas.draw()
    (logits_axis,) = ax.child_axes
    assert f"lr = {LR:g}" in logits_axis.get_ylabel()
    np.testing.assert_allclose(logits_axis.get_ylim(), np.array(ax.get_ylim()) * LR**2)
    rank_lines = {line.get_label().split(":")[0]: line for line in ax_rank.get_lines()
                  if line.get_label().split(":")[0] in HAIR}
    np.testing.assert_array_equal(rank_lines["Brown_Hair"].get_ydata(), summary.rank[:, 1])
    assert f"median rank {summary.median_rank['Brown_Hair']:g}" in rank_lines["Brown_Hair"].get_label()
    assert ax_rank.get_ylim()[0] > ax_rank.get_ylim()[1]   # rank 1 on top


def test_labelled_outputs_stop_at_the_colours_there_are():
    records = synthetic_records(hair_factor=1.0)   # no planted signal: many outputs lead somewhere
    summary = summaries.summarise_attributes(records, ATTRIBUTES, ("Black_Hair",), top=2)
    named = brackets.labelled_outputs(summary, ATTRIBUTES)
    assert list(named)[:3] == ["Blond_Hair", "Brown_Hair", "Gray_Hair"]   # the other hair colours first
    assert len(named) <= len(brackets.LABEL_COLOURS) - 1 and "Black_Hair" not in named
