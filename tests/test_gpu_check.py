"""The GPU check's tiny path on the CPU: report schema, arithmetic, failure handling; and its helpers."""
import dataclasses
import json
import math
import time

import pytest
import torch

import lie_helpers as lh
from lie_helpers.pipeline import bench, gpu_check, gpu_report
from lie_helpers.training.config import get_profile, swap_steps
from lie_helpers.training.losses import get_loss


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # as conftest's one_thread: 2 spinning threads on 2 busy cores took 80× longer
    try:
        gpu_check.main(["--tiny", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def leaves(tree, path=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{path}{key}.")
        else:
            yield f"{path}{key}", value


def test_report_has_every_section_and_only_finite_numbers_or_skip_reasons(report):
    data, _ = report
    assert data["format"] == gpu_check.FORMAT and data["mode"] == "tiny" and data["device"] == "cpu"
    assert sorted(data["sections"]) == sorted(gpu_check.SECTIONS)  # the JSON has sorted keys
    cuda = torch.cuda.is_available()
    for name, section in data["sections"].items():
        expected = "skipped" if name == "cpu_vs_cuda_float64" and not cuda else "ok"
        assert section["status"] == expected, (name, section)
        for key, value in leaves(section):
            assert value is not None, key
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert math.isfinite(value), key
            if key.endswith("skipped") or key == "reason":
                assert isinstance(value, str) and value, key
    assert "CUDA" in data["sections"]["cpu_vs_cuda_float64"]["reason"] or cuda
    assert "skipped" in data["sections"]["float32_vs_float64"]["float32_tf32_on"] or cuda
    assert data["total_s"] >= sum(s["seconds"] for s in data["sections"].values())


def test_report_numbers_are_consistent(report):
    data, _ = report
    s = data["sections"]
    precision = s["float32_vs_float64"]["float32_tf32_off"]
    assert 0 < precision["max_bracket_rel_err"] < 1e-4 and 0 < precision["logits_rel_err"] < 1e-4
    for which in ("default", "full"):
        speed = s["bracket_speed"][which]
        assert speed["pairs"] == 6  # 4 examples in the tiny check
        for method in ("vmap", "rows"):
            assert speed[method]["max_rel_err_to_naive"] < 1e-4
            assert speed[method]["ratio_to_naive"] == pytest.approx(speed[method]["seconds"] / speed["naive_s"])
        assert speed["meets_target"] == (speed["best_ratio_to_naive"] <= 0.2)
    train, proj, full = s["training"], s["projection"], get_profile("full")
    assert train["images_per_s"] == pytest.approx(full.batch_size * train["steps_per_s"])
    assert train["bracket_record_finite"]
    assert proj["checkpoints"] == 51
    assert proj["training_s"] == pytest.approx(5000 / train["steps_per_s"])
    # both brackets at every checkpoint, and the whole chain: notebook 05's side run and notebook 02's swaps
    assert proj["brackets_s"] == pytest.approx(51 * (train["brackets_per_checkpoint_s"]
                                                     + train["adam_brackets_per_checkpoint_s"]))
    swaps = s["swaps"]
    assert not full.swap_sweeps                    # full measures its swaps, not their sweeps (config.py says why)
    assert proj["real_swaps_s"] == pytest.approx(len(swap_steps(full)) * 2 * swaps["swap_s"])
    assert proj["side_run_s"] > full.side_run_steps / train["steps_per_s"]
    assert proj["checkpoint_disk_bytes"] == 51 * (train["checkpoint_model_bytes"] + train["checkpoint_optimizer_bytes"])
    assert proj["data_cache_s"] == pytest.approx(202_599 * (proj["draw_per_image_s"] + proj["decode_per_image_s"]))
    parts = ("data_cache_s", "training_s", "evaluation_s", "checkpoint_writes_s", "brackets_s", "side_run_s",
             "real_swaps_s")
    assert proj["total_s"] == pytest.approx(sum(proj[k] for k in parts))


def test_markdown_renders_every_section_and_its_numbers(report):
    data, markdown = report
    for name, section in data["sections"].items():
        assert f"## {name}: {section['status']}" in markdown
    assert data["sections"]["cpu_vs_cuda_float64"].get("reason", "") in markdown
    for key in ("steps_per_s", "images_per_s", "brackets_per_checkpoint_s"):
        assert f"| {key} | {gpu_report.fmt(key, data['sections']['training'][key])} |" in markdown
    total = data["sections"]["projection"]["total_s"]
    assert f"| total_s | {gpu_report.fmt('total_s', total)} |" in markdown


def test_fmt_gives_big_units():
    assert gpu_report.fmt("run_s", 7200.0) == "7.2e+03 (2.0 h)"
    assert gpu_report.fmt("run_s", 300.0) == "300 (5.0 min)"
    assert gpu_report.fmt("disk_bytes", 3 * 2**30) == "3,221,225,472 (3.0 GiB)"
    assert gpu_report.fmt("ok", True) == "True"


def tiny_context(**budgets):
    size = gpu_check.SIZES["tiny"]
    size = dataclasses.replace(size, budgets_s={**size.budgets_s, **budgets})
    return gpu_check.Context(size, torch.device("cpu"), results={})


def test_a_failing_section_records_its_error_and_keeps_what_it_measured(monkeypatch):
    def broken(ctx, out):
        out["measured_s"] = 1.0
        raise RuntimeError("no luck")

    def slow(ctx, out):
        out["first_s"] = 0.5
        while True:
            time.sleep(0.01)

    monkeypatch.setitem(gpu_check.SECTIONS, "broken", broken)
    monkeypatch.setitem(gpu_check.SECTIONS, "slow", slow)
    ctx = tiny_context(broken=5, slow=0.2)
    failed = gpu_check.run_section("broken", ctx)
    assert failed["status"] == "error" and "RuntimeError: no luck" in failed["error"] and failed["measured_s"] == 1.0
    stopped = gpu_check.run_section("slow", ctx)
    assert stopped["status"] == "timeout" and stopped["first_s"] == 0.5 and 0.2 <= stopped["seconds"] < 2


def test_projection_without_training_numbers_says_what_is_missing():
    result = gpu_check.run_section("projection", tiny_context())
    assert result["status"] == "error" and "steps_per_s" in result["error"]


def small_matrix_setup():
    profile = get_profile("ci", width=0.125, image_size=16)
    model = bench.benchmark_model(profile)
    inputs, targets = bench.random_examples(profile, 3)
    return model, get_loss(profile.loss), inputs, targets


def test_bracket_errors_against_a_known_perturbation():
    model, loss_fn, inputs, targets = small_matrix_setup()
    exact = lh.bracket_matrix(model, loss_fn, inputs, targets)
    assert gpu_check.bracket_errors(exact, exact)["max_bracket_rel_err"] == 0
    scaled = lh.BracketMatrix(exact.n, {p: {k: 1.01 * t for k, t in b.items()} for p, b in exact.brackets.items()},
                              [{k: 0.98 * t for k, t in g.items()} for g in exact.gradients])
    errors = gpu_check.bracket_errors(scaled, exact)
    assert errors["pairs"] == 3
    assert errors["max_bracket_rel_err"] == pytest.approx(0.01, rel=1e-5)
    assert errors["median_bracket_rel_err"] == pytest.approx(0.01, rel=1e-5)
    assert errors["max_gradient_rel_err"] == pytest.approx(0.02, rel=1e-5)


def test_brackets_with_tf32_is_the_engine_outside_bracket_mode():
    """On the CPU TF32 does nothing, so the result is bracket_matrix's, bit for bit; the flags come back."""
    model, loss_fn, inputs, targets = small_matrix_setup()
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    ours = gpu_check.brackets_with_tf32(model, loss_fn, inputs, targets)
    engine = lh.bracket_matrix(model, loss_fn, inputs, targets, method="vmap")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
    assert ours.pairs == engine.pairs
    for p in engine.pairs:
        assert all(torch.equal(ours.brackets[p][k], engine.brackets[p][k]) for k in engine.brackets[p])


def test_timed_warms_up_and_respects_its_budget():
    calls = []
    times = bench.timed(lambda: calls.append(1), "cpu", 3, warmup=2)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)
    assert len(bench.timed(lambda: time.sleep(0.02), "cpu", 50, warmup=0, budget_s=0.01)) == 1
    with pytest.raises(ValueError, match="repeats"):
        bench.timed(lambda: None, "cpu", 0)


def test_benchmark_model_has_warmed_batch_norm_in_eval_mode():
    profile = get_profile("ci", width=0.125, image_size=16)
    model = bench.benchmark_model(profile)
    assert not model.training
    first_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(first_bn.running_var, torch.ones_like(first_bn.running_var))
    inputs, targets = bench.random_examples(profile, 5)
    assert inputs.shape == (5, 3, 16, 16) and targets.shape == (5, 40)
    assert set(targets.unique().tolist()) <= {0.0, 1.0}
