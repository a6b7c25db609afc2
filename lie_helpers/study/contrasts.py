"""The study's pre-registered contrasts on the primary readout (the source self-shares of lie_helpers.study.sources).

Written before any result of this version (issue 19); the seed is the unit, each run's value is its share at the
last checkpoint, averaged over the two pre-registered strata:

    C1  exclusive makeup − independent, on Q_MAKEUP        (c) − (a): a contrast, not a control. (c)'s loss cannot
                                                           represent faces with both makeup and lipstick, but it
                                                           fits their soft target exactly, where its gradient
                                                           vanishes: nothing fixes the sign in advance (DESIGN §6)
    C2  bands − no bands, on Q_HAIR                        ambiguity with exclusivity (arm (a) against the dial at 0)
    C3  bands − no bands, on Q_GLASSES                     ambiguity without exclusivity
    C4  independent − categorical matched, on Q_HAIR       (a) − (b): the write-up's hypothesis predicts > 0
    C5  Q_HAIR − 2·Q^g_HAIR within (a), against 0          does the hair source create more bracket than its
                                                           gradient share predicts? (replaces the ceiling AUROC)

Why 2·Q^g: a source's self part is bilinear in its gradients, so the dose moves Q by 2·log10 w and Q^g by
log10 w (controls: lie_helpers.study.known_answers). A source whose bracket grows only because its gradients do
keeps Q − 2·Q^g fixed; Q − Q^g would move by log10 w under a pure change of gradient scale and so could not
separate "more bracket" from "more gradient". The same factor pairs every contrast against J·g: per seed,
(contrast on Q) − 2·(contrast on Q^g), one sign-flip test of that difference (stats.against_first_order).

Currency: Fisher (analysis.currency, scale "fisher"), pre-registered because it reads every loss's outputs as the
same quantity, the change of the Bernoulli marginal "attribute present" in units of its own information
(≈ √(2 KL)), whatever the loss's outputs (sigmoid or softmax member); log-odds is shown as the sensitivity check
(it weighs confident outputs' changes as heavily as uncertain ones').

Secondary readout (issue 20, added after the primary's results; the primary's contrasts are unchanged): the same
contrasts on Adam's self-share Q^A and its Q^Ag (lie_helpers.study.sources), read only when Q^A passed its own dose
control (`adam_contrast_tables`).

Tests: exact paired sign-flip tests, Holm over each family (C1–C5 on Q; C1–C4 on Q^g; C1–C4 paired against J·g);
intervals invert the same sign-flip test at Holm-consistent levels (stats.sign_flip_contrasts), so an interval
excludes 0 exactly when Holm rejects. They cover the centre of symmetry of the seeds' differences, a median-like
location (pseudo-median), not the mean of a skewed distribution (coverage on non-Gaussian data:
tests/test_stats_intervals.py). With 8 seeds the smallest two-sided p is 1/128, so Holm's first level α/5 = 0.01
can be reached and the 99% interval exists. Power (`detectable`): the smallest shift of the seeds' differences
that the test at Holm's first level α/m would reject, given their spread: the distance from their mean to an end
of their sign-flip interval at that level (the test is shift-equivariant).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import design, stats
from .design import Arm, arm_profile, arm_run_dir, study_sets
from .known_answers import readouts_passed
from .source_records import load_source_record
from .sources import GLASSES, HAIR, MAKEUP, SOURCE_STRATA, SOURCES, dominant_share, leave_one_out, shares
from ..training.config import Profile

SCALE = "fisher"
ALPHA = 0.05

CONTRASTS = {     # name -> (arm, arm or None, source); C5 reads Q − 2·Q^g of its one arm
    "C1 makeup loss: (c) − (a) on Q_MAKEUP": ("exclusive makeup", "independent", MAKEUP),
    "C2 hair band: bands − no bands on Q_HAIR": ("independent", "independent, no bands", HAIR),
    "C3 glasses band: bands − no bands on Q_GLASSES": ("independent", "independent, no bands", GLASSES),
    "C4 exclusivity: (a) − (b matched) on Q_HAIR": ("independent", "categorical, matched", HAIR),
    "C5 beyond the gradient: Q_HAIR − 2·Q^g_HAIR in (a)": ("independent", None, HAIR),
}
PAIRED = [name for name, (_, b, _) in CONTRASTS.items() if b is not None]      # C1–C4: also on Q^g and against J·g
PREDICTED = {"C4 exclusivity: (a) − (b matched) on Q_HAIR": +1}            # the write-up's hypothesis


@dataclass
class RunShares:
    """One run's shares at its last checkpoint, the mean over the pre-registered strata: Q (self parts), Q^g (J·g),
    the source parts' analogue (reported), and Q_HAIR with its dominant example left out (robustness)."""
    arm: str
    seed: int
    self: dict                 # source -> Q
    first_order: dict          # source -> Q^g
    source_part: dict          # source -> the same share of S_k (reported)
    hair_leave_one_out: float
    hair_dominant_share: float  # share of Σ_pairs M(J·D_HAIR) carried by its dominant example's pairs
    by_stratum: dict = field(default_factory=dict)   # stratum -> {"self": {...}, "first_order": {...}}


