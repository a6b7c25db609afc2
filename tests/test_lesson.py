"""The teaching material: notebook 00 runs on its own, and every notebook ends with exercises whose solutions exist."""
import json
import re
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
STAGES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def test_there_are_notebooks():
    assert [p.name[:2] for p in STAGES] == ["00", "01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", STAGES, ids=lambda p: p.name)
def test_every_notebook_ends_with_exercises_and_their_solutions_exist(path):
    notebook = cells(path)
    headings = [i for i, c in enumerate(notebook)
                if c["cell_type"] == "markdown" and "".join(c["source"]).startswith("## Exercises")]
    assert len(headings) == 1, f"{path.name}: needs one '## Exercises' section"
    tail = notebook[headings[0]:]
    assert all(c["cell_type"] == "markdown" for c in tail), f"{path.name}: the exercises must come last"
    exercises = "".join("".join(c["source"]) for c in tail)
    numbered = re.findall(r"^\*\*(\d) · ", exercises, flags=re.M)
    assert 2 <= len(numbered) <= 4, f"{path.name}: {len(numbered)} exercises"
    assert exercises.count("<summary>Solution</summary>") == len(numbered), path.name
    solutions = f"solutions/{path.name[:2]}_solutions.md"
    assert solutions in exercises, f"{path.name} does not link {solutions}"
    for target in LINK.findall(exercises):
        if not target.startswith(("http", "#")):
            assert (path.parent / target).resolve().exists(), f"{path.name} links a missing file: {target}"


def test_the_solution_files_answer_every_exercise():
    for path in STAGES:
        exercises = "".join("".join(c["source"]) for c in cells(path) if c["cell_type"] == "markdown")
        count = len(re.findall(r"^\*\*(\d) · ", exercises[exercises.index("## Exercises"):], flags=re.M))
        text = (REPO / "solutions" / f"{path.name[:2]}_solutions.md").read_text(encoding="utf-8")
        assert [int(n) for n in re.findall(r"^## (\d) · ", text, flags=re.M)] == list(range(1, count + 1)), path.name


def test_the_teachers_guide_links_exist():
    guide = (REPO / "docs" / "teaching.md").read_text(encoding="utf-8")
    for target in LINK.findall(guide):
        if not target.startswith(("http", "#")):
            assert (REPO / "docs" / target).resolve().exists(), f"docs/teaching.md links a missing file: {target}"


@pytest.mark.slow
def test_notebook_00_runs_on_its_own(tmp_path):
    """The lesson executes top to bottom in a fresh run folder (under 2 minutes on a 2-core CPU) and records its results."""
    papermill = pytest.importorskip("papermill")
    started = time.perf_counter()
    papermill.execute_notebook(str(NOTEBOOKS / "00_theory.ipynb"), str(tmp_path / "00_theory.ipynb"),
                               kernel_name="python3", cwd=str(NOTEBOOKS), parameters={"run_dir": str(tmp_path)},
                               progress_bar=False)
    seconds = time.perf_counter() - started
    recorded = json.loads((tmp_path / "results" / "00.json").read_text())
    for name in ("demo_gap_vs_bracket", "smith_modified_closer", "lesson_bracket_vs_engine", "lesson_gap_slope",
                 "lesson_commuting_gap"):
        assert name in recorded, name
    assert recorded["lesson_bracket_vs_engine"] < 1e-12 and abs(recorded["lesson_gap_slope"] - 2) < 0.05
    for figure in ("00_vector_fields", "00_two_orders_nonlinear", "00_commuting_control", "00_bracket_field",
                   "00_minibatch_bilinearity", "00_smith_order_average"):
        assert (tmp_path / "figures" / f"{figure}.png").exists(), figure
    print(f"notebook 00 ran in {seconds:.0f} s")
