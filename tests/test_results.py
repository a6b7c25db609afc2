"""The tolerant regression check: recording, each kind of check, and that it fails on a real change."""
import json
import math

import numpy as np
import pytest
import torch

from lie_helpers.training import results
from lie_helpers.engine import toy
from lie_helpers.engine.brackets import lie_bracket


def test_record_merges_and_loads(tmp_path):
    results.record(tmp_path, "02", order=np.float64(1.01), shape=torch.Size([2, 3]))
    results.record(tmp_path, "02", flag=np.bool_(True), values=np.array([1.0, 2.0]))
    results.record(tmp_path, "00", slope=2.0)
    assert json.loads((tmp_path / "results" / "02.json").read_text()) == {
        "order": 1.01, "shape": [2, 3], "flag": True, "values": [1.0, 2.0]}
    assert results.load(tmp_path) == {"00.slope": 2.0, "02.order": 1.01, "02.shape": [2, 3],
                                      "02.flag": True, "02.values": [1.0, 2.0]}


@pytest.mark.parametrize("check, good, bad", [
    ({"value": 1.0, "abs": 0.1}, 1.09, 1.11),
    ({"value": 2.0, "rel": 0.05}, 2.09, 2.11),
    ({"log10": 2e-6, "factor": 10}, 1.9e-5, 2.1e-5),
    ({"log10": 2e-6, "factor": 10}, 2.1e-7, 1.9e-7),
    ({"min": 0.9}, 0.9, 0.89),
    ({"max": 1e-12}, 1e-13, 2e-12),
    ({"min": 0, "max": 1}, [0.2, 1.0], [0.2, 1.1]),
    ({"equals": True}, True, False),
    ({"equals": [21, 15]}, [21, 15], [21, 14]),
    ({"value": 1.0, "abs": 0.1}, 1.0, math.nan),
    ({"min": 0.0}, 1.0, "1.0"),
])
def test_each_kind_passes_inside_and_fails_outside(check, good, bad):
    outcome = results.check_results({"01.x": good, "02.x": bad}, {"01.x": check, "02.x": check})
    assert [o.passed for o in outcome] == [True, False]


def test_a_result_that_was_not_recorded_fails(tmp_path, capsys):
    (tmp_path / "checks.toml").write_text('["00.slope"]\nvalue = 1.0\nabs = 0.1\nmeasured = "x"\n'
                                          '["01.count"]\nequals = 3\nmeasured = "x"\n')
    results.record(tmp_path, "00", slope=1.02, extra=5)
    assert results.main([str(tmp_path), "--checks", str(tmp_path / "checks.toml")]) == 1
    out = capsys.readouterr().out
    assert "NOT RECORDED" in out and "1 passed, 1 failed" in out and "shown but not checked: 00.extra" in out


def test_no_results_folder_names_the_fix(tmp_path, capsys):
    assert results.main([str(tmp_path / "nothing")]) == 2
    assert "run the chain into" in capsys.readouterr().err


def test_malformed_checks_are_refused(tmp_path):
    for text in ['["a.b"]\nvalue = 1.0\n', '["a.b"]\nlog10 = 1.0\n', '["a.b"]\nmeasured = "x"\n',
                 '["a.b"]\nequals = 1\nmin = 0\n']:
        (tmp_path / "c.toml").write_text(text)
        with pytest.raises(ValueError, match="a.b"):
            results.load_checks(tmp_path / "c.toml")


@pytest.mark.parametrize("path", [results.CHECKS_FILE, results.CHECKS_FILE.parent / "study_checks.toml",
                                  results.CHECKS_FILE.parent / "full_checks.toml"], ids=lambda p: p.name)
def test_the_committed_checks_are_well_formed_and_documented(path):
    checks = results.load_checks(path)
    assert len(checks) > (30 if path == results.CHECKS_FILE else 5)
    for name, check in checks.items():
        assert name[:2] in {"00", "01", "02", "03", "04", "05"} and name[2] == ".", name
        assert check.get("measured"), f"{name}: say what variation the tolerance comes from"
        assert "TO MEASURE" not in check["measured"], name


def _moved(check):
    """A value just beyond the tolerance of `check`."""
    if "equals" in check:
        value = check["equals"]
        return (not value) if isinstance(value, bool) else [v + 1 for v in value] if isinstance(value, list) else value + 1
    if "value" in check:
        return check["value"] + 1.01 * (check.get("abs", 0) + check.get("rel", 0) * abs(check["value"]))
    if "log10" in check:
        return check["log10"] * check["factor"] * 1.01
    return check["max"] * 1.01 + 1e-300 if "max" in check else check["min"] - 1e-3 * (abs(check["min"]) + 1)


