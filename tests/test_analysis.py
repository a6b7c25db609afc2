"""Brackets at every checkpoint: stored records, resuming, recomputing, reading back."""
import pytest
import torch

import lie_helpers as lh
from lie_helpers.analysis import records as analysis, first_order
from lie_helpers.data import storage
from lie_helpers.training.config import get_profile, run_paths
from lie_helpers.training.losses import get_loss
from lie_helpers.training.train import load_checkpoint, train


def random_split(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
            torch.randint(0, 2, (n, 40), generator=g))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    profile = get_profile("ci", image_size=16, width=0.125, steps=4, checkpoint_every=2, batch_size=8,
                          eval_images=16, bracket_examples=3, pushforward_batch=5)
    run_dir = tmp_path_factory.mktemp("run")
    train(profile, run_dir, random_split(32, 16, 0), random_split(16, 16, 1), fingerprint="data-a", progress=False)
    return profile, run_dir, random_split(8, 16, 2)


def test_records_match_the_engine(trained):
    profile, run_dir, test = trained
    steps = analysis.analyse_run(profile, test, run_dir=run_dir, fingerprint="data-a", progress=False)
    assert steps == [0, 2, 4]
    result = analysis.load_run_brackets(profile, run_dir)
    n_tensors = len(result.tensor_names)
    assert result.steps == steps and result.pairs == [(0, 1), (0, 2), (1, 2)]
    assert result.bracket_rms.shape == (3, 3, n_tensors)
    assert result.gradient_rms.shape == (3, 3, n_tensors)
    assert result.logit_perturbation.shape == (3, 3, 5, 40)
    assert result.batch_logits.shape == (3, 5, 40)
    # Checkpoint 2, pair (0, 2), recomputed directly with the engine.
    model = load_checkpoint(run_dir, 2, profile)
    examples, targets, batch = analysis.fixed_inputs(profile, test)
    bracket = lh.lie_bracket(model, get_loss(profile.loss), (examples[:1], targets[:1]), (examples[2:3], targets[2:3]))
    rms = torch.tensor(list(lh.rms_per_tensor(bracket).values()))
    torch.testing.assert_close(result.bracket_rms[1, 1], rms, rtol=1e-3, atol=1e-12)
    torch.testing.assert_close(result.logit_perturbation[1, 1], lh.pushforward(model, batch, bracket),
                               rtol=1e-3, atol=1e-6 * float(rms.max()))
    gradient = lh.gradient(model, get_loss(profile.loss), (examples[1:2], targets[1:2]))
    torch.testing.assert_close(result.gradient_rms[1, 1], torch.tensor(list(lh.rms_per_tensor(gradient).values())),
                               rtol=1e-4, atol=1e-12)


def test_records_hold_the_first_order_baselines(trained):
    """What one gradient step predicts, stored beside the brackets and equal to the baselines recomputed."""
    profile, run_dir, test = trained
    analysis.analyse_run(profile, test, run_dir=run_dir, fingerprint="data-a", progress=False)
    result = analysis.load_run_brackets(profile, run_dir)
    assert result.gradient_pushforward.shape == (3, 3, 5, 40)
    assert result.attribute_loss.shape == (3, 40) and result.attribute_gradient_gram.shape == (3, 40, 40)
    assert result.ggn_trace.shape == (3, 40) and bool((result.ggn_trace > 0).all())
    assert torch.equal(result.batch_targets[0], test[1][:5].float())
    model, loss_fn = load_checkpoint(run_dir, 4, profile), get_loss(profile.loss)
    examples, targets, batch = analysis.fixed_inputs(profile, test)
    expected = first_order.gradient_pushforward(model, loss_fn, examples, targets, batch).per_example
    torch.testing.assert_close(result.gradient_pushforward[2], expected)
    torch.testing.assert_close(result.attribute_loss[2], first_order.per_attribute_loss(model, loss_fn, batch, test[1][:5].float()))
    ggn = first_order.ggn_trace_per_output(model, loss_fn, batch, samples=analysis.GGN_SAMPLES).value.float()
    torch.testing.assert_close(result.ggn_trace[2], ggn)


def test_the_categorical_loss_stores_no_per_attribute_baselines(trained):
    profile, run_dir, test = trained
    model = load_checkpoint(run_dir, 4, profile)
    examples, targets, batch = analysis.fixed_inputs(profile, test)
    categorical = get_loss("categorical_hair_matched")
    record = analysis.analyse_checkpoint(torch.nn.Sequential(model, torch.nn.Linear(40, categorical.n_outputs)),
                                         categorical, examples, targets, batch, batch_targets=test[1][:5].float())
    assert not set(analysis.BASELINES) & set(record)