# which record's parts a RunShares reads: the primary (SGD) readout's, or Adam's (secondary, issue 20: "self" is
# D^A's share Q^A, "first_order" J·Pg's Q^Ag, "source_part" Adam's whole self bracket's, reported)
READOUTS = {"sources": {"self": "self", "first_order": "first_order", "source_part": "source"},
            "adam": {"self": "adam_self", "first_order": "adam_first_order", "source_part": "adam_full_self"}}


def run_shares(profile: Profile, run_dir, arm: Arm, seed: int, sets, scale: str = SCALE,
               kind: str = "sources") -> RunShares:
    """The run's RunShares on `scale` from its source record (kind "sources") or Adam source record ("adam"),
    verified under its key; `sets`: that seed's sets."""
    settings = arm_profile(profile, arm, seed)
    record = load_source_record(settings, arm_run_dir(run_dir, arm, seed), sets, kind)
    part = {k: f"{scale}|{v}" for k, v in READOUTS[kind].items()}
    by = {}
    for stratum in SOURCE_STRATA:
        r = record[stratum]
        by[stratum] = {"self": shares(r[part["self"]]), "first_order": shares(r[part["first_order"]]),
                       "source_part": shares(r[part["source_part"]]),
                       "hair_leave_one_out": leave_one_out(r[part["self"]], r["pairs"], HAIR),
                       "hair_dominant_share": dominant_share(r[part["self"]], r["pairs"], SOURCES.index(HAIR))}

    def mean(part):
        return {k: float(np.mean([by[s][part][k] for s in SOURCE_STRATA])) for k in by[SOURCE_STRATA[0]][part]}
    return RunShares(arm.name, seed, mean("self"), mean("first_order"), mean("source_part"),
                     float(np.mean([by[s]["hair_leave_one_out"] for s in SOURCE_STRATA])),
                     float(np.mean([by[s]["hair_dominant_share"] for s in SOURCE_STRATA])), by)


def study_shares(profile: Profile, run_dir, scale: str = SCALE, sets=None, kind: str = "sources"
                 ) -> dict[str, list[RunShares]]:
    """Arm name -> its runs' RunShares on `scale`, in seed order (`sets`: study_sets' first value, else drawn; kind as
    run_shares)."""
    sets = sets if sets is not None else study_sets(profile)[0]
    return {arm.name: [run_shares(profile, run_dir, arm, seed, sets[seed], scale, kind) for seed in arm.seeds]
            for arm in design.study_arms(profile)}


def values(runs: list[RunShares], source: str, what: str = "Q") -> np.ndarray:
    """[seeds] of Q ("Q"), Q^g ("Q^g"), Q − 2·Q^g ("C5"), Q with the dominant example left out ("Q, leave one
    out"; HAIR only) or the source parts' share ("S")."""
    pick = {"Q": lambda r: r.self[source], "Q^g": lambda r: r.first_order[source],
            "C5": lambda r: r.self[source] - 2 * r.first_order[source], "S": lambda r: r.source_part[source],
            "Q, leave one out": lambda r: r.hair_leave_one_out if source == HAIR else np.nan}[what]
    return np.array([pick(r) for r in runs], float)


def _paired(shares_by_arm: dict, a: str, b: str) -> None:
    seeds_a, seeds_b = [r.seed for r in shares_by_arm[a]], [r.seed for r in shares_by_arm[b]]
    if seeds_a != seeds_b:
        raise ValueError(f"Arms {a!r} and {b!r} have other seeds ({seeds_a} and {seeds_b}): a paired test needs the same.")


def family(shares_by_arm: dict, what: str = "Q", names=None) -> dict:
    """name -> (a, b) per seed for stats.sign_flip_contrasts: C1–C4 on `what` ("Q", "Q^g", "2Q^g",
    "Q, leave one out"), C5 on Q − 2·Q^g (only when what is "Q")."""
    out = {}
    for name in names or CONTRASTS:
        a, b, source = CONTRASTS[name]
        if b is None:
            if what == "Q":
                out[name] = (values(shares_by_arm[a], source, "C5"), None)
            continue
        _paired(shares_by_arm, a, b)
        scale, read = (2.0, "Q^g") if what == "2Q^g" else (1.0, what)
        out[name] = (scale * values(shares_by_arm[a], source, read), scale * values(shares_by_arm[b], source, read))
    return out