def test_every_committed_check_fails_on_a_changed_result():
    for name, check in results.load_checks().items():
        assert not results.check_results({name: _moved(check)}, {name: check})[0].passed, name


def test_a_broken_engine_fails_the_check(monkeypatch):
    """Notebook 00's remainder slope, computed with a bracket 5% off, fails its committed check."""
    checks = results.load_checks()
    mlp = toy.tanh_mlp(n=8, d_in=3, hidden=16, d_out=2, seed=0)
    lrs = np.logspace(-5, -1, 9)
    good = toy.swap_check(mlp.model, mlp.loss_fn, mlp.examples[0], mlp.examples[1], lrs)
    monkeypatch.setattr(toy, "lie_bracket", lambda *a, **k: {n: 1.05 * t for n, t in lie_bracket(*a, **k).items()})
    broken = toy.swap_check(mlp.model, mlp.loss_fn, mlp.examples[0], mlp.examples[1], lrs)
    outcomes = results.check_results({"00.remainder_slope": good.slope},
                                     {"00.remainder_slope": checks["00.remainder_slope"]})
    assert outcomes[0].passed
    outcomes = results.check_results({"00.remainder_slope": broken.slope},
                                     {"00.remainder_slope": checks["00.remainder_slope"]})
    assert not outcomes[0].passed, broken.slope


# ---------------------------------------------------------------- issue 18, item 6: a checker that cannot pass what it should fail

@pytest.mark.parametrize("check, value", [
    ({"min": 0.9}, math.inf),                    # inf ≥ 0.9 passed
    ({"max": 1e-12}, -math.inf),                 # -inf ≤ 1e-12 passed
    ({"min": 0.0, "max": 1.0}, [0.5, math.inf]),
    ({"value": 1.0, "abs": 0.1}, math.inf),
    ({"log10": 1.0, "factor": 10}, math.inf),
    ({"equals": 3}, math.nan),
])
def test_non_finite_values_fail_every_check(check, value):
    assert not results.check_results({"01.x": value}, {"01.x": check})[0].passed


def test_a_check_may_say_that_non_finite_values_pass():
    check = {"max": 1e-12, "allow_nonfinite": True, "measured": "x"}
    assert results.check_results({"01.x": -math.inf}, {"01.x": check})[0].passed
    assert not results.check_results({"01.x": 1.0}, {"01.x": check})[0].passed


def write_checks(tmp_path, text):
    path = tmp_path / "checks.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ('["01.x"]\nmxa = 1.1\nmin = 0.9\nmeasured = "x"\n', r"01\.x.*unknown key.*mxa"),       # a misspelled bound
    ('["01.x"]\nvalue = 1.0\nabs = 0.1\nmax = 1.1\nmeasured = "x"\n', r"01\.x.*max"),     # a max beside value
    ('["01.x"]\nvalue = 1.0\nabs = inf\nmeasured = "x"\n', r"01\.x.*abs.*finite"),       # abs = inf passes anything
    ('["01.x"]\nmin = nan\nmeasured = "x"\n', r"01\.x.*min.*finite"),
    ('["01.x"]\nlog10 = 1.0\nfactor = 10\nmin = 0\nmeasured = "x"\n', r"01\.x.*min"),
    ('["01.x"]\nmin = 2\nmax = 1\nmeasured = "x"\n', r"01\.x.*min.*max"),
    ('["01.x"]\nvalue = "1"\nabs = 0.1\nmeasured = "x"\n', r"01\.x.*value.*number"),
    ('["01.x"]\nlog10 = 1.0\nfactor = 0.5\nmeasured = "x"\n', r"01\.x.*factor"),
    ('["01.x"]\nvalue = 1.0\nabs = -0.1\nmeasured = "x"\n', r"01\.x.*abs"),
    ('x = 1\n', r"'x'.*table"),
])
def test_the_schema_is_strict_and_names_the_check_and_the_key(tmp_path, text, message):
    path = write_checks(tmp_path, text)
    with pytest.raises(ValueError, match=message) as err:
        results.load_checks(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("text", ["", "# only comments\n", '["01.x"\nmin = 1\n', "\xff\xfe"])
def test_an_empty_or_unreadable_checks_file_is_an_error_naming_the_file(tmp_path, text, capsys):
    path = tmp_path / "checks.toml"
    path.write_bytes(text.encode("latin-1"))
    results.record(tmp_path, "01", x=1.0)
    with pytest.raises(ValueError, match=str(path)):
        results.load_checks(path)
    assert results.main([str(tmp_path), "--checks", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err


def test_a_missing_checks_file_is_an_error_naming_the_file(tmp_path, capsys):
    results.record(tmp_path, "01", x=1.0)
    assert results.main([str(tmp_path), "--checks", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err
