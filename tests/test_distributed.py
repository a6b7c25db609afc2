"""The bracket analysis across processes: torchrun with 2 CPU processes stores one process's records, bit for bit,
sharing the checkpoints or the pairs of each."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from lie_helpers.analysis import records as analysis
from lie_helpers.pipeline import distributed
from lie_helpers.data import storage
from lie_helpers.training import datasets, run_folder
from lie_helpers.training.config import get_profile
from lie_helpers.training.train import train
from test_analysis import random_split

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(image_size=16, width=0.125, steps=4, checkpoint_every=2, batch_size=8, eval_images=16,
                bracket_examples=3, pushforward_batch=5)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained tiny run (not analysed), its test split in a file, and the single-process records of two copies:
    at the default pairs per call (single) and at one pair per call (single-pairs, the unit of a shared pair)."""
    root = tmp_path_factory.mktemp("distributed")
    profile = get_profile("ci", **SETTINGS)
    train(profile, root / "run", random_split(32, 16, 0), random_split(16, 16, 1), fingerprint="data-a",
          progress=False)
    test = random_split(8, 16, 2)
    storage.atomic_save_tensors(root / "test.safetensors", {"images": test[0], "attributes": test[1]},
                                metadata={"fingerprint": "data-a"})
    shutil.copytree(root / "run", root / "single")
    shutil.copytree(root / "run", root / "single-pairs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as in each torchrun process (OMP_NUM_THREADS=1): the same kernels, the same bits
    try:
        analysis.analyse_run(profile, test, run_dir=root / "single", fingerprint="data-a", progress=False)
        analysis.analyse_run(profile, test, run_dir=root / "single-pairs", fingerprint="data-a", progress=False,
                             pairs_per_call=1)
    finally:
        torch.set_num_threads(threads)
    return profile, root, test


def torchrun(run_dir, test_file, processes=2, *options):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--standalone",
               "-m", "lie_helpers.pipeline.distributed", "--profile", "ci", "--run-dir", str(run_dir),
               "--test-tensors", str(test_file), "--no-progress-bar", *options,
               *[a for k, v in SETTINGS.items() for a in ("--set", f"{k}={v}")]]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def assert_same_records(a, b, steps):
    for step in steps:
        one, other = storage.load_tensors(a.record(step)), storage.load_tensors(b.record(step))
        assert one.keys() == other.keys()
        # bit for bit; NaN where both hold NaN (Adam's bracket at step 0, where Adam has no state)
        assert all(torch.equal(one[k].nan_to_num(0.0, 1.0, -1.0), other[k].nan_to_num(0.0, 1.0, -1.0))
                   and torch.equal(one[k].isnan(), other[k].isnan()) for k in one), f"step {step} differs"
        meta_one, meta_other = storage.read_metadata(a.record(step)), storage.read_metadata(b.record(step))
        assert {k: meta_one[k] for k in ("key", "step", "tensor_names")} == \
               {k: meta_other[k] for k in ("key", "step", "tensor_names")}


@pytest.mark.slow
def test_two_processes_store_the_records_of_one_and_resume(run):
    profile, root, _ = run
    multi = root / "multi"
    shutil.copytree(root / "run", multi)
    out = torchrun(multi, root / "test.safetensors")
    assert "3 bracket record(s) computed by 2 process(es) on cpu" in out
    assert "rank 0 of 2 computed steps [0, 4]" in out and "rank 1 of 2 computed steps [2]" in out
    single, paths = run_folder.RunPaths(root / "single"), run_folder.RunPaths(multi)
    assert_same_records(single, paths, [0, 2, 4])
    key = analysis.analysis_key(profile, "data-a")
    manifest = run_folder.read_manifest(paths)["records"]
    assert sorted(manifest) == ["0", "2", "4"]
    assert all(run_folder.record_problem(paths, s, key) is None for s in (0, 2, 4))
    assert analysis.load_run_brackets(profile, multi).steps == [0, 2, 4]
    # A second launch computes nothing; a record that no longer verifies is recomputed alone.
    stamps = {p.name: p.stat().st_mtime_ns for p in paths.brackets.glob("*.safetensors")}
    assert "0 bracket record(s) computed" in torchrun(multi, root / "test.safetensors")
    assert stamps == {p.name: p.stat().st_mtime_ns for p in paths.brackets.glob("*.safetensors")}
    paths.record(2).write_bytes(b"garbage")
    out = torchrun(multi, root / "test.safetensors")
    assert "Recomputing 1 bracket record(s)" in out and "rank 0 of 2 computed steps [2]" in out
    untouched = {p.name: p.stat().st_mtime_ns for p in paths.brackets.glob("*.safetensors")}
    assert {k: untouched[k] for k in stamps if k != paths.record(2).name} == \
           {k: v for k, v in stamps.items() if k != paths.record(2).name}
    assert_same_records(single, paths, [2])