def _differences(fam: dict) -> dict:
    return {name: stats.seed_means(a) - (0 if b is None else stats.seed_means(b)) for name, (a, b) in fam.items()}


def contrast_tables(shares_by_arm: dict, alpha: float = ALPHA) -> dict:
    """The three pre-registered families: "Q" (C1–C5), "Q^g" (C1–C4) and "against J·g" (C1–C4: per seed, contrast
    on Q − 2·contrast on Q^g, stats.against_first_order); each row {mean, low, high, level, p, p_holm} and
    `detectable`, the smallest shift the test at Holm's first level α/m could detect with these seeds' spread."""
    on_q, on_g = family(shares_by_arm, "Q"), family(shares_by_arm, "Q^g")
    bracket, doubled = family(shares_by_arm, "Q", PAIRED), family(shares_by_arm, "2Q^g", PAIRED)
    tables = {"Q": stats.sign_flip_contrasts(on_q, 1 - alpha), "Q^g": stats.sign_flip_contrasts(on_g, 1 - alpha),
              "against J·g": stats.against_first_order(bracket, doubled, 1 - alpha)}
    against = {name: d - _differences(doubled)[name] for name, d in _differences(bracket).items()}
    for key, diffs in (("Q", _differences(on_q)), ("Q^g", _differences(on_g)), ("against J·g", against)):
        for name, d in diffs.items():
            tables[key][name]["detectable"] = stats.detectable_shift(d, 1 - alpha / len(diffs))
    return tables


def robustness_table(shares_by_arm: dict, alpha: float = ALPHA) -> dict:
    """C2 and C4 on Q_HAIR with each stratum's dominant example left out (reported; its own Holm family of two)."""
    names = [n for n in PAIRED if CONTRASTS[n][2] == HAIR]
    return stats.sign_flip_contrasts(family(shares_by_arm, "Q, leave one out", names), 1 - alpha)


def adam_contrast_tables(profile: Profile, run_dir, record: dict, sets=None, alpha: float = ALPHA) -> dict | None:
    """The registered contrasts recomputed on Adam's readout (secondary, issue 20): contrast_tables of the runs' Adam
    shares (Q^A, Q^Ag; the same pairing by seed and the same Holm families as the primary), or None when Q^A failed
    its dose control in `record` (known_answers.control_record): an unproven readout decides nothing."""
    if not readouts_passed(record)["Q^A"]:
        return None
    return contrast_tables(study_shares(profile, run_dir, SCALE, sets, kind="adam"), alpha)


def adam_whole_table(profile: Profile, run_dir, sets=None, alpha: float = ALPHA) -> dict:
    """C1–C4 on the share of Adam's whole self bracket (1−β1)·D^A + β1·M (reported, not decisive: its momentum part
    is linear in a loss-weight dose, so no single slope is known in advance), paired by seed, Holm over the four."""
    runs = study_shares(profile, run_dir, SCALE, sets, kind="adam")
    return stats.sign_flip_contrasts(family(runs, "S", PAIRED), 1 - alpha)


def adam_momentum_ratios(profile: Profile, run_dir, sets=None) -> dict:
    """{source: log10 of β1·|J·M| over (1−β1)·|J·D^A|}: per run and stratum the ratio of the two parts' medians over
    pairs (Fisher scale), then the median over every run and stratum. How much of Adam's self bracket Q^A reads."""
    sets = sets if sets is not None else study_sets(profile)[0]
    beta1 = profile.betas[0]
    logs = {k: [] for k in SOURCES}
    for arm in design.study_arms(profile):
        for seed in arm.seeds:
            record = load_source_record(arm_profile(profile, arm, seed), arm_run_dir(run_dir, arm, seed), sets[seed], "adam")
            for stratum in SOURCE_STRATA:
                r = record[stratum]
                with np.errstate(divide="ignore"):
                    ratio = np.log10(beta1 * np.median(r[f"{SCALE}|adam_momentum"], axis=0)) - np.log10(
                        (1 - beta1) * np.median(r[f"{SCALE}|adam_self"], axis=0))
                for k, value in zip(SOURCES, ratio):
                    logs[k].append(float(value))
    return {k: float(np.median(v)) for k, v in logs.items()}
