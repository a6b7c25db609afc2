"""Figures: the training plots draw what they promise on small synthetic inputs; save_figure writes PNG + PDF."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from lie_helpers.data.attributes import ATTRIBUTES
from lie_helpers.figures.style import save_figure, set_style
from lie_helpers.figures.training import accuracy_frame, plot_base_rates, plot_image_grid, plot_training_curves
from lie_helpers.figures.widgets import figure_slider

BLACK, BROWN, MALE, BALD = (ATTRIBUTES.index(a) for a in ("Black_Hair", "Brown_Hair", "Male", "Bald"))


@pytest.fixture(autouse=True)
def close_figures():
    set_style()
    yield
    plt.close("all")


def fake_metrics(steps=(0, 10, 20, 30)):
    """load_metrics-shaped records: Black_Hair's accuracy dips at step 20, every other attribute is 0.9."""
    records = []
    for i, step in enumerate(steps):
        accuracy = {a: 0.9 for a in ATTRIBUTES}
        accuracy["Black_Hair"] = 0.7 if step == 20 else 0.95
        records.append({"step": step, "train_loss": None if step == 0 else 1.0 / (i + 1),
                        "valid_loss": 1.2 / (i + 1), "valid_mean_accuracy": float(np.mean(list(accuracy.values()))),
                        "valid_accuracy": accuracy})
    return records


def test_accuracy_frame_has_one_row_per_step_and_one_column_per_attribute():
    frame = accuracy_frame(fake_metrics())
    assert list(frame.index) == [0, 10, 20, 30]
    assert list(frame.columns) == list(ATTRIBUTES)
    assert frame.loc[20, "Black_Hair"] == 0.7


def test_training_curves_draw_losses_and_highlighted_accuracies():
    metrics = fake_metrics()
    fig = plot_training_curves(metrics, "a title", references={"Bayes limit": 0.97})
    ax_loss, ax_acc, ax_zoom = fig.axes
    assert fig._suptitle.get_text() == "a title"
    # training loss skips step 0 (no steps taken yet); validation loss has every checkpoint
    train_line, valid_line = ax_loss.get_lines()
    assert list(train_line.get_xdata()) == [10, 20, 30]
    np.testing.assert_allclose(valid_line.get_ydata(), [m["valid_loss"] for m in metrics])
    for ax in (ax_acc, ax_zoom):   # the same curves on both: 38 grey lines, the mean, two highlighted, the reference
        labels = [line.get_label() for line in ax.get_lines()]
        black = next(line for line in ax.get_lines() if line.get_label().startswith("Black_Hair"))
        np.testing.assert_allclose(black.get_ydata(), [0.95, 0.95, 0.7, 0.95])
        assert "lowest in the second half 0.700" in black.get_label()
        assert any(label.startswith("Brown_Hair") for label in labels)
        assert any(label.startswith("Bayes limit: 0.970") for label in labels)
        assert len(ax.get_lines()) == 38 + 1 + 1 + 2 + 1   # others, their legend handle, mean, highlighted, reference
    assert ax_zoom.get_ylim()[0] <= 0.7


def test_training_curves_show_the_whole_accuracy_range_and_say_where_they_zoom():
    metrics = fake_metrics()
    metrics[0]["valid_accuracy"]["Bald"] = 0.03   # untrained: far below the rest
    metrics[2]["valid_accuracy"]["Attractive"] = 0.45   # a trained noise attribute
    fig = plot_training_curves(metrics, "ranges")
    _, ax_acc, ax_zoom = fig.axes
    drawn = np.concatenate([line.get_ydata() for line in ax_acc.get_lines() if len(line.get_ydata())])
    low, high = ax_acc.get_ylim()
    assert low <= drawn.min() == 0.03 and high >= drawn.max()   # nothing cut on the whole-range panel
    zoom_low, zoom_high = ax_zoom.get_ylim()
    assert 0.45 < zoom_low <= 0.7 and zoom_high >= 0.95
    assert f"{zoom_low:.2f}" in ax_zoom.get_title()   # the zoom says where its axis starts ...
    band = next(p for p in ax_acc.patches if p.get_label() == "band zoomed at right")   # ... and shades its band
    assert band.get_bbox().y0 == pytest.approx(zoom_low)


def test_training_curves_accept_a_single_checkpoint():
    fig = plot_training_curves(fake_metrics(steps=(0,)), "only step 0")
    assert len(fig.axes) == 3


def test_image_grid_shows_n_images_with_labels_and_marks():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=g)
    attributes = torch.zeros(5, 40, dtype=torch.int64)
    attributes[0, [BLACK, MALE]] = 1
    attributes[1, BROWN] = 1
    attributes[2, BALD] = 1
    fig = plot_image_grid(images, attributes, n=3, caption="grid", marked=[False, True, False],
                          marked_label="ambiguous")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 3
    np.testing.assert_array_equal(shown[0].images[0].get_array(), images[0].permute(1, 2, 0).numpy())
    titles = [ax.get_title() for ax in shown]
    assert titles[0] == "black hair\nmale"
    assert titles[1] == "brown hair\n–\nambiguous"
    assert titles[2].startswith("bald")
    assert [len(ax.patches) for ax in shown] == [0, 1, 0]


def test_base_rates_plot_one_row_per_attribute():
    observed = {"A": 0.1, "B": 0.5, "C": 0.9}
    expected = {"A": 0.2, "B": 0.5, "C": 0.8}
    fig = plot_base_rates(observed, expected, "rates", labels=("train", "target"))
    ax = fig.axes[0]
    target_line, train_line = ax.get_lines()
    assert (target_line.get_label(), train_line.get_label()) == ("target", "train")
    np.testing.assert_allclose(train_line.get_xdata(), [0.1, 0.5, 0.9])
    np.testing.assert_allclose(target_line.get_xdata(), [0.2, 0.5, 0.8])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["A", "B", "C"]


def test_save_figure_writes_png_and_pdf_with_the_caption(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    paths = save_figure(fig, tmp_path / "figures", "01_test", "GENERATED data · a caption")
    assert [p.name for p in paths] == ["01_test.png", "01_test.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert "GENERATED data · a caption" in [t.get_text() for t in fig.texts]


def test_figure_slider_redraws_into_an_image_widget():
    import ipywidgets as widgets

    def draw(value):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, value])
        return fig

    slider = widgets.FloatSlider(value=1.0, min=0.0, max=2.0)
    box = figure_slider(draw, slider)
    first = box.children[1].value
    slider.value = 2.0
    assert box.children[0] is slider and first[:8] == b"\x89PNG\r\n\x1a\n" and box.children[1].value != first
    assert not plt.get_fignums()   # every drawn figure is closed