@pytest.mark.slow
def test_two_processes_sharing_the_pairs_store_the_records_of_one(run):
    """3 pairs at one pair per call are 3 chunks for 2 ranks: rank 0 reduces pairs (0, 1) and (1, 2), rank 1 (0, 2)."""
    profile, root, _ = run
    multi = root / "multi-pairs"
    shutil.copytree(root / "run", multi)
    out = torchrun(multi, root / "test.safetensors", 2, "--pairs-per-call", "1")
    assert "3 bracket record(s) computed by 2 process(es) on cpu" in out
    assert "rank 1 of 2 computed its share of the pairs of steps [0, 2, 4]" in out
    paths = run_folder.RunPaths(multi)
    assert_same_records(run_folder.RunPaths(root / "single-pairs"), paths, [0, 2, 4])
    key = analysis.analysis_key(profile, "data-a")
    assert all(run_folder.record_problem(paths, s, key) is None for s in (0, 2, 4))


def test_pairs_are_shared_when_every_rank_has_a_chunk_and_no_full_brackets_are_kept():
    many = get_profile("default", bracket_examples=64)   # 2,016 pairs: 63 chunks of 32
    assert distributed.shares_pairs(many, 32, 8) and distributed.shares_pairs(many, 32, 63)
    assert not distributed.shares_pairs(many, 32, 64) and not distributed.shares_pairs(many, 32, 1)
    assert not distributed.shares_pairs(get_profile("default"), 32, 2)   # 15 pairs: one chunk
    assert distributed.shares_pairs(get_profile("default"), 1, 2)
    assert not distributed.shares_pairs(get_profile("default", bracket_examples=64, save_full_brackets=True), 32, 8)


def test_a_bad_pairs_per_call_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit):
        distributed.main(["--profile", "ci", "--pairs-per-call", "0"])
    assert "a positive integer, got '0'" in capsys.readouterr().err


def test_one_process_group_of_one_is_analyse_run(run, tmp_path):
    """The distributed path in this process (gloo, world size 1): the same records, the same refusals."""
    profile, root, test = run
    shutil.copytree(root / "run", tmp_path / "run")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(ValueError, match="trained on data data-a"):
            distributed.analyse_run_distributed(profile, test, run_dir=tmp_path / "run", fingerprint="data-b", device="cpu")
        computed = distributed.analyse_run_distributed(profile, test, run_dir=tmp_path / "run", fingerprint="data-a",
                                           device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
        dist.destroy_process_group()
    assert computed == [0, 2, 4]
    assert_same_records(run_folder.RunPaths(root / "single"), run_folder.RunPaths(tmp_path / "run"), computed)


def test_shares_are_disjoint_round_robin_and_cover_every_step():
    steps = [0, 50, 100, 150, 200]
    shares = [distributed.share(steps, rank, 3) for rank in range(3)]
    assert shares == [[0, 150], [50, 200], [100]]
    assert sorted(sum(shares, [])) == steps
    assert distributed.share([], 1, 2) == []


def test_test_tensors_are_read_and_bad_files_refused(run, tmp_path):
    profile, root, test = run
    (images, attributes), fingerprint = distributed.load_test_split(profile, root / "test.safetensors")
    assert torch.equal(images, test[0]) and torch.equal(attributes, test[1]) and fingerprint == "data-a"
    storage.atomic_save_tensors(tmp_path / "bad.safetensors", {"images": test[0]})
    with pytest.raises(ValueError, match="lacks attributes, metadata 'fingerprint'"):
        distributed.load_test_split(profile, tmp_path / "bad.safetensors")


def test_a_plain_launch_is_refused(monkeypatch, capsys):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit):
        distributed.main(["--profile", "ci"])
    assert "launch with torchrun" in capsys.readouterr().err


def test_without_test_tensors_the_profiles_test_split_is_read(tmp_path):
    """As notebook 02 reads it: datasets.load_profile_split (here tiny generated data)."""
    profile = get_profile("ci", data_root=str(tmp_path), generated_images=30, image_size=16)
    (images, attributes), fingerprint = distributed.load_test_split(profile)
    split = datasets.load_profile_split(profile, "test", progress=False)
    assert torch.equal(images, split.images) and torch.equal(attributes, split.attributes)
    assert fingerprint == split.fingerprint and len(images) > 0
