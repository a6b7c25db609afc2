"""Real order effects: the swap is training's own two steps, its predictions are what they claim to be,
and the decomposition separates Adam's moments (first order in lr) from curvature (the bracket's order)."""
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from lie_helpers.analysis import order_effects as O
from lie_helpers.data import storage
from lie_helpers.training import run_folder
from lie_helpers.training import train as T
from lie_helpers.engine.brackets import lie_bracket, pushforward
from lie_helpers.training.config import get_profile, swap_steps
from test_train import random_data     # the same random images and attributes as the training tests

pytestmark = pytest.mark.usefixtures("one_thread")

# 48 training images, batches of 8: six batches an epoch; checkpoints every 2 steps, swaps measured at 4.
PROFILE = get_profile("ci", image_size=16, width=0.125, steps=8, batch_size=8, checkpoint_every=2,
                      eval_images=8, swap_checkpoints=1)


TRAIN, VALID = random_data(48, 0), random_data(8, 1)


@pytest.fixture(scope="module")
def run(one_thread, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("swap-run")
    T.train(PROFILE, run_dir, TRAIN, VALID, progress=False, device="cpu")
    return run_dir


def test_swap_steps_are_inside_the_run_on_the_checkpoint_grid():
    assert swap_steps(PROFILE) == [4]
    default = get_profile("default")
    assert swap_steps(default) == [200, 400, 600, 800]
    assert swap_steps(get_profile("default", swap_checkpoints=0)) == []
    assert swap_steps(get_profile("ci")) == [40]


def test_training_keeps_the_adam_state_of_every_checkpoint(run, tmp_path):
    kept = sorted(int(p.name[5:11]) for p in (run / "checkpoints").glob("*.optimizer.safetensors"))
    assert kept == [0, 2, 4, 6, 8]
    assert all(run_folder.checkpoint_problem(run, s, ("optimizer",)) is None for s in kept)
    old = tmp_path / "old"                        # a run trained before: its states pruned
    shutil.copytree(run, old)
    manifest = run_folder.read_manifest(old)
    manifest["checkpoints"]["2"]["sha256"].pop("optimizer")
    storage.atomic_write_json(old / "manifest.json", manifest)
    (old / "checkpoints" / "step_000002.optimizer.safetensors").unlink()
    assert "keeps no optimizer" in run_folder.checkpoint_problem(old, 2, ("optimizer",))
    with pytest.raises(ValueError, match="no usable Adam state.*train the run again"):
        T.load_training_state(old, 2, PROFILE)


def test_next_minibatches_are_the_ones_training_takes():
    n = len(TRAIN[0])
    per_epoch = n // PROFILE.batch_size
    for step in (0, 4, 5, 11):                    # 5 → 6 crosses an epoch
        expected = []
        for s in (step, step + 1):
            epoch, position = divmod(s, per_epoch)
            expected.append(T.epoch_order(n, PROFILE.seed, epoch)[position * 8:(position + 1) * 8])
        got = O.next_minibatches(PROFILE, n, step, 2)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_adam_two_steps_continue_training_bit_for_bit(run):
    """From checkpoint 4 and its Adam state, two steps on training's next batches give checkpoint 6's weights."""
    model, optimizer = T.load_training_state(run, 4, PROFILE)
    batches = [(T.prepare_inputs(TRAIN[0][i]), TRAIN[1][i]) for i in O.next_minibatches(PROFILE, 48, 4, 2)]
    after = O.adam_two_steps(model, optimizer, T.get_loss(PROFILE.loss), batches, lr=PROFILE.lr)
    saved = storage.load_tensors(run / "checkpoints" / "step_000006.safetensors")
    assert all(torch.equal(after["params"][n], saved[n]) for n in after["params"])
    assert all(torch.equal(after["buffers"][n], saved[n]) for n in after["buffers"])
    reloaded, adam = T.load_training_state(run, 4, PROFILE)       # neither input was changed
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
    for mine, theirs in zip(optimizer.state.values(), adam.state.values()):
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_choose_pairs_takes_the_most_and_fewest_ambiguous():
    ambiguous = np.zeros(48, bool)
    ambiguous[::5] = True
    pairs = O.choose_pairs(PROFILE, 48, 4, ambiguous, per_kind=2, search=10)
    counts = [p.ambiguous for p in pairs]
    candidates = O.next_minibatches(PROFILE, 48, 4, 20)
    every = sorted(int(ambiguous[a].sum() + ambiguous[b].sum()) for a, b in zip(candidates[::2], candidates[1::2]))
    assert counts[:2] == every[::-1][:2] and counts[2:] == every[:2]
    assert all(p.ambiguous == ambiguous[p.first].sum() + ambiguous[p.second].sum() for p in pairs)
    with pytest.raises(ValueError, match="entries"):
        O.choose_pairs(PROFILE, 48, 4, ambiguous[:10])


class Net(nn.Module):
    """A small smooth network without BatchNorm, where SGD's swap is exactly the bracket's dynamics."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))

    def forward(self, x):
        return self.body(x)


def mse(out, target):
    return ((out - target) ** 2).mean()


def batches(seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64))
            for _ in range(2)]


def test_plain_sgd_swap_is_the_bracket_and_has_no_first_order_part():
    """With torch.optim.SGD the frozen-gradient swap vanishes, and the real swap is lr²·bracket at second order."""
    model = Net().double()
    fixed = torch.randn(6, 5, dtype=torch.float64)
    lr = 1e-3
    swap = O.measure_swap(model, torch.optim.SGD(model.parameters(), lr=lr), mse, batches(1), fixed, lr)
    assert O.rms(swap.predictions["adam_frozen"]) < 1e-12 * O.rms(swap.real)
    assert O.cosine(swap.real, swap.predictions["bracket"]) > 0.999
    assert O.rms(swap.predictions["bracket"]) / O.rms(swap.real) == pytest.approx(1, abs=0.02)
    assert swap.lr_order == pytest.approx(2, abs=0.05)
    assert O.cosine(swap.sgd, swap.predictions["bracket"]) > 0.999       # the positive control
    bracket = lie_bracket(model, mse, *batches(1), batch=True)
    assert torch.allclose(swap.predictions["bracket"], lr ** 2 * pushforward(model, fixed, bracket))
    assert O.rms(swap.buffers) == 0                                       # no BatchNorm, no buffers
    assert O.cosine(swap.real, swap.predictions["adam_aware"]) > 0.999  # no BatchNorm: the same bracket


def test_adam_swap_is_first_order_and_its_moments_explain_it():
    """Adam's moments make the order matter at first order in lr; frozen gradients reproduce that part."""
    model = Net().double()
    adam = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.999))
    warm = batches(5)
    for inputs, targets in warm * 3:                     # some Adam state, as at a checkpoint
        adam.zero_grad()
        mse(model(inputs), targets).backward()
        adam.step()
    fixed = torch.randn(6, 5, dtype=torch.float64)
    swap = O.measure_swap(model, adam, mse, batches(2), fixed, 1e-3)
    assert swap.lr_order == pytest.approx(1, abs=0.1)
    assert O.cosine(swap.real, swap.predictions["adam_frozen"]) > 0.99
    table = O.summarise([swap])
    assert table["left_after_adam_ratio"][0] < 0.1
    # what is left is Adam's curvature term, which the SGD bracket does not describe
    assert table["left_curvature_cosine"][0] > 0.999
    assert table["left_after_adam_aware_ratio"][0] < 0.01 * table["left_after_adam_ratio"][0]
    assert table["left_bracket_cosine"][0] < 0.9
    assert set(O.PREDICTIONS) <= {k.rsplit("_", 1)[0] for k in table if k.endswith("_cosine")}


def test_measured_run_on_a_trained_checkpoint(run):
    """The whole path on MXResNet: BatchNorm buffers differ between orders, every number is finite, and the
    paragraph names the steps."""
    fixed = T.prepare_inputs(VALID[0][:4])
    ambiguous = np.arange(48) % 7 == 0
    swaps = O.measure_run(PROFILE, run, TRAIN, fixed, ambiguous, per_kind=1, progress=False)
    assert [s.step for s in swaps] == [4, 4]
    table = O.summarise(swaps)
    assert all(np.isfinite(v).all() for v in table.values())
    assert (table["buffers_ratio"] > 0).all()
    assert (table["sgd_cosine"] > 0.5).all()
    text = O.describe_swaps(table)
    assert "steps [4]" in text and "nan" not in text
    with pytest.raises(ValueError, match="swap_checkpoints"):
        O.measure_run(get_profile("ci", swap_checkpoints=0), run, TRAIN, fixed, ambiguous)
