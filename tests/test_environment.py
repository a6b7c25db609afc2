"""pyproject.toml, environment.yml and constraints.txt describe one environment.

pyproject.toml holds loose ranges (pip users), environment.yml the same packages for conda
(conda-forge names), constraints.txt the exact set `make` installs and CI tests. These
tests keep the three in step: a dependency added to one and forgotten in another fails here.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml   # PyYAML, installed with papermill
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# conda-forge name → pip name, where they differ.
CONDA_TO_PIP = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
CONDA_ONLY = {"python", "pip"}


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pip_requirements() -> dict[str, Requirement]:
    """Every dependency of pyproject, the test extra included, by canonical name."""
    project = pyproject()
    reqs = list(project["dependencies"]) + [r for extra in project.get("optional-dependencies", {}).values()
                                            for r in extra]
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in reqs}


def conda_dependencies() -> tuple[dict[str, SpecifierSet], list]:
    """environment.yml's conda packages (pip names, specifiers) and its pip section."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda, pip_section = {}, []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip_section += dep.get("pip", [])
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", dep.strip())
        name, spec = match.group(1), match.group(2).replace(" ", "")
        if spec.startswith("=") and not spec.startswith("=="):
            spec = "==" + spec[1:] + ("" if spec.endswith("*") else ".*")   # conda's `=3.11` is 3.11.*
        conda[canonicalize_name(CONDA_TO_PIP.get(name, name))] = SpecifierSet(spec)
    return conda, pip_section


def lower_bound(spec: SpecifierSet) -> Version | None:
    bounds = [Version(s.version.rstrip(".*")) for s in spec if s.operator in (">=", "==", "~=", ">")]
    return max(bounds) if bounds else None


def constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not an exact pin NAME==VERSION"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_every_pyproject_dependency_is_in_environment_yml_with_a_compatible_bound():
    conda, _ = conda_dependencies()
    for name, req in pip_requirements().items():
        assert name in conda, f"{name} is in pyproject.toml but not in environment.yml"
        bound = lower_bound(conda[name])
        assert bound is not None, f"environment.yml gives {name} no lower bound"
        assert bound in req.specifier, (
            f"environment.yml's lower bound {name}>={bound} lies outside pyproject's {req}")
        assert bound == lower_bound(req.specifier), (
            f"{name}: environment.yml says >={bound}, pyproject says {req.specifier}; keep them equal")


def test_every_environment_yml_package_is_in_pyproject():
    conda, pip_section = conda_dependencies()
    extra = sorted(set(conda) - set(pip_requirements()) - CONDA_ONLY)
    assert not extra, f"environment.yml has {extra}, which pyproject.toml does not list"
    assert any(re.fullmatch(r"-e\s+\.", entry.split("#")[0].strip()) for entry in pip_section), \
        "environment.yml should install the package itself with pip: `- -e .`"


def test_environment_yml_python_satisfies_requires_python():
    conda, _ = conda_dependencies()
    python = lower_bound(conda["python"])
    assert python is not None and python in SpecifierSet(pyproject()["requires-python"])


def test_constraints_pin_every_dependency_inside_pyproject_ranges():
    pins = constraints()
    assert "lie-helpers" not in pins, "constraints.txt must not pin the package itself"
    for name, req in pip_requirements().items():
        assert name in pins, f"{name} is a dependency but constraints.txt does not pin it"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {req}")


def test_torch_and_torchvision_are_pinned_as_a_matching_pair():
    # Pinned so pip cannot pick an older torch wheel found on PIP_FIND_LINKS, for which no
    # torchvision loads. torchvision 0.N pairs with torch 2.(N-15): 0.19 ↔ 2.4, 0.29 ↔ 2.14.
    pins = constraints()
    torch, vision = pins["torch"], pins["torchvision"]
    assert (vision.major, vision.minor - 15) == (torch.major - 2, torch.minor), (
        f"torchvision {vision} does not match torch {torch}")
