"""The notebook chain, on tiny notebooks executed for real with papermill.

The dummy notebooks live in a temporary copy of the repository layout (notebooks/, runs/,
figures/). Each appends one JSON line to a log file: which stage ran, with which
parameters, and in which Python environment, so order, parameters and skipping can be
read back. Each execution starts a kernel (about a second), so these are marked slow.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

from lie_helpers.pipeline import chain, committed_figures
from lie_helpers.pipeline.chain import ChainError, main, run_chain
from lie_helpers.training.config import run_folder_name

PARAMETERS = 'profile = "default"\noverrides = {}\nrun_dir = None'


def write_notebook(path: Path, log: Path, body: str = "", figure: str | None = None) -> None:
    """A notebook with the chain's `parameters` cell that logs its run to `log`."""
    record = (
        "import json, sys, pathlib\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        f"    f.write(json.dumps({{'stage': {path.stem!r}, 'profile': profile, 'overrides': overrides,\n"
        "                        'run_dir': run_dir, 'prefix': sys.prefix, 'cwd': str(pathlib.Path.cwd())}) + '\\n')\n"
    )
    cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"),
             nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell(record)]
    if figure:
        cells.append(nbformat.v4.new_code_cell(
            "from lie_helpers.training.config import get_profile, run_paths\n"
            "folder = run_paths(get_profile(profile, **overrides), run_dir).figures   # as the real notebooks do\n"
            "folder.mkdir(parents=True, exist_ok=True)\n"
            f"(folder / {figure!r}).write_text('a figure from ' + profile)"))
    if body:
        cells.append(nbformat.v4.new_code_cell(body))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def repo(tmp_path):
    """A repository layout with three dummy notebooks (and a file that is not a stage)."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "figures").mkdir()
    log = tmp_path / "log.jsonl"
    write_notebook(tmp_path / "notebooks" / "00_data.ipynb", log)
    write_notebook(tmp_path / "notebooks" / "01_train.ipynb", log, figure="training.png")
    write_notebook(tmp_path / "notebooks" / "02_brackets.ipynb", log)
    write_notebook(tmp_path / "notebooks" / "scratch.ipynb", log)   # no NN_ prefix: not a stage
    return tmp_path


def runs(repo: Path) -> list[dict]:
    log = repo / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def chain_in(repo: Path, profile="default", **kwargs):
    kwargs.setdefault("progress_bar", False)
    return run_chain(profile, notebooks_dir=repo / "notebooks", runs_root=repo / "runs",
                     figures_dir=repo / "figures", **kwargs)


# ---------------------------------------------------------------- no kernel needed

def test_unknown_profile_fails_before_any_work(repo, capsys):
    assert main(["--profile", "nope", "--root", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "nope" in err and "ci" in err and "default" in err and "full" in err
    assert not (repo / "runs").exists() and not runs(repo)


def test_unknown_setting_fails_before_any_work(repo, capsys):
    assert main(["--profile", "ci", "--set", "stepz=3", "--root", str(repo)]) == 1
    assert "stepz" in capsys.readouterr().err
    assert not (repo / "runs").exists()


def test_update_references_refused_for_other_profiles(repo):
    for kwargs in ({"profile": "ci"}, {"profile": "default", "overrides": {"steps": 300}}):
        with pytest.raises(ChainError, match="only for a plain run of 'default' or 'study'"):
            chain_in(repo, update_references=True, **kwargs)
    assert not runs(repo)


def test_overrides_parse_json_values_else_strings():
    assert chain.parse_overrides(["steps=200", "betas=[0.9, 0.99]", "loss=softmax", "lr=1e-3"]) == {
        "steps": 200, "betas": [0.9, 0.99], "loss": "softmax", "lr": 1e-3}
    with pytest.raises(ChainError, match="KEY=VALUE"):
        chain.parse_overrides(["steps"])


def test_parameters_only_what_differs_from_the_notebooks_defaults():
    assert chain.notebook_parameters("default", {}, None) == {}
    assert chain.notebook_parameters("ci", {"steps": 3}, None) == {"profile": "ci", "overrides": {"steps": 3}}


def test_each_profile_runs_its_own_notebooks_and_each_notebook_its_own_profile(repo):
    """The default chain leaves out notebook 04 (the study); the study profile runs 04 alone and, being
    04's own profile (its parameters cell), injects nothing into it."""
    log = repo / "log.jsonl"
    write_notebook(repo / "notebooks" / "04_study.ipynb", log)
    study_nb = repo / "notebooks" / "04_study.ipynb"
    study_nb.write_text(study_nb.read_text().replace('profile = \\"default\\"', 'profile = \\"study\\"'))
    assert chain.notebook_profile(study_nb) == "study"
    assert chain.notebook_profile(repo / "notebooks" / "00_data.ipynb") == "default"
    folders = dict(notebooks_dir=repo / "notebooks", runs_root=repo / "runs", run_dir=None, overrides={})
    default = chain._plan("default", **folders)
    assert [s.name for s in default.stages] == ["00_data", "01_train", "02_brackets"]
    study = chain._plan("study", **folders)
    assert [s.name for s in study.stages] == ["04_study"] and study.parameters == {"04_study": {}}
    ci = chain._plan("ci", **folders)
    assert [s.name for s in ci.stages][-1] == "04_study" and ci.parameters["04_study"] == {"profile": "ci"}


def test_stage_selection(repo):
    stages = chain.find_stages(repo / "notebooks", repo / "runs" / "default")
    assert [s.name for s in stages] == ["00_data", "01_train", "02_brackets"]
    names = lambda sel: [s.name for s in sel]  # noqa: E731
    assert names(chain.select_stages(stages, only="00,2")) == ["00_data", "02_brackets"]
    assert names(chain.select_stages(stages, start="01_train")) == ["01_train", "02_brackets"]
    with pytest.raises(ChainError, match="No stage '07'"):
        chain.select_stages(stages, only="07")


# ---------------------------------------------------------------- real papermill runs

@pytest.mark.slow
def test_default_run_order_parameters_skip_and_references(repo, capsys):
    results = chain_in(repo)
    assert [r[:2] for r in results] == [("00_data", "ran"), ("01_train", "ran"), ("02_brackets", "ran")]
    logged = runs(repo)
    assert [r["stage"] for r in logged] == ["00_data", "01_train", "02_brackets"]
    # The default profile injects nothing: the notebooks' own defaults are used...
    assert all(r["profile"] == "default" and r["overrides"] == {} and r["run_dir"] is None for r in logged)
    executed = nbformat.read(repo / "runs/default/notebooks/01_train.ipynb", as_version=4)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    # ...in the kernel of this very environment, started in notebooks/.
    assert {r["prefix"] for r in logged} == {sys.prefix}
    assert {Path(r["cwd"]) for r in logged} == {(repo / "notebooks").resolve()}
    assert (repo / "figures" / "training.png").read_text() == "a figure from default"
    assert (repo / "runs/default/chain_state.json").exists()

    # Nothing changed: every stage is skipped, with a message.
    capsys.readouterr()
    assert [r[1] for r in chain_in(repo)] == ["skipped"] * 3
    assert "skipped" in capsys.readouterr().out
    assert len(runs(repo)) == 3
    assert [status for _, status in chain.list_stages("default", notebooks_dir=repo / "notebooks",
                                                      runs_root=repo / "runs")] == ["up to date"] * 3

    # --update-references copies the executed notebooks back, without papermill's metadata;
    # that changes no cell source, so the stages stay up to date.
    chain_in(repo, update_references=True)
    reference = nbformat.read(repo / "notebooks/01_train.ipynb", as_version=4)
    assert "papermill" not in reference.metadata
    assert any(c.get("outputs") is not None and c.execution_count for c in reference.cells if c.cell_type == "code")
    assert [r[1] for r in chain_in(repo)] == ["skipped"] * 3

    # --force reruns everything.
    assert [r[1] for r in chain_in(repo, force=True)] == ["ran"] * 3
    assert len(runs(repo)) == 6


@pytest.mark.slow
def test_changed_notebook_reruns_it_and_what_follows(repo):
    chain_in(repo)
    write_notebook(repo / "notebooks" / "01_train.ipynb", repo / "log.jsonl", body="x = 1")
    statuses = chain.list_stages("default", notebooks_dir=repo / "notebooks", runs_root=repo / "runs")
    assert statuses == [("00_data", "up to date"), ("01_train", "changed since last run"),
                        ("02_brackets", "upstream changed")]
    assert [r[1] for r in chain_in(repo)] == ["skipped", "ran", "ran"]
    # --only runs the named stage alone (and leaves the others as they are).
    assert [r[1] for r in chain_in(repo, only="01", force=True)] == ["not selected", "ran", "not selected"]


@pytest.mark.slow
def test_package_source_change_reruns_everything(repo, tmp_path_factory):
    package = tmp_path_factory.mktemp("package")
    (package / "module.py").write_text("A = 1\n")
    chain_in(repo, only="00", package_dir=package)
    assert [r[1] for r in chain_in(repo, only="00", package_dir=package)] == ["skipped", "not selected", "not selected"]
    (package / "module.py").write_text("A = 2\n")
    assert [r[1] for r in chain_in(repo, only="00", package_dir=package)] == ["ran", "not selected", "not selected"]


@pytest.mark.slow
def test_other_profile_gets_parameters_and_ci_keeps_figures(repo, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(chain.__file__).parents[2]))   # the kernel imports this lie_helpers
    overrides = {"steps": 3, "checkpoint_every": 1}
    chain_in(repo, "ci", overrides=overrides, only="00,01")
    logged = runs(repo)
    assert [r["stage"] for r in logged] == ["00_data", "01_train"]
    assert all(r["profile"] == "ci" and r["overrides"] == overrides and r["run_dir"] is None for r in logged)
    # A run with overrides has its own folder, which the notebooks find by themselves.
    folder = repo / "runs" / run_folder_name("ci", overrides)
    assert folder.name.startswith("ci-checkpoint_every1-steps3-") and not (repo / "runs/ci").exists()
    executed = nbformat.read(folder / "notebooks/00_data.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert (folder / "figures/training.png").exists()
    assert not (repo / "figures" / "training.png").exists()     # CI never rewrites committed figures

    # The same notebook under profile "full" copies its figure to figures/.
    chain_in(repo, "full", only="01")
    assert (repo / "figures" / "training.png").read_text() == "a figure from full"


@pytest.mark.slow
def test_runs_root_elsewhere_is_passed_as_run_dir(repo, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    run_chain("default", notebooks_dir=repo / "notebooks", runs_root=elsewhere, figures_dir=repo / "figures",
              only="00", progress_bar=False)
    assert runs(repo)[0]["run_dir"] == str((elsewhere / "default").resolve())
    assert (elsewhere / "default/notebooks/00_data.ipynb").exists()


@pytest.mark.slow
def test_failure_names_notebook_and_cell_and_keeps_earlier_stages(repo, capsys):
    write_notebook(repo / "notebooks" / "01_train.ipynb", repo / "log.jsonl",
                   body="numbers = [1, 2]\nnumbers[5]  # out of range")
    assert main(["--root", str(repo), "--no-progress-bar"]) == 1
    err = capsys.readouterr().err
    assert "01_train.ipynb" in err and "cell 4 of 4" in err and "numbers = [1, 2]" in err
    assert "IndexError: list index out of range" in err
    assert str(repo / "runs/default/notebooks/01_train.partial.ipynb") in err   # the partial notebook
    assert not (repo / "runs/default/notebooks/01_train.ipynb").exists()     # never an executed copy
    assert [r["stage"] for r in runs(repo)] == ["00_data", "01_train"]       # 02 never ran
    state = json.loads((repo / "runs/default/chain_state.json").read_text())
    assert list(state["stages"]) == ["00_data"]

    # After the fix, the earlier stage is kept (skipped) and the chain goes on.
    write_notebook(repo / "notebooks" / "01_train.ipynb", repo / "log.jsonl")
    assert [r[1] for r in chain_in(repo)] == ["skipped", "ran", "ran"]


@pytest.mark.slow
def test_full_disk_gives_a_clear_message_and_leaves_no_invalid_notebook(repo, monkeypatch, capsys):
    """The issue: a bare OSError [Errno 28] and a truncated executed notebook. Now: the chain's message,
    the good executed notebook of the last run kept, and no invalid partial notebook."""
    import errno

    from papermill.iorw import LocalHandler

    chain_in(repo, only="00")
    executed = repo / "runs/default/notebooks/00_data.ipynb"
    good = executed.read_bytes()
    real, calls = LocalHandler.write, []

    def full_disk(self, buf, path):
        calls.append(path)
        if len(calls) >= 2:          # the first save goes through, then the disk is full mid-write
            with open(path, "w") as f:
                f.write(buf[:len(buf) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, buf, path)
    monkeypatch.setattr(LocalHandler, "write", full_disk)
    assert main(["--root", str(repo), "--only", "00", "--force", "--no-progress-bar"]) == 1
    err = capsys.readouterr().err
    assert "the disk is full" in err and "Free disk space and run the chain again" in err
    assert "Traceback" not in err
    assert executed.read_bytes() == good                       # a failed stage never replaces a good notebook
    partial = executed.with_suffix(".partial.ipynb")
    assert not partial.exists() or json.loads(partial.read_text())   # never invalid JSON


@pytest.mark.slow
def test_a_rerun_stage_forgets_the_results_it_recorded_before(repo):
    """A result that a notebook no longer records must not survive from an older run of it."""
    chain_in(repo, only="01")
    stale = repo / "runs/default/results/01.json"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text('{"dropped_result": 1}')
    other = repo / "runs/default/results/02.json"
    other.write_text('{"kept": 1}')
    chain_in(repo, only="01", force=True)
    assert not stale.exists() and other.exists()


def test_the_arithmetic_is_part_of_every_stage_key(monkeypatch):
    """A run with other threads or kernels trains another trajectory: its stages are not up to date."""
    for name in chain.ARITHMETIC_VARIABLES:   # CI itself sets some of them
        monkeypatch.delenv(name, raising=False)
    plain = chain.package_fingerprint()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one_thread = chain.package_fingerprint()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert len({plain, one_thread, chain.package_fingerprint()}) == 3


@pytest.mark.slow
def test_a_full_run_removes_the_figures_no_stage_writes_any_more(repo, monkeypatch, capsys):
    """figures/ holds what the profile's stages write: a full run removes a stage's figure that no stage writes
    (gone, or renamed), and keeps other profiles' figures, files named after no stage and those made by hand."""
    monkeypatch.setattr(committed_figures, "MADE_BY_HAND", frozenset({"02_by_hand.png"}))
    log, figures = repo / "log.jsonl", repo / "figures"
    write_notebook(repo / "notebooks" / "01_train.ipynb", log, figure="01_curves.png")
    for name in ("01_curves.png", "01_orphan.png", "04_other_profile.png", "02_by_hand.png", "notes.txt"):
        (figures / name).write_text("committed")

    chain_in(repo, only="01")   # a partial run copies what its stage wrote, removes nothing, names the stale
    assert (figures / "01_curves.png").read_text() == "a figure from default"
    assert (figures / "01_orphan.png").exists() and "01_orphan.png" in capsys.readouterr().out
    state = json.loads((repo / "runs/default/chain_state.json").read_text())
    assert state["stages"]["01_train"]["figures"] == ["01_curves.png"]

    chain_in(repo)   # a full run (01 up to date, skipped): the stale figure goes
    assert sorted(p.name for p in figures.iterdir()) == ["01_curves.png", "02_by_hand.png", "04_other_profile.png",
                                                         "notes.txt"]
    assert "Removed 1 stale figure(s)" in capsys.readouterr().out

    # The notebook renames its figure: the old name goes, though the run folder still holds that file.
    write_notebook(repo / "notebooks" / "01_train.ipynb", log, figure="01_renamed.png")
    chain_in(repo)
    assert (repo / "runs/default/figures/01_curves.png").exists()
    assert sorted(p.name for p in figures.iterdir()) == ["01_renamed.png", "02_by_hand.png", "04_other_profile.png",
                                                         "notes.txt"]
