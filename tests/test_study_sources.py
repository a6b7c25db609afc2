"""The study's primary readout on tiny float64 models: the named sources sum to the loss, the dose moves Q and Q^g by
exactly 2 and 1 log10 per log10 w (and C5's statistic not at all), the shares' aggregation, the contrasts' intervals
agree with Holm, and the verdict follows planted numbers."""
import numpy as np
import pytest
import torch

from lie_helpers.analysis import source_brackets as sb
from lie_helpers.data.attributes import ATTRIBUTES, HAIR_COLOURS
from lie_helpers.study import contrasts, known_answers, sources, verdict
from lie_helpers.study.sources import GLASSES, HAIR, MAKEUP, REFERENCE, SOURCES
from lie_helpers.training.losses import LOSSES, SoftmaxGroupLoss, get_loss
from test_source_brackets import tiny_net

pytestmark = pytest.mark.usefixtures("one_thread")
DTYPE = torch.float64


def targets(n, seed=3):
    """40 attributes, at most one hair colour a face (some none), makeup and lipstick often together."""
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(n, 40, generator=g) > 0.5).to(DTYPE)
    hair = [ATTRIBUTES.index(a) for a in HAIR_COLOURS]
    t[:, hair] = 0
    for e in range(n):
        if e % 3:
            t[e, hair[e % 4]] = 1
    t[::2, [ATTRIBUTES.index("Heavy_Makeup"), ATTRIBUTES.index("Wearing_Lipstick")]] = 1
    return t


def inputs(n, seed=1):
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_the_named_sources_sum_to_the_loss_in_every_arm(loss):
    base = get_loss(loss)
    grouped = sources.SourceGroups(base, base.n_outputs)
    assert [s.name for s in grouped.source_layout(base.n_outputs)] == list(SOURCES)
    logits, y = torch.randn(5, base.n_outputs, dtype=DTYPE), targets(5)
    terms = grouped.source_terms(logits, y)
    assert terms.shape == (5, len(SOURCES))
    assert float(terms.sum()) == pytest.approx(float(base(logits, y)), rel=1e-13)
    # every term of the base loss lands in exactly one source; HAIR and MAKEUP are one term where a softmax holds them
    assert torch.equal(grouped.rows.sum(0), torch.ones(grouped.rows.shape[1], dtype=DTYPE))
    hair_terms, makeup_terms = (int(grouped.rows[SOURCES.index(k)].sum()) for k in (HAIR, MAKEUP))
    assert hair_terms == (1 if loss.startswith("categorical") else 4)
    assert makeup_terms == (1 if loss == "exclusive_makeup" else 2)
    outputs = sorted(o for s in grouped.source_layout(base.n_outputs) for o in s.outputs)
    assert outputs == list(range(base.n_outputs))


def test_a_source_that_splits_a_softmax_group_is_refused():
    with pytest.raises(ValueError, match="straddles"):
        sources.SourceGroups(get_loss("categorical_hair_matched"), 41, {"BLACK": ("Black_Hair",), "X": ("Smiling",)})


@pytest.mark.parametrize("loss, dosed", [("independent", HAIR), ("independent", "Smiling"),
                                         ("categorical_hair_matched", HAIR), ("exclusive_makeup", MAKEUP)])
def test_the_dose_moves_q_by_exactly_two_and_qg_by_one_per_log10_w(loss, dosed):
    base = get_loss(loss)
    model, x, y, batch = tiny_net(base.n_outputs), inputs(3), targets(3), inputs(4, seed=2)
    result = known_answers.dose_control(model, base, {"a": (x, y), "b": (x[[2, 0, 1]], y[[2, 0, 1]])}, batch, dosed)
    r = result["readouts"]
    assert r["Q, self-share"]["slope"] == pytest.approx(2.0, abs=1e-9)
    assert r["Q^g, J·g share"]["slope"] == pytest.approx(1.0, abs=1e-9)
    assert r["Q − 2·Q^g (C5's statistic)"]["slope"] == pytest.approx(0.0, abs=1e-9)
    steps = np.diff(r["Q, self-share"]["values"])
    np.testing.assert_allclose(steps, 2 * np.log10(2), atol=1e-9)            # w doubles each step: exactly 0.602
    assert all(r[k]["passed"] for k in known_answers.PRIMARY_READOUTS)


