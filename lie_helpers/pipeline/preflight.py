"""What the chain checks before it runs anything, and before each stage.

* Links: the chain never writes through a symbolic link. A link anywhere inside the run folder (an executed
  or partial notebook, figures/, results/, the lock …) or inside figures/ is refused, naming it, before the
  first stage and again before each.
* Data: every split the stages that will run read, loaded as those stages load it: generated data is drawn
  when missing, real data is checked (files, checksums), every image is decoded (into the data's tensor cache,
  which the notebooks then read). A missing or corrupt file is named, as the user can type it, before any
  stage has run. A notebook says what it reads in its metadata: `"lie_helpers": {"reads_data": {"main":
  ["train", "valid"]}}` ("main": the profile's data; "arms": the data of each of notebook 04's arms,
  lie_helpers.study.design); a notebook without it reads no data.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ..data.storage import show
from ..study.design import arm_profile, study_arms
from ..training.config import Profile, data_dir
from ..training.datasets import load_profile_split

SOURCES = ("main", "arms")


class ChainError(Exception):
    """A chain failure with a message meant for the person at the terminal."""


def refuse_links(folder, what: str) -> None:
    """Raise ChainError naming the first symbolic link inside `folder` (not `folder` itself), if any."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for top, dirs, files in os.walk(folder):          # does not follow links
        for name in sorted(dirs + files):
            path = Path(top) / name
            if path.is_symlink():
                raise ChainError(
                    f"{show(path)} is a symbolic link inside {what} ({show(folder)}), pointing to "
                    f"{os.readlink(path)}. The chain writes only inside the run folder and figures/ and never "
                    f"through a link: remove it (rm {show(path)}) and run again.")


def reads_data(notebook) -> dict[str, list[str]]:
    """What a notebook says it reads ({"main" or "arms": [splits]}, its metadata's lie_helpers.reads_data)."""
    reads = json.loads(Path(notebook).read_text(encoding="utf-8")).get("metadata", {}).get("lie_helpers", {})
    reads = reads.get("reads_data", {})
    unknown = sorted(set(reads) - set(SOURCES))
    if unknown:
        raise ChainError(f"{show(notebook)}: its metadata lie_helpers.reads_data names {unknown}; use {SOURCES}.")
    return reads


def data_needs(profile: Profile, notebooks, notebooks_dir) -> dict[Path, tuple[Profile, list[str]]]:
    """{data folder: (a profile that reads it, the splits read)} for the `notebooks`, with the profiles' data
    folders made absolute (data_root is relative to notebooks/)."""
    root = (Path(notebooks_dir) / profile.data_root).resolve()
    profile = dataclasses.replace(profile, data_root=str(root))
    needs = {}
    for notebook in notebooks:
        for source, splits in reads_data(notebook).items():
            readers = ([profile] if source == "main" else
                       [arm_profile(profile, arm, arm.seeds[0]) for arm in study_arms(profile)])
            for reader in readers:
                _, wanted = needs.setdefault(data_dir(reader), (reader, []))
                wanted.extend(s for s in splits if s not in wanted)
    return needs


def check_data(profile: Profile, notebooks, notebooks_dir, log, progress: bool = True) -> None:
    """Load every split the `notebooks` read (drawing generated data that is missing, decoding every image),
    raising ChainError that names the problem before any stage runs."""
    needs = data_needs(profile, notebooks, notebooks_dir)
    for folder, (reader, splits) in needs.items():
        log(f"Checking the data in {show(folder)}: {', '.join(splits)} split(s) …")
        for split in splits:
            try:
                load_profile_split(reader, split, progress=progress)
            except (OSError, ValueError, RuntimeError) as err:
                raise ChainError(f"The data is not ready; nothing has run (the chain checks the data before the "
                                 f"first stage).\n{err}") from err
