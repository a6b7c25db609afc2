"""Losses: values against hand-written formulas, the positive control's targets and optimum, gradient shares."""
import math

import pytest
import torch

from lie_helpers.training import losses as L
from lie_helpers.data.attributes import ATTRIBUTES, HAIR_COLOURS

DTYPE = torch.float64
MAKEUP = [ATTRIBUTES.index(a) for a in L.MAKEUP_PAIR]


def random_batch(n, n_outputs, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(n, n_outputs, generator=g, dtype=DTYPE), (torch.rand(n, 40, generator=g) > 0.5).to(DTYPE)


def brute_force_loss(z, y, binary, members, weight):
    """Σ over examples of the binary terms and weight · −Σ_c t_c log softmax_c, / (batch · 40), in plain loops."""
    z, y, total = z.tolist(), y.tolist(), 0.0
    for n in range(len(z)):
        for k, i in enumerate(binary):
            p = 1 / (1 + math.exp(-z[n][k]))
            total -= y[n][i] * math.log(p) + (1 - y[n][i]) * math.log(1 - p)
        group = z[n][len(binary):]
        if not group:
            continue
        present = [y[n][i] for i in members] + [float(sum(y[n][i] for i in members) == 0)]
        lse = math.log(sum(math.exp(v) for v in group))
        total -= weight * sum(t / sum(present) * (v - lse) for t, v in zip(present, group))
    return total / (len(z) * 40)


@pytest.mark.parametrize("name, weight", [("categorical_hair_matched", 1.0), ("categorical_hair_x4", 4.0),
                                          ("exclusive_makeup", 1.0)])
def test_grouped_losses_against_brute_force(name, weight):
    loss_fn = L.get_loss(name)
    z, y = random_batch(6, loss_fn.n_outputs)
    y[0, MAKEUP] = 1                                          # both present: target (½, ½, 0)
    y[1, L.HAIR_INDEX[:2]] = 1                                # two hair colours (real CelebA has some)
    members = loss_fn.group_index[0]
    assert loss_fn(z, y).item() == pytest.approx(brute_force_loss(z, y, loss_fn.binary_index, members, weight),
                                                 rel=1e-12)
    assert L.get_loss("independent")(z[:, :40], y).item() == pytest.approx(
        brute_force_loss(z[:, :40], y, range(40), [], 0.0), rel=1e-12)


def test_layouts_names_and_bad_groups():
    hair, makeup = L.get_loss("categorical_hair_matched"), L.get_loss("exclusive_makeup")
    assert hair.output_names == [ATTRIBUTES[i] for i in L.OTHER_INDEX] + [*HAIR_COLOURS, "No_Hair_Colour"]
    assert makeup.n_outputs == 41 and makeup.output_names[38:40] == list(L.MAKEUP_PAIR)
    assert L.get_loss("independent").output_names == list(ATTRIBUTES) and L.get_loss("independent").group_slices() == []
    assert L.outputs_of(hair, HAIR_COLOURS) == [36, 37, 38, 39, 40]      # the "none" class belongs to the hair colours
    assert L.outputs_of(hair, ["Black_Hair", "Male"]) == [L.OTHER_INDEX.index(ATTRIBUTES.index("Male")), 36]
    assert L.outputs_of(L.get_loss("independent"), HAIR_COLOURS) == L.HAIR_INDEX
    with pytest.raises(ValueError, match="unknown attributes"):
        L.output_layout([("Black_Hair", "Purple_Hair")])
    with pytest.raises(ValueError, match="share an attribute"):
        L.output_layout([("Black_Hair", "Blond_Hair"), ("Blond_Hair", "Gray_Hair")])
    with pytest.raises(ValueError, match="Unknown loss"):
        L.get_loss("mse")
    with pytest.raises(ValueError, match="retired: categorical_hair_x4"):
        L.get_loss("categorical_hair")


def test_predict_takes_the_argmax_of_each_group():
    loss_fn = L.get_loss("exclusive_makeup")
    z = torch.full((3, 41), -1.0, dtype=DTYPE)
    z[:, 38:] = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    z[0, 0] = 1.0
    out = loss_fn.predict(z)
    assert out[:, MAKEUP].tolist() == [[1, 0], [0, 1], [0, 0]]           # never both: the control cannot say so
    assert out[0, 0] == 1 and out.sum() == 3                              # the binary outputs: z > 0
    hair = L.get_loss("categorical_hair_matched").predict(torch.cat([torch.zeros(1, 36), torch.tensor([[0, 0, 5.0, 0, 0]])], 1))
    assert [ATTRIBUTES[i] for i in hair[0].nonzero()] == ["Brown_Hair"]


def test_the_control_cannot_fit_a_face_with_both():
    """Its best prediction for such a face is p = (½, ½, 0): zero gradient, loss log 2 in the group."""
    loss_fn = L.get_loss("exclusive_makeup")
    y = torch.zeros(1, 40, dtype=DTYPE)
    y[0, MAKEUP] = 1
    z = torch.zeros(1, 41, dtype=DTYPE)
    z[0, :38] = -40.0                                        # the binary terms ≈ 0
    z[0, 40] = -40.0
    z.requires_grad_(True)
    loss = loss_fn(z, y)
    (gradient,) = torch.autograd.grad(loss, z)
    assert loss.item() * 40 == pytest.approx(math.log(2), rel=1e-12)
    assert gradient.abs().max() < 1e-15
    z_independent = torch.full((1, 40), -40.0, dtype=DTYPE)
    z_independent[0, MAKEUP] = 40.0
    assert L.get_loss("independent")(z_independent, y).item() < 1e-15     # the independent loss fits it exactly


def calibrated_generated_like(n=20_000, seed=0):
    """Data with a known posterior like the generated faces': the hair colour is clear except black vs brown
    (posterior σ(±2.5 + 1.5·noise)), 36 other attributes with p uniform in (0.05, 0.95); labels drawn from
    the posterior; logits of both losses calibrated to it."""
    g = torch.Generator().manual_seed(seed)
    c = torch.multinomial(torch.tensor([0.239, 0.148, 0.205, 0.042, 0.366]), n, replacement=True, generator=g)
    m = torch.nn.functional.one_hot(c, 5).to(DTYPE)
    dark = (c == 0) | (c == 2)
    q = torch.sigmoid(torch.where(c == 0, 2.5, -2.5).to(DTYPE) + 1.5 * torch.randn(n, generator=g, dtype=DTYPE))
    m[dark] = torch.stack([q, 0 * q, 1 - q, 0 * q, 0 * q], 1)[dark]
    posterior = 0.98 * m + 0.02 / 5
    drawn = torch.multinomial(posterior, 1, generator=g).squeeze(1)
    other = 0.05 + 0.9 * torch.rand(n, 36, generator=g, dtype=DTYPE)
    y = torch.zeros(n, 40, dtype=DTYPE)
    y[:, L.OTHER_INDEX] = (torch.rand(n, 36, generator=g, dtype=DTYPE) < other).to(DTYPE)
    y[:, L.HAIR_INDEX] = torch.nn.functional.one_hot(drawn, 5)[:, :4].to(DTYPE)
    independent = torch.zeros(n, 40, dtype=DTYPE)
    independent[:, L.OTHER_INDEX], independent[:, L.HAIR_INDEX] = torch.logit(other), torch.logit(posterior[:, :4])
    return y, independent, torch.cat([torch.logit(other), posterior.log()], 1)


def shares(y, independent_logits, categorical_logits):
    a = L.gradient_share(L.get_loss("independent"), independent_logits, y, HAIR_COLOURS)
    return {name: L.gradient_share(L.get_loss(name), categorical_logits, y, HAIR_COLOURS) / a
            for name in ("categorical_hair_matched", "categorical_hair_x4")}


def test_gradient_share_closed_form_at_zero_logits():
    """At z = 0: independent hair rows (½ − y) have norm² 4/4 = 1 per example, the 36 others 9; a 5-class
    softmax's p − e_c has norm² 0.8·w²."""
    _, y = random_batch(50, 40)
    assert L.gradient_share(L.get_loss("independent"), torch.zeros(50, 40), y, HAIR_COLOURS) == pytest.approx(1 / 3)
    y[:, L.HAIR_INDEX] = 0
    y[:, L.HAIR_INDEX[0]] = 1
    assert L.gradient_share(L.get_loss("categorical_hair_x4"), torch.zeros(50, 41), y, HAIR_COLOURS) == pytest.approx(
        4 * 0.8 ** 0.5 / 3)


def test_matched_weight_gives_the_independent_gradient_scale_and_x4_four_times_it():
    y, independent, categorical = calibrated_generated_like()
    small = 0.1 * torch.randn(len(y), 41, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    for ratio in (shares(y, torch.zeros(len(y), 40), torch.zeros(len(y), 41)),       # initialisation
                  shares(y, small[:, :40], small),
                  shares(y, independent, categorical)):                               # calibrated
        assert 0.8 <= ratio["categorical_hair_matched"] <= 1.25, ratio
        assert 3.5 <= ratio["categorical_hair_x4"] <= 4.5, ratio
        assert ratio["categorical_hair_x4"] == pytest.approx(4 * ratio["categorical_hair_matched"], rel=1e-12)