def test_stored_checkpoints_are_skipped_and_changes_recompute(trained, capsys):
    profile, run_dir, test = trained
    analysis.analyse_run(profile, test, run_dir=run_dir, fingerprint="data-a", progress=False)
    folder = run_paths(profile, run_dir).brackets
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")}
    analysis.analyse_run(profile, test, run_dir=run_dir, fingerprint="data-a", progress=False)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")}
    # A corrupt record is recomputed, not trusted.
    (folder / "step_000002.safetensors").write_bytes(b"garbage")
    # A changed analysis setting recomputes every checkpoint.
    wider = get_profile("ci", **{**{k: getattr(profile, k) for k in ("image_size", "width", "steps",
                                                                     "checkpoint_every", "batch_size",
                                                                     "eval_images", "bracket_examples")},
                                 "pushforward_batch": 6})
    analysis.analyse_run(wider, test, run_dir=run_dir, fingerprint="data-a", progress=False)
    assert analysis.load_run_brackets(wider, run_dir).logit_perturbation.shape == (3, 3, 6, 40)


def test_full_brackets_are_optional_and_announced(trained, capsys, tmp_path):
    profile, run_dir, test = trained
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run_dir / "checkpoints", copy / "checkpoints")
    shutil.copy(run_dir / "metrics.json", copy / "metrics.json")
    shutil.copy(run_dir / "manifest.json", copy / "manifest.json")
    full = get_profile("ci", **{k: getattr(profile, k) for k in ("image_size", "width", "steps", "checkpoint_every",
                                                               "batch_size", "eval_images", "bracket_examples",
                                                               "pushforward_batch")}, save_full_brackets=True)
    analysis.analyse_run(full, test, run_dir=copy, fingerprint="data-a", progress=False)
    assert "MiB of float16 brackets" in capsys.readouterr().out
    stored = storage.load_tensors(copy / "brackets" / "full" / "step_000004.safetensors")
    n_params = sum(p.numel() for p in load_checkpoint(copy, 4, profile).parameters())
    assert sum(t.numel() for t in stored.values()) == 3 * n_params
    assert all(t.dtype == torch.float16 for t in stored.values())
    assert analysis.full_brackets_bytes(full, n_params, 3) == 2 * n_params * 3 * 3


def test_bad_input_is_refused(trained, tmp_path):
    profile, run_dir, test = trained
    with pytest.raises(FileNotFoundError, match="train first"):
        analysis.analyse_run(profile, test, run_dir=tmp_path, fingerprint="data-a", progress=False)
    with pytest.raises(ValueError, match="trained on data data-a"):
        analysis.analyse_run(profile, test, run_dir=run_dir, fingerprint="data-b", progress=False)
    with pytest.raises(ValueError, match="the analysis needs 5"):
        analysis.analyse_run(profile, (test[0][:4], test[1][:4]), run_dir=run_dir, fingerprint="data-a",
                             progress=False)
    with pytest.raises(FileNotFoundError, match="notebook 02"):
        analysis.load_run_brackets(profile, tmp_path)


def test_explicit_example_and_batch_indices_pick_those_test_images(trained):
    profile, _, test = trained
    images, attributes = test
    first = analysis.fixed_inputs(profile, test)
    explicit = analysis.fixed_inputs(profile, test, example_indices=[0, 1, 2], batch_indices=range(5))
    assert all(torch.equal(a, b) for a, b in zip(first, explicit))          # the default is the first images
    examples, targets, batch = analysis.fixed_inputs(profile, test, example_indices=[7, 2, 4], batch_indices=[6, 0, 3, 5, 1])
    torch.testing.assert_close(examples, lh.training.train.prepare_inputs(images[[7, 2, 4]]))
    assert torch.equal(targets, attributes[[7, 2, 4]].float())
    torch.testing.assert_close(batch, lh.training.train.prepare_inputs(images[[6, 0, 3, 5, 1]]))
    inputs = analysis.record_inputs(profile, test, "cpu", batch_indices=[6, 0, 3, 5, 1])
    assert torch.equal(inputs.batch_targets, attributes[[6, 0, 3, 5, 1]].float())
    assert torch.equal(inputs.examples, first[0])                            # examples stay the first ones
    with pytest.raises(ValueError, match="example_indices has 2 entries but the profile's bracket_examples is 3"):
        analysis.fixed_inputs(profile, test, example_indices=[0, 1])
    with pytest.raises(ValueError, match="batch_indices must be distinct indices into the test split's 8 images"):
        analysis.fixed_inputs(profile, test, batch_indices=[0, 1, 2, 3, 8])
    with pytest.raises(ValueError, match="distinct"):
        analysis.fixed_inputs(profile, test, example_indices=[1, 1, 2])
