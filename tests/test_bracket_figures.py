"""Figures of notebook 03 on synthetic records: the expected artists and numbers (the page: test_heatmap_page)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lie_helpers import bracket_figures, summaries  # noqa: E402
from lie_helpers.attributes import ATTRIBUTES  # noqa: E402
from test_summaries import HAIR, STEPS, synthetic_records  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_rms_loglog_draws_points_fits_and_a_slope_one_reference():
    records = synthetic_records(slope=1.0)
    fig = bracket_figures.plot_rms_loglog(records, [1, 3, 5])
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
    assert bracket_figures.color_limit(values, 100) == 1000.0
    assert bracket_figures.color_limit(values, 90) < 1.0
    assert bracket_figures.color_limit(np.zeros(5)) == 1.0


def test_heatmap_frame_updates_data_scale_and_title():
    records = synthetic_records()
    fig, update = bracket_figures.heatmap_frame(records, ATTRIBUTES, highlight=HAIR)
    update(4, 2)
    heatmap = fig.axes[0].images[0]
    values = records.logit_perturbation[4, 2].numpy()
    np.testing.assert_array_equal(heatmap.get_array(), values)
    assert heatmap.get_clim() == pytest.approx((-np.percentile(np.abs(values), 99), np.percentile(np.abs(values), 99)))
    assert "step 200" in fig.get_suptitle() and "[v0, v3]" in fig.get_suptitle()
    pairs_panel = fig.axes[2]
    ticks = {t.get_text(): t for t in pairs_panel.get_xticklabels()}
    assert list(ticks) == list(ATTRIBUTES)
    assert ticks["Black_Hair"].get_color() != ticks["Male"].get_color()
    # The pairs panel shows each pair's outputs relative to its median; the planted hair stands out.
    relative = pairs_panel.images[0].get_array()
    assert relative.shape == (len(records.pairs), 40)
    assert np.all(relative[:, ATTRIBUTES.index("Brown_Hair")] > 2)


def test_static_heatmaps_have_one_panel_per_checkpoint():
    records = synthetic_records()
    fig = bracket_figures.plot_logit_heatmaps(records, 0, [0, 2, 4, 5], ATTRIBUTES, highlight=HAIR)
    panels = [ax for ax in fig.axes if ax.images and ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == [f"step {STEPS[c]}" for c in (0, 2, 4, 5)]
    for ax in panels:
        low, high = ax.images[0].get_clim()
        assert low == -high > -np.inf
        assert sum(isinstance(p, matplotlib.patches.Rectangle) and not p.get_fill() for p in ax.patches) == 2


def test_interactive_viewer_offers_every_checkpoint_and_pair():
    records = synthetic_records()
    viewer = bracket_figures.interactive_heatmaps(records, ATTRIBUTES, highlight=HAIR, dpi=30)
    (step, pair), image = viewer.children[0].children, viewer.children[1]
    assert list(step.options) == STEPS and step.value == STEPS[-1]
    assert [value for _, value in pair.options] == list(range(len(records.pairs)))
    first = bytes(image.value)
    assert first.startswith(b"\x89PNG")
    pair.value = 3   # redraws without a kernel
    assert bytes(image.value).startswith(b"\x89PNG") and bytes(image.value) != first
    assert plt.get_fignums() == []   # the viewer's figure is not left for the notebook to show


def test_attribute_figure_highlights_the_chosen_outputs():
    records = synthetic_records()
    summary = summaries.summarise_attributes(records, ATTRIBUTES, HAIR, top=2)
    fig = bracket_figures.plot_attribute_perturbation(summary, ATTRIBUTES)
    ax, ax_rank = fig.axes
    assert ax.get_yscale() == "log"
    labelled = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert set(labelled) == {"other outputs", "median output", *HAIR}
    np.testing.assert_allclose(labelled["Black_Hair"].get_ydata(), summary.magnitude[:, ATTRIBUTES.index("Black_Hair")])
    np.testing.assert_allclose(labelled["median output"].get_ydata(), summary.median)
    assert len(ax.get_lines()) == 40 - 2 + 1 + 1 + 2
    rank_lines = {line.get_label().split(":")[0]: line for line in ax_rank.get_lines()
                  if line.get_label().split(":")[0] in HAIR}
    np.testing.assert_array_equal(rank_lines["Brown_Hair"].get_ydata(), summary.rank[:, 1])
    assert f"median rank {summary.median_rank['Brown_Hair']:g}" in rank_lines["Brown_Hair"].get_label()
    assert ax_rank.get_ylim()[0] > ax_rank.get_ylim()[1]   # rank 1 on top
