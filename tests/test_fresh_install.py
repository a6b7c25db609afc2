"""Notebook 00 runs in a fresh environment that has only `pip install` of the package (issue 12).

A new venv in a temporary folder (no system site-packages), `pip install -c constraints.txt .`
(the runtime dependencies, which include papermill and ipykernel), then notebook 00 executed with
papermill in that venv. Slow (minutes), so it runs only with LIE_HELPERS_FRESH_INSTALL_TEST=1;
.ci/run sets it.

One exception to "fresh": torch, torchvision, triton and the CUDA libraries (about 5.5 GB on x86_64,
a CUDA build) are not installed a second time. The venv sees this interpreter's copies through a
.pth file that names a folder of links to those distributions only, so pip finds torch==2.14.1
installed and installs every other dependency itself. A second full copy filled a CI machine's disk
(stop 23: "No space left on device" in every test after this one); `make setup` installs torch from
the same pins on every run, so nothing this test guards is lost. The venv is deleted afterwards.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "00_theory.ipynb"
EXECUTION_LIMIT_S = 120   # issue 12: "runs top to bottom in under 2 minutes on a 2-core CPU"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("LIE_HELPERS_FRESH_INSTALL_TEST") != "1",
                       reason="the fresh-install test creates a venv and installs torch (minutes); "
                              "run it with LIE_HELPERS_FRESH_INSTALL_TEST=1 (.ci/run does)"),
]


# Distributions the fresh venv borrows from this interpreter instead of installing (see the docstring).
BORROWED_PREFIXES = ("torch", "triton", "nvidia", "cuda")


def folder_size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def borrow_torch(venv: Path, links: Path) -> list[str]:
    """Link this interpreter's torch-family distributions into `links` and put that folder on the venv's path."""
    site_packages = Path(sysconfig.get_paths()["purelib"])
    links.mkdir()
    borrowed = sorted(entry.name for entry in site_packages.iterdir()
                      if entry.name.lower().startswith(BORROWED_PREFIXES))
    assert any(name.startswith("torch-") and name.endswith(".dist-info") for name in borrowed), \
        f"no torch distribution in {site_packages} to lend the fresh venv"
    for name in borrowed:
        (links / name).symlink_to(site_packages / name)
    venv_site_packages = next((venv / "lib").glob("python3*/site-packages"))
    (venv_site_packages / "borrowed_torch.pth").write_text(f"{links}\n", encoding="utf-8")
    return borrowed


@pytest.fixture
def scratch(tmp_path):
    """tmp_path, emptied afterwards: the venv is hundreds of MiB even without torch."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_notebook_00_runs_after_a_plain_pip_install(scratch):
    tmp_path = scratch
    venv, run_dir = tmp_path / "venv", tmp_path / "run"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    borrowed = borrow_torch(venv, tmp_path / "borrowed")
    # Only the venv: no user site-packages, no user kernelspecs (a user's "python3" kernel would run another Python).
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "JUPYTER_DATA_DIR": str(tmp_path / "jupyter"),
           "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "JUPYTER_PATH"):
        env.pop(name, None)
    # A copy of the checkout (tracked and untracked files alike) so pip's build leaves no build/ or egg-info here.
    source = tmp_path / "source"
    everywhere = shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".pytest_cache")

    def ignore(folder, names):      # the checkout's own .venv, runs/ and data/, not the package's lie_helpers/data
        top = {".venv", "runs", "data"} if Path(folder) == REPO else set()
        return set(everywhere(folder, names)) | (top & set(names))
    shutil.copytree(REPO, source, ignore=ignore)
    started = time.perf_counter()
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-c", str(REPO / "constraints.txt"), str(source)],
                   check=True, env=env, cwd=tmp_path)
    install_s = time.perf_counter() - started
    installed = subprocess.run([str(python), "-m", "pip", "list", "--path", str(next((venv / "lib").glob("python3*/site-packages"))),
                                "--format", "freeze"], env=env, capture_output=True, text=True, check=True).stdout
    names = {line.split("==")[0].lower() for line in installed.split()}
    assert {"papermill", "ipykernel", "numpy", "safetensors"} <= names, \
        f"pip did not install the runtime dependencies into the fresh venv:\n{installed}"
    assert not any(name.startswith(BORROWED_PREFIXES) for name in names), \
        f"pip installed a second torch-family copy beside the borrowed one ({sorted(borrowed)}):\n{installed}"
    imported = subprocess.run([str(python), "-c", "import lie_helpers.pipeline.chain; print(lie_helpers.__file__)"],
                              env=env, cwd=tmp_path, capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr[-3000:]       # every sub-package was installed
    where = imported.stdout.strip()
    assert Path(where).is_relative_to(venv), f"lie_helpers imported from {where}, not from the fresh venv"

    executed = tmp_path / "00_theory.ipynb"
    started = time.perf_counter()
    done = subprocess.run([str(python), "-m", "papermill", str(NOTEBOOK), str(executed), "-k", "python3",
                           "-p", "run_dir", str(run_dir), "--cwd", str(NOTEBOOK.parent)],
                          env=env, cwd=tmp_path, capture_output=True, text=True)
    papermill_s = time.perf_counter() - started
    assert done.returncode == 0, f"notebook 00 failed in the fresh venv:\n{done.stderr[-4000:]}"
    execution_s = json.loads(executed.read_text(encoding="utf-8"))["metadata"]["papermill"]["duration"]
    print(f"\nfresh install: pip {install_s:.0f} s, venv {folder_size_mib(venv):.0f} MiB; notebook 00: "
          f"{execution_s:.1f} s executing ({papermill_s:.1f} s with papermill and kernel start)")
    assert (run_dir / "figures" / "00_vector_fields.png").exists()
    assert execution_s < EXECUTION_LIMIT_S, f"notebook 00 took {execution_s:.0f} s; issue 12 asks for under 2 minutes"
