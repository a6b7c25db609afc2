"""The repository address: `make publish-links` rewrites every link to it, and no other placeholder exists."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lie_helpers.pipeline import publish

REPO = Path(__file__).resolve().parents[1]
# Every text file a reader sees or the package ships; the address may appear in them only inside a link.
TEXT_FILES = ["README.md", "Makefile", "environment.yml", "pyproject.toml", "docs/*.md", "solutions/*.md",
              "notebooks/*.ipynb", "lie_helpers/**/*.py"]
# Placeholder spellings other than the one publish.py rewrites.
OTHER_PLACEHOLDERS = re.compile(r"\b(?:OWNER|USERNAME|YOUR[_-]?(?:NAME|ORG|USER|REPO)|ORG/REPO|USER/REPO)\b|"
                                r"<(?:owner|user|org|repo)>|github\.com/(?:username|your|example)\b")


def text_files(root):
    return sorted({p for pattern in TEXT_FILES for p in Path(root).glob(pattern)})


def copy_checkout(tmp_path):
    root = tmp_path / "checkout"
    for path in text_files(REPO):
        target = root / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return root


def test_the_checkout_links_only_the_stored_address_and_has_no_other_placeholder():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    lesson = (REPO / "notebooks" / "00_theory.ipynb").read_text(encoding="utf-8")
    # README and notebook 00: both badges; notebook 00 also its pip install line
    assert publish.count_links(readme, publish.REPOSITORY) >= 2
    assert publish.count_links(lesson, publish.REPOSITORY) >= 3 and f"git+https://github.com/{publish.REPOSITORY}" in lesson
    for path in text_files(REPO):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(REPO).as_posix()
        if name != "lie_helpers/pipeline/publish.py":
            assert text.count(publish.REPOSITORY) == publish.count_links(text, publish.REPOSITORY), \
                f"{name} names {publish.REPOSITORY} outside a link that `make publish-links` rewrites"
            assert text.count(publish.PLACEHOLDER) == publish.count_links(text, publish.PLACEHOLDER), name
        other = OTHER_PLACEHOLDERS.search(text.replace(publish.PLACEHOLDER, ""))
        assert not other, f"{name}: another placeholder {other[0]!r}"
    for path in publish.linked_files(REPO):
        assert path.relative_to(REPO).as_posix() in [p.relative_to(REPO).as_posix() for p in text_files(REPO)]


def test_publish_links_rewrites_every_link_and_the_stored_address(tmp_path):
    root = copy_checkout(tmp_path)
    before = {p: publish.count_links(p.read_text(encoding="utf-8"), publish.REPOSITORY) for p in publish.linked_files(root)}
    counts = publish.publish_links("alice/lie-brackets.v2", root=root)
    assert counts == {p.relative_to(root).as_posix(): n for p, n in before.items() if n}
    assert counts["README.md"] >= 2 and counts["notebooks/00_theory.ipynb"] >= 3
    for path in text_files(root):
        text = path.read_text(encoding="utf-8")
        if path.name != "publish.py":
            assert publish.PLACEHOLDER not in text, f"{path.name} still holds the placeholder"
        if path in before:
            assert publish.count_links(text, "alice/lie-brackets.v2") == before[path]
    lesson = (root / "notebooks" / "00_theory.ipynb").read_text(encoding="utf-8")
    assert "git+https://github.com/alice/lie-brackets.v2\\\"" in lesson   # the notebook's JSON stays intact
    module = (root / "lie_helpers" / "pipeline" / "publish.py").read_text(encoding="utf-8")
    assert 'REPOSITORY = "alice/lie-brackets.v2"' in module and 'PLACEHOLDER = "OWNER/REPO"' in module

    # From a published address to another: only this repository's links move, other GitHub links stay.
    readme = root / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8") + "\nSee https://github.com/alice/lie-brackets.v2-old and "
                      "https://github.com/pytorch/pytorch.\n", encoding="utf-8")
    publish.publish_links("bob/brackets", root=root)
    text = readme.read_text(encoding="utf-8")
    assert "alice/lie-brackets.v2/" not in text and "github.com/alice/lie-brackets.v2-old" in text
    assert "https://github.com/pytorch/pytorch." in text
    assert publish.count_links(text, "bob/brackets") == before[root / "README.md"]


@pytest.mark.parametrize("address", ["lie-brackets", "alice/", "a/b/c", "https://github.com/alice/x", "OWNER/REPO"])
def test_publish_links_refuses_what_is_not_owner_slash_name(tmp_path, address):
    with pytest.raises(ValueError, match="owner/name"):
        publish.publish_links(address, root=copy_checkout(tmp_path))


def test_publish_links_refuses_a_folder_that_is_not_a_checkout(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkout"):
        publish.publish_links("alice/x", root=tmp_path)


def test_make_publish_links_runs_the_script_without_the_package(tmp_path):
    root = copy_checkout(tmp_path)
    shutil.copy(REPO / "Makefile", root / "Makefile")
    # No torch on the path: a bare interpreter runs the script from the Makefile target.
    done = subprocess.run(["make", "-s", "publish-links", "REPO=alice/x", "PYTHON=python3 -I"], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "README.md: 2 link(s) now point at alice/x" in done.stdout
    assert publish.PLACEHOLDER not in (root / "README.md").read_text(encoding="utf-8")
    missing = subprocess.run(["make", "-s", "publish-links"], cwd=root, capture_output=True, text=True)
    assert missing.returncode != 0 and "REPO=owner/name" in missing.stderr


# ---------------------------------------------------------------- issue 18, item 4: no shell code from REPO

@pytest.mark.parametrize("repo", ["a/b; touch planted", "a/b`touch planted`", "a/b$$(touch planted)",
                                  "$(shell touch planted)", "a/b' ; touch planted ; echo '", 'a/b" ; touch planted ; "'])
def test_make_publish_links_never_runs_shell_code_from_repo(tmp_path, repo):
    root = copy_checkout(tmp_path)
    shutil.copy(REPO / "Makefile", root / "Makefile")
    before = (root / "README.md").read_text(encoding="utf-8")
    done = subprocess.run(["make", "-s", "publish-links", f"REPO={repo}", "PYTHON=python3 -I"], cwd=root,
                          capture_output=True, text=True)
    assert not (root / "planted").exists(), f"shell code in REPO ran: {repo!r}"
    assert done.returncode != 0 and "owner/name" in done.stderr
    assert (root / "README.md").read_text(encoding="utf-8") == before


@pytest.mark.parametrize("address", ["-alice/x", "alice-/x", "al--ice/x", "a" * 40 + "/x", "alice/" + "x" * 101,
                                     "alice/.", "alice/..", "alice/x\n", "alice/x y", "alice/ä", "alice_b/x"])
def test_publish_links_accepts_only_githubs_owner_name_grammar(tmp_path, address):
    with pytest.raises(ValueError, match="owner/name"):
        publish.publish_links(address, root=copy_checkout(tmp_path))


def test_publish_links_accepts_githubs_edge_cases(tmp_path):
    root = copy_checkout(tmp_path)
    for address in ("a/b", "a-b-c/x.y_z-1", "A" * 39 + "/" + "n" * 100, "alice/.github"):
        publish.publish_links(address, root=root)
