"""The decisive test of the write-up's hypothesis (notebook 04; `make study`), second version (issue 19).

The write-up reads its brackets as a diagnostic: Black_Hair and Brown_Hair dominate them because
the independent loss treats two exclusive, confusable attributes as independent. This study
asks that of brackets with every confound of the first experiment removed:

    arm                         loss                        data                       role
    independent                 independent BCE             bands at study_band        (a) the write-up's loss
    independent, no bands       independent BCE             bands at 0                 the dial at 0
    independent, bands / 3      independent BCE             bands at study_band / 3    the dial in between
    categorical, matched        categorical_hair_matched    bands at study_band        (b) hair exclusive, weight matched
    exclusive makeup            exclusive_makeup            bands at study_band        (c) a loss that cannot fit the data
    categorical x4              categorical_hair_x4         bands at study_band        sensitivity: the first study's weight
    independent, width 0.5/1.0  independent BCE             bands at study_band        capacity

The bands (lie_helpers.data.generated_celeba): a fraction of black/brown faces drawn at the shade where
P(black) = 0.5 and labelled by a coin (ambiguous and exclusive), and a fraction of faces with faint
glasses labelled by a coin (ambiguous, not exclusive). Every arm trains `profile.steps` Adam steps
from each seed. Bracket examples are stratified (lie_helpers.study.example_sets: ambiguous black/brown, faint
glasses, unambiguous black/brown, other; each stratum's examples apart) and pushed onto that set's stratified
batch, the same test images (by file name) in every arm, so that arms differ only in what they are meant to.

What is read, and where (pre-registered before any result of this version):
- The primary readout (lie_helpers.study.sources, .source_records): each named source's self-share Q_k and its
  first-order analogue Q^g_k at the run's LAST checkpoint, on example set 0's "ambiguous black/brown" and
  "faint glasses" strata. The contrasts C1–C5 on it (lie_helpers.study.contrasts) are fixed there and in notebook 04.
- Known-answer controls (lie_helpers.study.known_answers) at arm (a)'s first seed, last checkpoint, on the same
  examples: a readout that fails them is reported with its numbers and not used.
- The old readout (an attribute's log10 magnitude of the whole bracket minus the median attribute's; its records
  by records.analyse_study_run, lie_helpers.study.old_readout) fails the loss-weight dose (DESIGN.md §6); it is
  only reported, at the last checkpoint alone (`record_steps`: it was read at every checkpoint from half the run
  on, which cost as much as the new readout and now informs no decision).
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
        Arm("exclusive makeup", "exclusive_makeup", b, s, role="(c) mis-specified makeup loss, reported"),
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


def record_steps(profile: Profile) -> list[int]:
    """The checkpoints the study's records read: the run's last (every run saves it)."""
    return [profile.steps]


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


CONTROL_COST = 2.0     # the known-answer controls at (a)'s first seed, in units of a run at the profile's width


def run_cost(profile: Profile, arm: Arm, seed: int) -> float:
    """A run's estimated cost (training and records) relative to one at the profile's width: measured on 2 cores,
    90 s at width 0.25, 250 s at 0.5, 950 s at 1.0, about (width ratio)^1.75; the control run adds CONTROL_COST."""
    cost = ((arm.width or profile.width) / profile.width) ** 1.75
    return cost + (CONTROL_COST if (arm.name, seed) == control_run(profile) else 0.0)


def control_run(profile: Profile) -> tuple[str, int]:
    """(arm, seed) whose last checkpoint the known-answer controls use: arm (a), its first seed."""
    return study_arms(profile)[0].name, study_arms(profile)[0].seeds[0]


def study_runs(profile: Profile, shard=(0, 1)) -> list[tuple[Arm, int]]:
    """Every (arm, seed) of the study, the slowest first, or shard (k, n)'s share: the runs taken in order of
    decreasing estimated cost (run_cost), each given to the shard with the least work so far (ties: the lowest
    k), so that n processes finish together."""
    runs = [(arm, seed) for arm in study_arms(profile) for seed in arm.seeds]
    runs.sort(key=lambda run: -run_cost(profile, *run))             # stable: arm order within a cost
    k, n = shard
    if not 0 <= k < n:
        raise ValueError(f"shard (k, n) needs 0 <= k < n, got {shard}.")
    load, mine = [0.0] * n, []
    for run in runs:
        target = min(range(n), key=lambda j: (load[j], j))
        load[target] += run_cost(profile, *run)
        if target == k:
            mine.append(run)
    return mine
