"""Adam's bracket at every checkpoint: training keeps every Adam state, the records hold Adam's bracket beside
the SGD one and it is engine.adam's pair by pair, and a run trained before (states pruned) is refused, with the
fix, only where Adam's bracket is asked for."""
import shutil

import pytest
import torch

import lie_helpers as lh
from lie_helpers.analysis import adam_records, records as analysis
from lie_helpers.data import storage
from lie_helpers.engine.adam import AdamState
from lie_helpers.training import run_folder
from lie_helpers.training.config import get_profile
from lie_helpers.training.losses import get_loss
from lie_helpers.training.train import load_checkpoint, load_training_state, train

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")]

PROFILE = get_profile("ci", image_size=16, width=0.125, steps=5, checkpoint_every=2, batch_size=8,
                      eval_images=16, bracket_examples=3, pushforward_batch=5, swap_checkpoints=0)


def random_split(n, seed, size=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
            torch.randint(0, 2, (n, 40), generator=g))


TRAIN, VALID, TEST = random_split(32, 0), random_split(16, 1), random_split(8, 2)


@pytest.fixture(scope="module")
def run(one_thread, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("adam-run")
    train(PROFILE, run_dir, TRAIN, VALID, fingerprint="data-a", progress=False, device="cpu")
    analysis.analyse_run(PROFILE, TEST, run_dir=run_dir, fingerprint="data-a", progress=False, device="cpu")
    return run_dir


def test_training_keeps_every_adam_state(run):
    steps = run_folder.complete_checkpoints(run)
    assert steps == [0, 2, 4, 5]
    kept = sorted(int(p.name[5:11]) for p in (run / "checkpoints").glob("*.optimizer.safetensors"))
    assert kept == steps
    for step in steps:
        assert run_folder.checkpoint_problem(run, step, ("optimizer",)) is None
        model, optimizer = load_training_state(run, step, PROFILE)
        assert AdamState.from_optimizer(model, optimizer).step == step


def test_records_hold_adam_s_bracket_and_it_is_the_engine_s_pair_by_pair(run):
    records = analysis.load_run_brackets(PROFILE, run)
    n_tensors = len(records.tensor_names)
    assert records.adam_bracket_rms.shape == records.bracket_rms.shape == (4, 3, n_tensors)
    assert records.adam_tangent_rms.shape == (4, 3, n_tensors)
    assert records.adam_logit_perturbation.shape == records.logit_perturbation.shape == (4, 3, 5, 40)
    assert records.adam_step[:, 0].tolist() == [0, 2, 4, 5]
    # step 0: a fresh Adam has no second moment, no bracket
    assert torch.isnan(records.adam_bracket_rms[0]).all() and torch.isnan(records.adam_logit_perturbation[0]).all()
    assert torch.isfinite(records.adam_logit_perturbation[1:]).all()
    loss_fn = get_loss(PROFILE.loss)
    examples, targets, batch = analysis.fixed_inputs(PROFILE, TEST)
    for k, step in enumerate(records.steps[1:], start=1):
        model = load_checkpoint(run, step, PROFILE)
        state = adam_records.load_adam_state(run, step, PROFILE)
        scales = state.scales()
        assert records.adam_scales[k].tolist() == pytest.approx([scales["immediate"], scales["drained"]], rel=1e-6)
        for p, (i, j) in enumerate(records.pairs):
            bracket = lh.adam_bracket(model, loss_fn, (examples[i:i + 1], targets[i:i + 1]),
                                      (examples[j:j + 1], targets[j:j + 1]), state)
            rms = torch.tensor(list(lh.rms_per_tensor(bracket).values()))
            torch.testing.assert_close(records.adam_bracket_rms[k, p], rms, rtol=1e-3, atol=1e-12)
            push = lh.pushforward(model, batch, bracket)
            torch.testing.assert_close(records.adam_logit_perturbation[k, p], push, rtol=1e-3,
                                       atol=1e-4 * float(push.abs().max()))
        beta1, precondition = state.betas[0], state.preconditioner()
        g = lh.gradient(model, loss_fn, (examples[1:2], targets[1:2]))
        w = {n: precondition[n] * ((1 - beta1) * g[n] + beta1 * state.m[n]) for n in g}
        torch.testing.assert_close(records.adam_tangent_rms[k, 1], torch.tensor(list(lh.rms_per_tensor(w).values())),
                                   rtol=1e-4, atol=1e-12)


def test_a_run_without_adam_states_is_refused_only_where_adam_s_bracket_is_asked_for(run, tmp_path):
    """A run trained before every state was kept: its pruned states make Adam's bracket impossible, and the
    message names the fix; the SGD bracket alone still works."""
    old = tmp_path / "old"
    shutil.copytree(run, old)
    manifest = run_folder.read_manifest(old)
    for step in ("0", "2"):                                # what the old pruning left: the last two checkpoints
        (old / "checkpoints" / f"step_00000{step}.optimizer.safetensors").unlink()
        manifest["checkpoints"][step]["sha256"].pop("optimizer")
    manifest["records"] = {}
    storage.atomic_write_json(run_folder.RunPaths(old).manifest, manifest)
    with pytest.raises(ValueError, match=r"Adam state of every checkpoint.*steps \[0, 2\].*Train the run again.*"
                                         r"adam=False"):
        analysis.analyse_run(PROFILE, TEST, run_dir=old, fingerprint="data-a", progress=False, device="cpu")
    assert analysis.analyse_run(PROFILE, TEST, run_dir=old, fingerprint="data-a", progress=False, device="cpu",
                                adam=False) == [0, 2, 4, 5]
    records = analysis.load_run_brackets(PROFILE, old, adam=False)
    assert records.adam_bracket_rms is None and records.bracket_rms.shape[0] == 4
    with pytest.raises(ValueError, match="another analysis key"):
        analysis.load_run_brackets(PROFILE, old)



def test_the_adam_view_puts_adams_bracket_where_the_readings_look():
    """Every reading of notebook 03 runs on Adam's bracket through adam_view: step 0 (no Adam state) left out."""
    import dataclasses

    import numpy as np

    from lie_helpers.analysis import first_order, rms_law, summaries
    from lie_helpers.data.attributes import ATTRIBUTES
    from test_baselines import synthetic_records

    records = synthetic_records(1.0, outputs=40)
    g = torch.Generator().manual_seed(2)
    adam = dataclasses.replace(
        records, adam_logit_perturbation=torch.cat([torch.full_like(records.logit_perturbation[:1], float("nan")),
                                                    3 * records.logit_perturbation[1:]]),
        adam_bracket_rms=2 * records.bracket_rms, adam_tangent_rms=records.gradient_rms.clone(),
        adam_scales=torch.rand(len(records.steps), 2, generator=g), adam_step=torch.arange(len(records.steps))[:, None])
    view = adam_records.adam_view(adam)
    assert view.steps == records.steps[1:]
    assert torch.equal(view.logit_perturbation, 3 * records.logit_perturbation[1:])
    assert torch.equal(view.bracket_rms, 2 * records.bracket_rms[1:]) and view.adam_logit_perturbation is None
    readings = {}
    for name, r in (("sgd", records), ("adam", view)):
        readings[name] = {"summary": summaries.summarise_attributes(r, ATTRIBUTES, ("Black_Hair",), top=10),
                          "comparison": first_order.compare_with_first_order(r, ATTRIBUTES, ("Black_Hair",)),
                          "rms": rms_law.rms_law_with_null(r, [0, len(r.steps) - 1])}
    text = adam_records.describe_adam_readings(readings["sgd"], readings["adam"], ("Black_Hair",))
    assert "With Adam's bracket in place of the SGD bracket" in text and "Black_Hair: median rank" in text
    # a bracket three times the SGD one ranks the outputs the same: nothing moves
    assert "does not change which attributes" in text
    with pytest.raises(ValueError, match="no Adam's bracket"):
        adam_records.adam_view(records)
    assert np.isfinite(view.logit_perturbation.numpy()).all()
