"""Training: checkpoints, metadata, exact resume, refusing other runs' folders, full disks, corrupt files."""
import errno

import pytest
import torch

from lie_helpers.data import storage
from lie_helpers.training import train as T
from lie_helpers.data.attributes import ATTRIBUTES
from lie_helpers.training.config import get_profile

# 24 training images, batches of 8: three batches an epoch, so 5 steps cross an epoch boundary.
# No swap checkpoints: only the last two checkpoints keep their Adam state (tests/test_order_effects.py has the rest).
PROFILE = get_profile("ci", image_size=16, width=0.125, steps=5, batch_size=8, checkpoint_every=2,
                      eval_images=12, swap_checkpoints=0)


def random_data(n, seed, size=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, 2, (n, 40), generator=g))


TRAIN, VALID = random_data(24, 0), random_data(16, 1)


def weights(run_dir, step):
    return storage.load_tensors(run_dir / "checkpoints" / f"step_{step:06d}.safetensors")


def assert_same_run(a, b):
    """Every checkpoint's tensors bit-identical, and the same metrics."""
    assert T.list_checkpoints(a) == T.list_checkpoints(b)
    for step in T.list_checkpoints(a):
        wa, wb = weights(a, step), weights(b, step)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"step {step} differs"
    assert T.load_metrics(a) == T.load_metrics(b)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference(one_thread, tmp_path_factory):
    """One uninterrupted run that the other tests compare against."""
    run_dir = tmp_path_factory.mktemp("reference")
    info = T.train(PROFILE, run_dir, TRAIN, VALID, progress=False, device="cpu")
    return run_dir, info


def kill_after(monkeypatch, n_steps):
    """Make the n_steps+1-th training step raise, as if the process were killed there."""
    real, calls = T.train_step, []

    def step(*args):
        if len(calls) == n_steps:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real(*args)
    monkeypatch.setattr(T, "train_step", step)


def test_checkpoints_at_the_right_steps(reference):
    run_dir, info = reference
    assert T.list_checkpoints(run_dir) == [0, 2, 4, 5]          # step 0, every 2, and the last
    files = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert [f for f in files if "optimizer" in f] == [f"step_00000{s}.optimizer.safetensors"   # every one
                                                      for s in (0, 2, 4, 5)]
    assert not [f for f in files if f.endswith(".tmp")]
    assert info == T.checkpoint_info(run_dir, 5)


def test_metadata_and_metrics(reference):
    run_dir, _ = reference
    info = T.checkpoint_info(run_dir, 4)
    assert info["step"] == 4 and info["steps"] == 5
    assert info["profile_hash"] == PROFILE.hash()
    assert info["profile"]["lr"] == PROFILE.lr
    assert info["data_fingerprint"] == T.tensor_fingerprint(TRAIN, VALID)
    assert info["lie_helpers_version"] and info["eval_images"] == 12
    assert list(info["valid_accuracy"]) == list(ATTRIBUTES)
    assert all(0 <= a <= 1 for a in info["valid_accuracy"].values())
    assert info["valid_loss"] > 0 and info["train_loss"] > 0
    metrics = T.load_metrics(run_dir)
    assert [m["step"] for m in metrics] == [0, 2, 4, 5]
    assert metrics[0]["train_loss"] is None
    assert metrics[2]["valid_loss"] == info["valid_loss"]


def test_validation_matches_evaluate_on_the_loaded_model(reference):
    run_dir, _ = reference
    model = T.load_checkpoint(run_dir, 5, PROFILE)
    assert not model.training and next(model.parameters()).dtype == torch.float32
    scores = T.evaluate(model, T.get_loss("independent"), VALID, 12)
    assert scores["valid_loss"] == pytest.approx(T.checkpoint_info(run_dir, 5)["valid_loss"], rel=1e-6)
    model64 = T.load_checkpoint(run_dir, 5, PROFILE, dtype=torch.float64)
    assert next(model64.parameters()).dtype == torch.float64
    assert T.evaluate(model64, T.get_loss("independent"), VALID, 12)["valid_loss"] == pytest.approx(
        scores["valid_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="profile"):
        T.load_checkpoint(run_dir, 5, get_profile("ci", image_size=16, width=0.25))


@pytest.mark.parametrize("killed_after", [0, 3, 4])
def test_resume_is_bit_identical(tmp_path, monkeypatch, reference, killed_after):
    with monkeypatch.context() as m:
        kill_after(m, killed_after)
        with pytest.raises(KeyboardInterrupt):
            T.train(PROFILE, tmp_path, TRAIN, VALID, progress=False, device="cpu")
    assert T.list_checkpoints(tmp_path)[-1] == killed_after // 2 * 2
    T.train(PROFILE, tmp_path, TRAIN, VALID, progress=False, device="cpu")
    assert_same_run(tmp_path, reference[0])


def test_killed_while_writing_a_checkpoint_resumes_exactly(tmp_path, monkeypatch, reference):
    """Weights and optimizer state of step 4 written, its JSON not: resume from step 2."""
    real = storage.atomic_write_json

    def write(path, obj):
        if path.name == "step_000004.json":
            raise KeyboardInterrupt("killed")
        real(path, obj)
    with monkeypatch.context() as m:
        m.setattr(storage, "atomic_write_json", write)
        with pytest.raises(KeyboardInterrupt):
            T.train(PROFILE, tmp_path, TRAIN, VALID, progress=False, device="cpu")
    assert T.list_checkpoints(tmp_path) == [0, 2]
    assert (tmp_path / "checkpoints" / "step_000002.optimizer.safetensors").exists()
    T.train(PROFILE, tmp_path, TRAIN, VALID, progress=False, device="cpu")
    assert_same_run(tmp_path, reference[0])


def test_finished_run_returns_immediately(reference, monkeypatch):
    run_dir, info = reference
    metrics = T.load_metrics(run_dir)
    (run_dir / "metrics.json").unlink()                     # as if killed just after the last JSON
    kill_after(monkeypatch, 0)
    assert T.train(PROFILE, run_dir, TRAIN, VALID, progress=False) == info
    assert T.load_metrics(run_dir) == metrics


def test_different_configuration_or_data_is_refused(reference):
    run_dir, _ = reference
    before = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}
    other = get_profile("ci", image_size=16, width=0.125, steps=5, batch_size=8, checkpoint_every=2,
                        eval_images=12, lr=1e-3)
    with pytest.raises(ValueError, match=r"lr: 0.005 there, 0.001 now.*another run_dir .*--run-dir.*delete .*checkpoints alone"):
        T.train(other, run_dir, TRAIN, VALID, progress=False)
    with pytest.raises(ValueError, match="data fingerprint"):
        T.train(PROFILE, run_dir, random_data(24, 7), VALID, progress=False)
    assert before == {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}


def test_full_disk_keeps_finished_checkpoints(tmp_path, monkeypatch, reference):
    real = storage.atomic_write_bytes

    def write(path, data):
        if "step_000004" in path.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)
    with monkeypatch.context() as m:
        m.setattr(storage, "atomic_write_bytes", write)
        with pytest.raises(OSError, match="up to step 2 are complete and intact.*Free disk space") as err:
            T.train(PROFILE, tmp_path, TRAIN, VALID, progress=False, device="cpu")
        assert err.value.errno == errno.ENOSPC
    assert T.list_checkpoints(tmp_path) == [0, 2]
    T.load_checkpoint(tmp_path, 2, PROFILE)
    T.train(PROFILE, tmp_path, TRAIN, VALID, progress=False, device="cpu")   # space freed: resumes
    assert_same_run(tmp_path, reference[0])


