"""Runs beside the main run (lie_helpers.study.runs): thinned checkpoints keep the trajectory."""
import torch

from lie_helpers.study import runs as runs_module
from lie_helpers.training.config import get_profile, run_paths
from lie_helpers.training.train import list_checkpoints, load_checkpoint, train


def test_side_run_profiles_thin_checkpoints_and_reuse_the_main_run():
    assert runs_module.side_run_profile(get_profile("default"), "categorical_hair_matched", 1).checkpoint_every == 200
    assert runs_module.side_run_profile(get_profile("ci"), "independent", 1).checkpoint_every == 40
    full = runs_module.side_run_profile(get_profile("full"), "independent", 1)     # full: side_run_steps 500
    assert (full.steps, full.checkpoint_every) == (500, 100)
    assert runs_module.side_run_profile(get_profile("full", side_run_steps=0), "independent", 1).checkpoint_every == 1000
    P = get_profile("default")
    paths = run_paths(P, "runs/x")
    runs = runs_module.loss_runs(P, paths.root)
    assert [(r.name, r.seed) for r in runs] == [(loss, s) for loss in runs_module.LOSS_NAMES for s in P.seeds]
    assert runs[0].run_dir == paths.root and runs[0].profile == P
    assert runs[4].run_dir == paths.root / "hypothesis" / "categorical_hair_matched-seed1"
    assert runs[4].profile.loss == "categorical_hair_matched" and runs[4].profile.seed == 1


def random_split(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
            torch.randint(0, 2, (n, 40), generator=g))


TINY = dict(image_size=16, width=0.125, steps=4, checkpoint_every=2, batch_size=8, eval_images=16,
            bracket_examples=3, pushforward_batch=5, seeds=(0, 1))


def test_thinning_checkpoints_keeps_the_trajectory(tmp_path):
    """side_run_profile's premise: the cadence of checkpoints does not change the weights."""
    data = random_split(32, 16, 0), random_split(16, 16, 1)
    every_2, every_4 = get_profile("ci", **TINY), get_profile("ci", **{**TINY, "checkpoint_every": 4})
    train(every_2, tmp_path / "a", *data, fingerprint="d", progress=False)
    train(every_4, tmp_path / "b", *data, fingerprint="d", progress=False)
    assert list_checkpoints(tmp_path / "b") == [0, 4]
    a, b = load_checkpoint(tmp_path / "a", 4, every_2), load_checkpoint(tmp_path / "b", 4, every_4)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
