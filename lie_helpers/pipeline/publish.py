"""The repository's public GitHub address, and the command that writes it into every link to it.

README.md, docs/ and the notebooks link to this repository: Colab and Binder badges, and the
`pip install git+https://github.com/...` of notebook 00. Until the repository has a public
address, REPOSITORY below is a placeholder and those links lead nowhere. One command sets it
here and rewrites every link (from whatever address they held before):

    make publish-links REPO=owner/name      # = python lie_helpers/pipeline/publish.py owner/name

Standard library only, run as a script: it needs neither torch nor an installed package.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPOSITORY = "OWNER/REPO"   # placeholder until the repository is public; set it with `make publish-links`
PLACEHOLDER = "OWNER/REPO"
# Link forms that carry the address right after them (Colab's is "github/", not "github.com/").
LINK_PREFIXES = ("github.com/", "colab.research.google.com/github/", "mybinder.org/v2/gh/")
LINKED_FILES = ("README.md", "docs/*.md", "notebooks/*.ipynb")
ROOT = Path(__file__).resolve().parents[2]
# GitHub's grammar: an owner of 1-39 letters, digits and single inner hyphens; a name of 1-100 letters, digits, '.', '_'
# and '-', other than '.' and '..'. Nothing else (no space, quote, ';', '$', '`' or newline) can pass.
_ADDRESS = re.compile(r"(?=[A-Za-z0-9-]{1,39}/)[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*/(?!\.\.?\Z)[A-Za-z0-9._-]{1,100}", re.ASCII)


def _link_pattern(address: str) -> re.Pattern:
    """`address` right after one of LINK_PREFIXES, and not followed by more of a name."""
    prefixes = "|".join(re.escape(p) for p in LINK_PREFIXES)
    return re.compile(rf"((?:{prefixes})){re.escape(address)}(?![A-Za-z0-9._-])")


def count_links(text: str, address: str) -> int:
    """How many links to `address` (in one of LINK_PREFIXES' forms) `text` holds."""
    return len(_link_pattern(address).findall(text))


def rewrite_links(text: str, old: str, new: str) -> tuple[str, int]:
    """`text` with every link to `old` pointing at `new` instead, and how many were rewritten."""
    return _link_pattern(old).subn(lambda match: match.group(1) + new, text)


def linked_files(root: Path = ROOT) -> list[Path]:
    """The files whose links follow REPOSITORY: README.md, docs/*.md and notebooks/*.ipynb."""
    return sorted(path for pattern in LINKED_FILES for path in Path(root).glob(pattern))


def publish_links(address: str, root: Path = ROOT) -> dict[str, int]:
    """Point every link in `root`'s linked files at `address` and store it as REPOSITORY in this module's
    copy under `root`; returns the links rewritten per file (relative path -> count)."""
    if not isinstance(address, str) or not _ADDRESS.fullmatch(address) or address == PLACEHOLDER:
        raise ValueError(f"{address!r} is not a GitHub address: give owner/name (owner: letters, digits and single "
                         "inner hyphens, at most 39; name: letters, digits, '.', '_' and '-', at most 100), e.g. "
                         "`make publish-links REPO=alice/lie-brackets`.")
    root = Path(root)
    module = root / "lie_helpers" / "pipeline" / "publish.py"
    if not (root / "README.md").exists() or not module.exists():
        raise FileNotFoundError(f"{root} is not a checkout of this repository (no README.md or "
                                "lie_helpers/pipeline/publish.py): run the command in the checkout.")
    source = module.read_text(encoding="utf-8")
    old = re.search(r'^REPOSITORY = "([^"]*)"', source, re.M).group(1)
    counts = {}
    for path in linked_files(root):
        text, n = rewrite_links(path.read_text(encoding="utf-8"), old, address)
        if n:
            path.write_text(text, encoding="utf-8")
            counts[str(path.relative_to(root))] = n
    module.write_text(re.sub(r'^REPOSITORY = "[^"]*"', f'REPOSITORY = "{address}"', source, count=1, flags=re.M),
                      encoding="utf-8")
    return counts


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python lie_helpers/pipeline/publish.py owner/name   (or: make publish-links REPO=owner/name)",
              file=sys.stderr)
        return 2
    try:
        counts = publish_links(argv[0])
    except (ValueError, FileNotFoundError) as error:
        print(error, file=sys.stderr)
        return 2
    for path, n in counts.items():
        print(f"{path}: {n} link(s) now point at {argv[0]}")
    print(f"REPOSITORY = {argv[0]!r} in lie_helpers/pipeline/publish.py; {sum(counts.values())} links in all.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
