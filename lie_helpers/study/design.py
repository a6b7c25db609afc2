"""The decisive test of the write-up's hypothesis (notebook 04; `make study`).

The write-up reads its brackets as a diagnostic: Black_Hair and Brown_Hair dominate them because
the independent loss treats two exclusive, confusable attributes as independent. This study
asks that of brackets with every confound of the first experiment removed:

    arm                         loss                        data                       role
    independent                 independent BCE             bands at study_band        (a) the write-up's loss
    independent, no bands       independent BCE             bands at 0                 the dial at 0
    independent, bands / 3      independent BCE             bands at study_band / 3    the dial in between
    categorical, matched        categorical_hair_matched    bands at study_band        (b) hair exclusive, weight matched
    exclusive makeup            exclusive_makeup            bands at study_band        (c) positive control: mis-specified
    categorical x4              categorical_hair_x4         bands at study_band        sensitivity: the first study's weight
    independent, width 0.5/1.0  independent BCE             bands at study_band        capacity

The bands (lie_helpers.data.generated_celeba): a fraction of black/brown faces drawn at the shade where
P(black) = 0.5 and labelled by a coin (ambiguous and exclusive), and a fraction of faces with faint
glasses labelled by a coin (ambiguous, not exclusive). Every arm trains `profile.steps` Adam steps
from each seed; its brackets are taken at the late checkpoints (steps ≥ half), among stratified
bracket examples (lie_helpers.example_sets: ambiguous black/brown, faint glasses, unambiguous
black/brown, other; each stratum's examples apart) and pushed onto that set's stratified batch, the same
test images (by file name) in every arm, so that arms differ only in what they are meant to. Beside the
brackets, J·g — one gradient step of the same examples pushed onto the same batch — is stored for every arm:
each contrast is also computed on it, the simplest competing explanation of a bracket finding.

The study's readout (lie_helpers.study.contrasts): the currency is the Fisher-normalised change of each
attribute's probability (analysis.currency.attribute_perturbations, scale "fisher"), whatever outputs a loss uses. A run's profile over the 40
attributes is its log10 magnitude minus the median attribute's, averaged over late checkpoints and
example sets; the seed is the unit. The contrasts and their tests are fixed in contrasts.CONTRASTS
and in notebook 04 before any result.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from . import example_sets
from ..analysis.currency import HAIR_PAIR
from ..training.datasets import load_profile_split, prepare_data
from ..training.config import Profile

GLASSES = ("Eyeglasses",)

MANIPULATED = (*HAIR_PAIR, *GLASSES)          # the attributes whose labels the bands make ambiguous

BRACKET_STRATA = ("ambiguous black/brown", "faint glasses", "unambiguous black/brown", "other")

BATCH_SHARES = {"ambiguous black/brown": 10, "faint glasses": 8, "unambiguous black/brown": 8, "other": 6}


@dataclass(frozen=True)
class Arm:
    name: str
    loss: str
    band: float            # hair and glasses noise band of its data
    seeds: tuple
    width: float | None = None   # None: the profile's
    role: str = ""


def study_arms(profile: Profile) -> list[Arm]:
    """The arms of the module docstring, with P.seeds (sensitivity and capacity arms with fewer)."""
    s, b = tuple(profile.seeds), profile.study_band
    return [
        Arm("independent", "independent", b, s, role="(a) the write-up's loss"),
        Arm("independent, no bands", "independent", 0.0, s, role="the dial at 0"),
        Arm("independent, bands / 3", "independent", round(b / 3, 4), s[:max(2, len(s) // 2)], role="the dial between"),
        Arm("categorical, matched", "categorical_hair_matched", b, s, role="(b) hair exclusive, matched weight"),
        Arm("exclusive makeup", "exclusive_makeup", b, s, role="(c) positive control"),
        Arm("categorical x4", "categorical_hair_x4", b, s[:2], role="sensitivity: hair weight 4"),
        *[Arm(f"independent, width {w}", "independent", b, s[:1], width=w, role="capacity")
          for w in (0.5, 1.0) if w != profile.width],
    ]


def arm_profile(profile: Profile, arm: Arm, seed: int) -> Profile:
    return dataclasses.replace(profile, loss=arm.loss, seed=seed, hair_noise_band=arm.band, glasses_noise_band=arm.band,
                               width=arm.width or profile.width, stages=())


def slug(arm: Arm) -> str:
    return "".join(c if c.isalnum() else "-" for c in arm.name.replace(", ", "_")).strip("-")


def arm_run_dir(run_dir, arm: Arm, seed: int) -> Path:
    """The folder of an arm's run with `seed`, inside the study's run folder."""
    return Path(run_dir) / "study" / f"{slug(arm)}-seed{seed}"


def late_steps(profile: Profile) -> list[int]:
    """The analysed checkpoints: those at or after half the run."""
    grid = sorted({*range(0, profile.steps, profile.checkpoint_every), profile.steps})
    return [s for s in grid if s >= profile.steps / 2]


def study_sets(profile: Profile) -> tuple[list, object]:
    """(example sets for each seed, the banded test split): strata from the study's banded data, so that
    every arm uses the same test images by file name (the unbanded data has the same files)."""
    banded = dataclasses.replace(profile, hair_noise_band=profile.study_band, glasses_noise_band=profile.study_band)
    test = load_profile_split(banded, "test", progress=False)
    split_strata = example_sets.strata(test.attributes.numpy(), example_sets.split_truth(prepare_data(banded, progress=False),
                                                                                          test.filenames))
    scale = profile.study_batch / sum(BATCH_SHARES.values())
    batch = {k: max(1, round(v * scale)) for k, v in BATCH_SHARES.items()}
    batch["other"] += profile.study_batch - sum(batch.values())
    bracket = {k: profile.study_examples for k in BRACKET_STRATA}
    sets = {seed: example_sets.draw_example_sets(split_strata, seed, profile.study_sets, bracket=bracket, pushforward=batch)
            for seed in profile.seeds}
    return sets, test


def study_runs(profile: Profile, shard=(0, 1)) -> list[tuple[Arm, int]]:
    """Every (arm, seed) of the study, the widest (slowest) first, or shard (k, n)'s share: runs k, k + n, …"""
    runs = [(arm, seed) for arm in study_arms(profile) for seed in arm.seeds]
    runs.sort(key=lambda run: -(run[0].width or profile.width))     # stable: arm order within a width
    k, n = shard
    if not 0 <= k < n:
        raise ValueError(f"shard (k, n) needs 0 <= k < n, got {shard}.")
    return runs[k::n]