def test_corrupt_checkpoint_gives_a_clear_error_and_train_writes_it_again(tmp_path, reference, capsys):
    T.train(PROFILE, tmp_path, TRAIN, VALID, progress=False, device="cpu")
    ckpt = tmp_path / "checkpoints"
    (ckpt / "step_000002.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"step_000002.safetensors was altered or truncated.*Call train again"):
        T.load_checkpoint(tmp_path, 2, PROFILE)
    (ckpt / "step_000004.json").write_text("{ truncated")
    with pytest.raises(ValueError, match=r"step_000004.json was altered"):
        T.checkpoint_info(tmp_path, 4)
    # Checkpoint 2 is bad and no earlier checkpoint keeps its optimizer state: train again from step 0,
    # deterministically, to the same run.
    T.train(PROFILE, tmp_path, TRAIN, VALID, progress=False, device="cpu")
    assert "Checkpoint 2 of" in capsys.readouterr().out
    assert_same_run(tmp_path, reference[0])


def test_categorical_hair_matched_loss_trains(tmp_path):
    profile = get_profile("ci", image_size=16, width=0.125, steps=2, batch_size=8, checkpoint_every=2,
                          eval_images=12, loss="categorical_hair_matched")
    info = T.train(profile, tmp_path, TRAIN, VALID, progress=False, device="cpu")
    assert T.list_checkpoints(tmp_path) == [0, 2]
    assert list(info["valid_accuracy"]) == list(ATTRIBUTES)
    assert T.load_checkpoint(tmp_path, 2, profile)(T.prepare_inputs(VALID[0][:2])).shape == (2, 41)


def test_progress_bar_redraws_are_throttled(tmp_path, monkeypatch):
    """A redraw per step floods a notebook's output channel (a notebook runner can then lose the cell's end):
    with throttling set very long, 20 steps redraw only at start, checkpoints and close."""
    redraws = []

    class CountingBar(T.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, mininterval=1e9, miniters=10**9, **kwargs)

        def display(self, *args, **kwargs):
            redraws.append(self.n)
            return super().display(*args, **kwargs)

    monkeypatch.setattr(T, "tqdm", CountingBar)
    profile = get_profile("ci", image_size=16, width=0.125, steps=20, batch_size=8, checkpoint_every=10,
                          eval_images=12)
    T.train(profile, tmp_path, TRAIN, VALID, progress=True, device="cpu")
    assert 0 < len(redraws) <= 6, redraws


def test_batch_order_depends_only_on_seed_and_epoch():
    assert torch.equal(T.epoch_order(24, 0, 1), T.epoch_order(24, 0, 1))
    assert sorted(T.epoch_order(24, 0, 1).tolist()) == list(range(24))
    assert not torch.equal(T.epoch_order(24, 0, 1), T.epoch_order(24, 0, 2))
    assert not torch.equal(T.epoch_order(24, 0, 1), T.epoch_order(24, 1, 1))


def test_prepare_inputs_normalises_per_channel():
    images = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    x = T.prepare_inputs(images)
    assert x.dtype == torch.float32
    for c in range(3):
        assert x[0, c, 0, 0].item() == pytest.approx((1 - T.MEAN[c]) / T.STD[c])


def test_wrong_data_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"uint8 \[N, 3, 16, 16\]"):
        T.train(PROFILE, tmp_path, random_data(24, 0, size=32), VALID, progress=False)