def frozen_adam(model, seed=5):
    """A fixed Adam state with random moments (float64), as at a checkpoint."""
    from lie_helpers.engine.adam import AdamState
    from lie_helpers.engine.brackets import parameters_of
    g = torch.Generator().manual_seed(seed)
    params = parameters_of(model)
    return AdamState({k: 0.1 * torch.randn(t.shape, generator=g, dtype=DTYPE) for k, t in params.items()},
                     {k: 0.01 * torch.rand(t.shape, generator=g, dtype=DTYPE) + 1e-4 for k, t in params.items()},
                     50, (0.8, 0.999), 1e-8, 5e-3)


@pytest.mark.parametrize("loss, dosed", [("independent", HAIR), ("independent", "Smiling"),
                                         ("categorical_hair_matched", HAIR)])
def test_at_a_fixed_adam_state_the_dose_moves_qa_by_two_qag_by_one_and_the_whole_self_bracket_along_its_curve(loss, dosed):
    base = get_loss(loss)
    model, x, y, batch = tiny_net(base.n_outputs), inputs(3), targets(3), inputs(4, seed=2)
    state = frozen_adam(model)
    result = known_answers.adam_dose_control(model, base, {"a": (x, y), "b": (x[[2, 0, 1]], y[[2, 0, 1]])}, batch,
                                             dosed, state)
    r = result["readouts"]
    slopes = [r[name]["slope"] for name in known_answers.ADAM_DOSE_EXPECTED]
    np.testing.assert_allclose(slopes, [2.0, 1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(np.diff(r["Q^A, Adam self-share (D^A)"]["values"]), 2 * np.log10(2), atol=1e-9)
    full = result["full"]
    assert full["deviation"] < 1e-9 and full["passed"]
    assert full["values"][0] == pytest.approx(full["curve"][0], abs=1e-12)
    assert abs(full["slope"] - 2.0) > 1e-3          # the momentum part is linear in w: no slope of 2
    assert all(r[k]["passed"] for k in known_answers.ADAM_DOSE_EXPECTED)


def test_adams_record_holds_every_part_and_reduces_to_the_sgd_record_at_p_one_without_momentum():
    base = get_loss("independent")
    model, x, y, batch = tiny_net(40), inputs(3), targets(3), inputs(4, seed=2)
    state = frozen_adam(model)
    state = type(state)(state.m, {k: torch.zeros_like(t) for k, t in state.v.items()}, 50, (0.0, 0.999), 1.0, 5e-3)
    adam = sources.adam_source_record(model, base, x, y, batch, state)
    sgd = sources.source_record(model, base, x, y, batch)
    assert {f"{s}|{p}" for s in sources.SCALES for p in sources.ADAM_PARTS} | {"pairs"} == set(adam)
    for scale in sources.SCALES:
        np.testing.assert_allclose(adam[f"{scale}|adam_self"], sgd[f"{scale}|self"], rtol=1e-11)
        np.testing.assert_allclose(adam[f"{scale}|adam_full_self"], sgd[f"{scale}|self"], rtol=1e-11)
        np.testing.assert_allclose(adam[f"{scale}|adam_first_order"], sgd[f"{scale}|first_order"], rtol=1e-11)


def test_the_dose_leaves_every_other_self_part_unchanged():
    base = get_loss("independent")
    model, x, y, batch = tiny_net(40), inputs(3), targets(3), inputs(4, seed=2)
    grouped = sources.SourceGroups(base, 40)
    with torch.no_grad():
        logits = model(batch)
    plain = sources.record_from(sb.source_brackets(model, grouped, x, y, batch, self_part=True), "independent", logits)
    dosed = sources.record_from(sb.source_brackets(model, sb_weighted(grouped, HAIR, 4.0), x, y, batch, self_part=True),
                                "independent", logits)
    k = SOURCES.index(HAIR)
    others = [j for j in range(len(SOURCES)) if j != k]
    np.testing.assert_allclose(dosed["fisher|self"][:, others], plain["fisher|self"][:, others], rtol=1e-11)
    np.testing.assert_allclose(dosed["fisher|self"][:, k], 16 * plain["fisher|self"][:, k], rtol=1e-11)
    np.testing.assert_allclose(dosed["fisher|first_order"][:, k], 4 * plain["fisher|first_order"][:, k], rtol=1e-11)


def sb_weighted(grouped, source, w):
    from lie_helpers.analysis.controls import WeightedLoss
    return WeightedLoss(grouped, {source: w}, grouped.base.n_outputs)


def test_a_source_that_vanishes_has_share_minus_infinity_and_no_warning(recwarn):
    m = np.ones((6, len(SOURCES)))
    m[:, SOURCES.index(REFERENCE[0])] = 0.0                  # a saturated sigmoid: zero residuals, zero J·g
    q = sources.shares(m)
    assert q[REFERENCE[0]] == -np.inf and all(np.isfinite(v) for k, v in q.items() if k != REFERENCE[0])
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_shares_leave_the_source_out_of_its_own_reference():
    m = np.ones((5, len(SOURCES)))
    m[:, SOURCES.index("Smiling")] = 1000.0
    m[:, SOURCES.index("Male")] = 10.0
    q = sources.shares(m)
    assert q["Smiling"] == pytest.approx(3.0)                              # reference: Male, Mouth, Bangs, Hat -> median 0
    assert q[HAIR] == pytest.approx(0.0) and q["Male"] == pytest.approx(1.0)
    assert sources.REST not in q and set(q) == set(SOURCES) - {sources.REST}
    assert len(REFERENCE) == 5 and not set(REFERENCE) & {a for k in (HAIR, GLASSES, MAKEUP) for a in sources.SOURCE_GROUPS[k]}


def test_the_median_over_pairs_and_the_dominant_example_left_out():
    pairs = np.array([(i, j) for i in range(4) for j in range(i + 1, 4)])          # 6 pairs of 4 examples
    m = np.ones((6, len(SOURCES)))
    k = SOURCES.index(HAIR)
    m[(pairs == 2).any(axis=1), k] = 1e6                                        # example 2 carries the hair source
    assert sources.dominant_example(m, pairs, k) == 2
    assert sources.dominant_share(m, pairs, k) == pytest.approx(3e6 / (3e6 + 3), rel=1e-9)
    assert sources.shares(m)[HAIR] == pytest.approx(np.log10((1 + 1e6) / 2))     # median of three 1s and three 1e6s
    assert sources.leave_one_out(m, pairs, HAIR) == pytest.approx(0.0)
    assert np.isnan(sources.leave_one_out(m[:1], pairs[:1], HAIR))              # two examples: nothing left


def planted(shift: dict, n_seeds=8, seed=0, first_order=0.5, noise=0.05):
    """RunShares of the contrasts' arms: noise, plus shift {arm: {source: log10 added to Q}}; Q^g = first_order × Q."""
    rng = np.random.default_rng(seed)
    out = {}
    for arm in ("independent", "independent, no bands", "categorical, matched", "exclusive makeup"):
        rows = []
        for k in range(n_seeds):
            q = {s: float(rng.normal(0, noise)) for s in SOURCES[:-1]}
            for s, v in shift.get(arm, {}).items():
                q[s] += v
            rows.append(contrasts.RunShares(arm, k, q, {s: first_order * v for s, v in q.items()}, q, q[HAIR], 0.3))
        out[arm] = rows
    return out


def test_the_contrasts_intervals_exclude_zero_exactly_when_holm_rejects():
    for seed in range(6):
        tables = contrasts.contrast_tables(planted({"independent": {HAIR: 0.06 * seed, GLASSES: 0.1}}, seed=seed))
        for table in tables.values():
            for row in table.values():
                excludes = row["low"] > 0 or row["high"] < 0
                assert excludes == (row["p_holm"] <= 0.05)
                assert row["low"] <= row["mean"] <= row["high"] and np.isfinite(row["detectable"])
    assert set(tables["Q"]) == set(contrasts.CONTRASTS) and set(tables["against J·g"]) == set(contrasts.PAIRED)
    first = max(tables["Q"].values(), key=lambda row: row["level"])        # Holm's first step: α/5
    assert first["level"] == pytest.approx(0.99) and np.isfinite([first["low"], first["high"]]).all()   # 8 seeds suffice


def control(q_slope=2.0):
    def dose(source):
        readouts = {name: {"values": [0.0, expected * 0.30103], "slope": expected, "expected": expected,
                           "tolerance": tol, "passed": True} for name, (expected, tol) in known_answers.DOSE_EXPECTED.items()}
        readouts["Q, self-share"].update(slope=q_slope, values=[0.0, q_slope * 0.30103],
                                         passed=abs(q_slope - 2) <= 0.3)
        for name in ("old readout, bracket", "old readout, J·g"):
            readouts[name].update(slope=0.01, passed=False)
        return {"source": source, "weights": [1.0, 2.0], "readouts": readouts}
    checks = {k: {"value": 0.0 if kind == "max" else 0.5, "kind": kind, "bound": b, "passed": True}
              for k, (kind, b) in known_answers.CURVATURE_EXPECTED.items()}
    return {"dose": {HAIR: dose(HAIR), "Smiling": dose("Smiling")},
            "curvature": {"source": "Eyeglasses", "taus": [0.5, 2.0, 4.0], "checks": checks}}


def test_the_verdict_reads_a_planted_exclusivity_effect_beyond_the_gradient():
    tables = contrasts.contrast_tables(planted({"independent": {HAIR: 0.8}}, first_order=0.0))
    lines = verdict.verdict(tables, control(), 8)
    assert any("passed" in line and "Q, self-share" in line for line in lines)
    assert any(line.startswith("The old readout") and "fails" in line for line in lines)
    c4 = next(line for line in lines if line.startswith("C4:"))
    assert "independent loss raises" in c4 and "what the write-up's hypothesis predicts" in c4
    assert "exceeds what the source's J·g predicts" in c4
    c2 = next(line for line in lines if line.startswith("C2:"))
    assert "the hair band raises" in c2                                           # (a) is the banded arm in C2 too
    assert "does not detectably change" in next(line for line in lines if line.startswith("C3:"))
    assert "could have detected" in next(line for line in lines if line.startswith("C3:"))   # spread 0.05 << 0.60


def test_the_verdict_calls_an_effect_its_gradient_predicts_first_order():
    # Q^g moves by half of Q (first_order=0.5 of the shift too): Q − 2·Q^g does not move
    tables = contrasts.contrast_tables(planted({"independent": {HAIR: 0.8}}, first_order=0.5, noise=0.05))
    c4 = next(line for line in verdict.verdict(tables, control(), 8) if line.startswith("C4:"))
    assert "no more than the source's J·g predicts" in c4 and "first-order effect" in c4


def test_no_contrast_is_read_from_a_readout_that_failed_its_control():
    tables = contrasts.contrast_tables(planted({"independent": {HAIR: 0.8}}))
    lines = verdict.verdict(tables, control(q_slope=0.4), 8)
    assert "FAILED" in next(line for line in lines if "Q, self-share" in line)
    assert lines[-1].startswith("The self-share Q failed") and not any(line.startswith("C4:") for line in lines)


def test_a_null_with_wide_spread_says_what_it_could_not_detect():
    tables = contrasts.contrast_tables(planted({}, noise=0.6, seed=4))
    lines = verdict.verdict(tables, control(), 8)
    c4 = next(line for line in lines if line.startswith("C4:"))
    assert "does not detectably change" in c4 and "could not have detected" in c4 and "No support" in c4
    assert lines[-1].startswith("Each test is an exact sign-flip test over 8 seeds")


def with_adam(record, qa_slope=2.0, deviation=1e-7):
    """`record` with planted Adam dose controls (known_answers.adam_dose_control's shape)."""
    def dose(source):
        readouts = {name: {"values": [0.0, expected * 0.30103], "slope": expected, "expected": expected,
                           "tolerance": tol, "passed": True} for name, (expected, tol) in known_answers.ADAM_DOSE_EXPECTED.items()}
        first = next(iter(readouts))
        readouts[first].update(slope=qa_slope, values=[0.0, qa_slope * 0.30103], passed=abs(qa_slope - 2) <= 0.3)
        return {"source": source, "weights": [1.0, 2.0], "readouts": readouts,
                "full": {"values": [0.0, 0.5], "curve": [0.0, 0.5], "deviation": deviation, "tolerance": 0.01,
                         "passed": deviation <= 0.01, "slope": 1.66}}
    return {**record, "adam_dose": {HAIR: dose(HAIR), "Smiling": dose("Smiling")}}


def test_adams_readout_is_read_only_when_it_passed_and_c4_is_compared_with_the_primary():
    primary = contrasts.contrast_tables(planted({}, noise=0.6, seed=4))
    adam = contrasts.contrast_tables(planted({"independent": {HAIR: 0.8}}, first_order=0.0))
    lines = verdict.adam_lines(with_adam(control()), adam, primary)
    assert all("passed" in line for line in lines[:4])
    c4 = next(line for line in lines if line.startswith("On Adam's readout, C4:"))
    assert "raises the hair source's Adam self-share Q^A" in c4 and "what the write-up's hypothesis predicts" in c4
    assert "depends on the readout: detected on Q^A (Adam's bilinear part), not on the primary" in lines[-1]
    assert lines[-1].endswith("The primary's is the registered verdict.")
    assert known_answers.readouts_passed(with_adam(control()))["Q^A"]
    failed = verdict.adam_lines(with_adam(control(), qa_slope=0.5), None, primary)
    assert "FAILED" in failed[0] and failed[-1].startswith("Adam's self-share Q^A failed")
    assert not any("C4" in line for line in failed)
    assert "FAILED" in verdict.adam_lines(with_adam(control(), deviation=0.2), adam, primary)[3]
    assert not known_answers.readouts_passed(control())["Q^A"]          # a record without Adam's controls
    assert "not read" in verdict.adam_lines(control(), adam, primary)[0]


def test_adams_whole_bracket_and_its_momentum_share_are_reported_beside_q_a():
    primary = contrasts.contrast_tables(planted({}, noise=0.6, seed=4))
    adam = contrasts.contrast_tables(planted({"independent": {HAIR: 0.8}}))            # J·Pg's C4 moves too
    whole = adam["Q"]
    momentum = {**{k: 3.0 for k in sources.REFERENCE}, HAIR: 1.0, sources.GLASSES: 0.2}
    lines = verdict.adam_lines(with_adam(control()), adam, primary, whole=whole, momentum=momentum)
    share = next(line for line in lines if line.startswith("In Adam's self bracket"))
    assert "outweighs" in share and "+3.0 on the reference sources" in share and "not Adam's bracket as a whole" in share
    assert any(line.startswith("On Adam's whole self bracket (reported") for line in lines)
    assert "a bracket's C4 may be first order" in lines[-1]
    assert "a check of the code" in next(line for line in lines if line.startswith("Adam's whole self bracket"))


def test_softmax_group_losses_keep_their_groups_as_one_source():
    for loss in ("categorical_hair_matched", "exclusive_makeup"):
        base = get_loss(loss)
        assert isinstance(base, SoftmaxGroupLoss)
        layout = sources.SourceGroups(base, base.n_outputs).source_layout(base.n_outputs)
        group = HAIR if loss.startswith("categorical") else MAKEUP
        assert len(layout[SOURCES.index(group)].outputs) == len(sources.SOURCE_GROUPS[group]) + 1   # members + "none"
