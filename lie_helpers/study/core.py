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

The currency is the Fisher-normalised change of each attribute's probability (hypothesis.
attribute_perturbations, scale "fisher"), whatever outputs a loss uses. A run's profile over the 40
attributes is its log10 magnitude minus the median attribute's, averaged over late checkpoints and
example sets; the seed is the unit. The contrasts and their tests are fixed in CONTRASTS (below)
and in notebook 04 before any result.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import example_sets, stats
from .. import REPO_DIR
from ..data import storage
from ..data.storage import json_digest
from ..training import run_folder
from ..analysis.records import analyse_checkpoint, fixed_inputs
from ..data.attributes import ATTRIBUTES, HAIR_COLOURS
from ..training.config import Profile
from ..training.datasets import load_profile_split, prepare_data
from ..analysis.hypothesis import CORRELATED_CONTROLS, HAIR_PAIR, attribute_magnitudes, attribute_mask, attribute_perturbations
from ..analysis.baselines import gradient_pushforward
from ..training.losses import gradient_share, get_loss
from ..training.train import load_checkpoint, train

STUDY_VERSION = 1
SCALE = "fisher"
GLASSES = ("Eyeglasses",)
MANIPULATED = (*HAIR_PAIR, *GLASSES)          # the attributes whose labels the bands make ambiguous
BRACKET_STRATA = ("ambiguous black/brown", "faint glasses", "unambiguous black/brown", "other")
BATCH_SHARES = {"ambiguous black/brown": 10, "faint glasses": 8, "unambiguous black/brown": 8, "other": 6}


# ----------------------------------------------------------------------------- the arms

@dataclass(frozen=True)
class Arm:
    name: str
    loss: str
    band: float            # hair and glasses noise band of its data
    seeds: tuple
    width: float | None = None   # None: the profile's
    role: str = ""


def study_arms(P: Profile) -> list[Arm]:
    """The arms of the module docstring, with P.seeds (sensitivity and capacity arms with fewer)."""
    s, b = tuple(P.seeds), P.study_band
    return [
        Arm("independent", "independent", b, s, role="(a) the write-up's loss"),
        Arm("independent, no bands", "independent", 0.0, s, role="the dial at 0"),
        Arm("independent, bands / 3", "independent", round(b / 3, 4), s[:max(2, len(s) // 2)], role="the dial between"),
        Arm("categorical, matched", "categorical_hair_matched", b, s, role="(b) hair exclusive, matched weight"),
        Arm("exclusive makeup", "exclusive_makeup", b, s, role="(c) positive control"),
        Arm("categorical x4", "categorical_hair_x4", b, s[:2], role="sensitivity: hair weight 4"),
        *[Arm(f"independent, width {w}", "independent", b, s[:1], width=w, role="capacity")
          for w in (0.5, 1.0) if w != P.width],
    ]


def arm_profile(P: Profile, arm: Arm, seed: int) -> Profile:
    return dataclasses.replace(P, loss=arm.loss, seed=seed, hair_noise_band=arm.band, glasses_noise_band=arm.band,
                               width=arm.width or P.width, stages=())


def slug(arm: Arm) -> str:
    return "".join(c if c.isalnum() else "-" for c in arm.name.replace(", ", "_")).strip("-")


def run_dir(root, arm: Arm, seed: int) -> Path:
    return Path(root) / "study" / f"{slug(arm)}-seed{seed}"


def late_steps(P: Profile) -> list[int]:
    """The analysed checkpoints: those at or after half the run."""
    grid = sorted({*range(0, P.steps, P.checkpoint_every), P.steps})
    return [s for s in grid if s >= P.steps / 2]


# ----------------------------------------------------------------------------- examples

def study_sets(P: Profile) -> tuple[list, object]:
    """(example sets for each seed, the banded test split): strata from the study's banded data, so that
    every arm uses the same test images by file name (the unbanded data has the same files)."""
    banded = dataclasses.replace(P, hair_noise_band=P.study_band, glasses_noise_band=P.study_band)
    test = load_profile_split(banded, "test", progress=False)
    split_strata = example_sets.strata(test.attributes.numpy(), example_sets.split_truth(prepare_data(banded, progress=False),
                                                                                          test.filenames))
    scale = P.study_batch / sum(BATCH_SHARES.values())
    batch = {k: max(1, round(v * scale)) for k, v in BATCH_SHARES.items()}
    batch["other"] += P.study_batch - sum(batch.values())
    bracket = {k: P.study_examples for k in BRACKET_STRATA}
    sets = {seed: example_sets.draw_example_sets(split_strata, seed, P.study_sets, bracket=bracket, pushforward=batch)
            for seed in P.seeds}
    return sets, test


# ----------------------------------------------------------------------------- one run

def record_path(root: Path, step: int) -> Path:
    return root / "study_records" / f"{run_folder.step_name(step)}.safetensors"


def record_key(profile: Profile, root: Path, step: int, sets) -> str:
    """What a study record depends on: the run, the checkpoint's weights and the example sets."""
    weights = run_folder.checkpoint_entry(root, step)["sha256"]["weights"]
    return json_digest({"run": profile.hash(), "weights": weights, "version": STUDY_VERSION,
                        "sets": [(s.number, {k: v.tolist() for k, v in s.bracket.items()}, s.pushforward.tolist())
                                 for s in sets]}, 16)


def first_order_path(root: Path, step: int) -> Path:
    return root / "study_records" / f"{run_folder.step_name(step)}.first_order.safetensors"


def analyse_study_run(profile: Profile, root: Path, sets, test) -> None:
    """Store, at each late checkpoint, every set's and stratum's bracket pushforwards and, beside them, what one
    gradient step predicts for the same examples and batch (J·g, any loss), unless records made under the
    same key (run, checkpoint, examples) exist."""
    loss_fn = get_loss(profile.loss)
    for step in late_steps(profile):
        key = record_key(profile, root, step, sets)
        paths = {"brackets": record_path(root, step), "first_order": first_order_path(root, step)}
        todo = [k for k, path in paths.items() if not (path.exists() and storage.read_metadata(path).get("key") == key)]
        if not todo:
            continue
        model = load_checkpoint(root, step, profile)
        tensors = {"brackets": {}, "first_order": {}}
        for s in sets:
            for stratum, examples in s.bracket.items():
                inputs = fixed_inputs(dataclasses.replace(profile, bracket_examples=len(examples),
                                                          pushforward_batch=len(s.pushforward)),
                                      (test.images, test.attributes), example_indices=examples,
                                      batch_indices=s.pushforward)
                name = f"{s.number}|{stratum}"       # strata names hold "/"
                if "brackets" in todo:               # brackets only: no per-attribute baselines
                    record = analyse_checkpoint(model, loss_fn, *inputs)
                    tensors["brackets"][f"{name}|logit_perturbation"] = record["logit_perturbation"]
                    tensors["brackets"][f"{s.number}|batch_logits"] = record["batch_logits"]
                if "first_order" in todo:
                    tensors["first_order"][f"{name}|gradient_pushforward"] = \
                        gradient_pushforward(model, loss_fn, *inputs).per_example
        for part in todo:
            storage.atomic_save_tensors(paths[part], tensors[part], metadata={"key": key, "step": str(step)})


def study_runs(P: Profile, shard=(0, 1)) -> list[tuple[Arm, int]]:
    """Every (arm, seed) of the study, the widest (slowest) first, or shard (k, n)'s share: runs k, k + n, …"""
    runs = [(arm, seed) for arm in study_arms(P) for seed in arm.seeds]
    runs.sort(key=lambda run: -(run[0].width or P.width))     # stable: arm order within a width
    k, n = shard
    if not 0 <= k < n:
        raise ValueError(f"shard (k, n) needs 0 <= k < n, got {shard}.")
    return runs[k::n]


def train_and_analyse(P: Profile, root, *, shard=(0, 1), progress: bool = True) -> dict:
    """Train (or resume, or skip) and analyse every run of the study in `root`/study, or the runs k::n of
    shard (k, n) (two processes on two cores: `python -m lie_helpers.study --shard 0/2` and `1/2`).
    Returns seconds per run."""
    sets, test = study_sets(P)
    seconds = {}
    for arm, seed in tqdm(study_runs(P, shard), desc="study runs", disable=not progress):
        profile = arm_profile(P, arm, seed)
        root_k = run_dir(root, arm, seed)
        start = time.perf_counter()
        data = {split: load_profile_split(profile, split, progress=False) for split in ("train", "valid", "test")}
        if data["test"].filenames != test.filenames:
            raise ValueError(f"Arm {arm.name!r}: its test split has other images than the banded split; the study "
                             "compares arms on the same images.")
        train(profile, root_k, (data["train"].images, data["train"].attributes),
              (data["valid"].images, data["valid"].attributes), fingerprint=data["train"].fingerprint,
              progress=False)
        analyse_study_run(profile, root_k, sets[seed], data["test"])
        seconds[(arm.name, seed)] = time.perf_counter() - start
    return seconds


# ----------------------------------------------------------------------------- what a run shows

@dataclass
class RunProfile:
    """One run's relative log10 magnitudes [40] (minus the median attribute), averaged over late
    checkpoints and example sets: per stratum of bracket examples and pooled over strata."""
    arm: str
    seed: int
    by_stratum: dict         # stratum -> [40]
    pooled: np.ndarray       # [40]
    first_order: np.ndarray   # the same for J·g of the same examples and batch, pooled


def _relative(log_magnitude: torch.Tensor) -> np.ndarray:
    m = log_magnitude.numpy()
    return m - np.median(m, axis=-1, keepdims=True)


def run_profile(P: Profile, root, arm: Arm, seed: int, sets, scale: str = SCALE) -> RunProfile:
    """The run's profile (RunProfile) on `scale` (hypothesis.PERTURBATION_SCALES; Fisher is primary), from records
    that verify under the current key (`sets`: that seed's example sets, study_sets)."""
    profile = arm_profile(P, arm, seed)
    root_k = run_dir(root, arm, seed)
    per, first = {}, []
    for step in late_steps(profile):
        key = record_key(profile, root_k, step, sets)
        records = []
        for path in (record_path(root_k, step), first_order_path(root_k, step)):
            if not (path.exists() and storage.read_metadata(path).get("key") == key):
                raise ValueError(f"{path} is missing or was made for other examples or weights: run the study "
                                 "(`make study`, or study.train_and_analyse), which recomputes it.")
            records.append(storage.load_tensors(path))
        record, first_order = records
        for name, d_logits in record.items():
            if not name.endswith("|logit_perturbation"):
                continue
            number, stratum, _ = name.split("|")
            logits = record[f"{number}|batch_logits"][None]
            perturbation = attribute_perturbations(profile.loss, d_logits, logits, scale)
            per.setdefault(stratum, []).append(_relative(attribute_magnitudes(perturbation[None])[0].log10()))
            jg = attribute_perturbations(profile.loss, first_order[f"{number}|{stratum}|gradient_pushforward"],
                                         logits, scale)
            first.append(_relative(attribute_magnitudes(jg[None])[0].log10()))
    by_stratum = {k: np.mean(v, axis=0) for k, v in per.items()}
    return RunProfile(arm.name, seed, by_stratum, np.mean(list(by_stratum.values()), axis=0), np.mean(first, axis=0))


def study_profiles(P: Profile, root, scale: str = SCALE, sets=None) -> dict[str, list[RunProfile]]:
    """Arm name -> its runs' profiles on `scale`, in seed order (`sets`: study_sets' first value, else drawn)."""
    sets = sets if sets is not None else study_sets(P)[0]
    return {arm.name: [run_profile(P, root, arm, seed, sets[seed], scale) for seed in arm.seeds]
            for arm in study_arms(P)}


def mean_of(profiles: list[RunProfile], names, stratum: str | None = None, first_order: bool = False) -> np.ndarray:
    """[seeds]: each run's mean relative magnitude over the attributes `names`."""
    mask = attribute_mask(names)
    rows = [p.first_order if first_order else (p.pooled if stratum is None else p.by_stratum[stratum])
            for p in profiles]
    return np.array([row[mask].mean() for row in rows])


# ----------------------------------------------------------------------------- the pre-registered contrasts

CONTRASTS = {
    "C1 positive control: (c) − (a) on Heavy_Makeup & Wearing_Lipstick":
        ("exclusive makeup", "independent", CORRELATED_CONTROLS),
    "C2 ambiguity, exclusive: bands − no bands on Black & Brown hair":
        ("independent", "independent, no bands", HAIR_PAIR),
    "C3 ambiguity, not exclusive: bands − no bands on Eyeglasses":
        ("independent", "independent, no bands", GLASSES),
    "C4 exclusivity: (a) − (b matched) on Black & Brown hair":
        ("independent", "categorical, matched", HAIR_PAIR),
}
DETECTION = "C5 brackets − J·g: detection AUROC of the manipulated attributes within (a)"


def eligible_attributes(attributes: torch.Tensor, low: float = 0.01) -> np.ndarray:
    """Attributes whose test-split prevalence is in [low, 1 − low]: an output that is never (or always) on has
    no signal to rank, so it is left out of every AUROC (fixed before the results)."""
    prevalence = attributes.double().mean(0).numpy()
    return (prevalence >= low) & (prevalence <= 1 - low)


def detection_aurocs(profiles: list[RunProfile], eligible: np.ndarray, first_order: bool = False) -> np.ndarray:
    """[seeds]: AUROC of each run's relative magnitude for the manipulated attributes among the eligible ones."""
    positive = attribute_mask(MANIPULATED)
    rows = np.stack([p.first_order if first_order else p.pooled for p in profiles])
    return stats.auroc(rows[:, eligible], positive[eligible])


def _paired(profiles: dict, a: str, b: str) -> None:
    seeds_a, seeds_b = [p.seed for p in profiles[a]], [p.seed for p in profiles[b]]
    if seeds_a != seeds_b:
        raise ValueError(f"Arms {a!r} and {b!r} have other seeds ({seeds_a} and {seeds_b}): a paired test needs the same.")


def contrast_table(profiles: dict, eligible: np.ndarray, first_order: bool = False) -> dict:
    """The family C1–C5, paired by seed: mean, 95% t interval, exact sign-flip p and Holm-adjusted p.
    first_order: C1–C4 on J·g of the same examples instead of brackets (C5 compares the two already)."""
    missing = [a for a in MANIPULATED if not eligible[ATTRIBUTES.index(a)]]
    if missing:
        raise ValueError(f"The manipulated attribute(s) {missing} are not eligible (prevalence outside [1%, 99%]): "
                         "the detection AUROC would silently leave them out.")
    family = {}
    for name, (a, b, names) in CONTRASTS.items():
        _paired(profiles, a, b)
        family[name] = (mean_of(profiles[a], names, first_order=first_order),
                        mean_of(profiles[b], names, first_order=first_order))
    family[DETECTION] = (detection_aurocs(profiles["independent"], eligible),
                         detection_aurocs(profiles["independent"], eligible, first_order=True))
    return stats.contrasts(family)


def hair_gradient_shares(P: Profile, root, arm: Arm, sets, test) -> np.ndarray:
    """[seeds]: the hair outputs' share of the logit gradient (losses.gradient_share) on the runs' pushforward
    batches at the late checkpoints: how well (b)'s hair weight matches (a)'s in the regime the brackets see."""
    shares = []
    for seed in arm.seeds:
        profile = arm_profile(P, arm, seed)
        loss_fn = get_loss(profile.loss)
        values = []
        for step in late_steps(profile):
            record = storage.load_tensors(record_path(run_dir(root, arm, seed), step))
            for s in sets[seed]:
                targets = test.attributes[torch.as_tensor(s.pushforward)]
                values.append(gradient_share(loss_fn, record[f"{s.number}|batch_logits"], targets, HAIR_COLOURS))
        shares.append(np.mean(values))
    return np.array(shares)


def detection_null(profiles: list[RunProfile], eligible: np.ndarray, first_order: bool = False) -> dict:
    """The seeds' mean profile's detection AUROC against its permutation null over the eligible attributes."""
    rows = np.stack([p.first_order if first_order else p.pooled for p in profiles]).mean(0)
    return stats.auroc_null(rows[eligible], attribute_mask(MANIPULATED)[eligible])


def posterior_fit(P: Profile, root, arm: Arm, seed: int) -> dict:
    """How close the run's last checkpoint comes to the bands' posterior 0.5 (example_sets.model_posterior_fit)."""
    profile = arm_profile(P, arm, seed)
    test = load_profile_split(profile, "test", progress=False)
    model = load_checkpoint(run_dir(root, arm, seed), profile.steps, profile)
    return example_sets.model_posterior_fit(model, get_loss(profile.loss), test, prepare_data(profile, progress=False))


# ----------------------------------------------------------------------------- the verdict

def _significant(row, alpha: float = 0.05) -> int:
    """+1 / −1 when the Holm-adjusted test rejects 0 in that direction, else 0."""
    return int(np.sign(row["mean"])) if row["p_holm"] < alpha else 0


def _numbers(row) -> str:
    return f"{row['mean']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}], Holm p {row['p_holm']:.3f}"


def _first_order_clause(bracket_row, first_row) -> str:
    """Whether J·g of the same examples shows the same: then the finding is not one of brackets."""
    same = _significant(first_row)
    if same and same == _significant(bracket_row):
        return f"; J·g of the same examples shows it too ({_numbers(first_row)}): a first-order effect, not one of brackets"
    if _significant(bracket_row):
        return f"; J·g of the same examples does not ({_numbers(first_row)})"
    return f"; J·g: {_numbers(first_row)}"


def verdict(table: dict, first_order: dict, n_seeds: int, posterior: dict | None = None,
            sensitivity: dict | None = None) -> list[str]:
    """Sentences generated from the contrasts (contrast_table, on brackets and on J·g): what the study supports
    and what it does not. posterior: {"hair": arm (a)'s per-seed mean p(black) on the hair band, "glasses": …};
    sensitivity: the same contrast table on another currency (log-odds), whose disagreements are named."""
    names = list(CONTRASTS)
    c1, c2, c3, c4 = (table[n] for n in names)
    f1, f2, f3, f4 = (first_order[n] for n in names)
    c5 = table[DETECTION]
    power = f"at this power ({n_seeds} seeds, Holm over five contrasts)"
    lines = []
    if posterior is not None:
        for band, values in posterior.items():
            values = np.asarray(values, float)
            mean, off = float(values.mean()), float(np.abs(values - 0.5).mean())
            numbers = f"mean prediction {mean:.2f}, single runs {off:.2f} from 0.5 on average"
            if off <= 0.15:
                lines.append(f"On the {band} band the model reaches the posterior 0.5 ({numbers}).")
            elif abs(mean - 0.5) <= 0.15:
                lines.append(f"On the {band} band the model reaches the posterior 0.5 only on average over seeds "
                             f"({numbers}: each run leans one way), so the band tests less than it is meant to.")
            else:
                lines.append(f"On the {band} band the model does not reach the posterior 0.5 ({numbers}), so the "
                             "band tests less than it is meant to.")
    if _significant(c1) > 0:
        lines.append(f"Brackets flag the mis-specified loss: (c) raises the makeup and lipstick outputs' share "
                     f"({_numbers(c1)}, log10){_first_order_clause(c1, f1)}.")
    else:
        lines.append(f"Brackets do not flag the mis-specified positive control (c) {power} ({_numbers(c1)}, log10)"
                     f"{_first_order_clause(c1, f1)}. A diagnostic that does not light up for a loss built not to "
                     "fit the data cannot carry the write-up's reading, and a null result below says little.")
    for row, first, what in ((c2, f2, "the hair band raises the Black & Brown hair share"),
                             (c3, f3, "the faint-glasses band raises the Eyeglasses share")):
        sign = _significant(row)
        told = (what if sign > 0 else what.replace("raises", "lowers") if sign < 0
                else f"no detectable change {power} where {what.split(' raises')[0]} would raise the share")
        lines.append(f"Ambiguity: {told} ({_numbers(row)}){_first_order_clause(row, first)}.")
    lines.append("The two bands differ in dose (the hair band takes a fraction of black/brown faces, the glasses band "
                 "of all faces), so the two ambiguity contrasts are read each on its own, not against each other.")
    exclusivity = {1: "The exclusivity-aware loss (b, weight matched) lowers the hair pair's share, as the write-up's "
                      "hypothesis predicts",
                   0: f"The exclusivity-aware loss (b, weight matched) changes the hair pair's share by no detectable "
                      f"amount {power}: no support for the write-up's hypothesis from this test",
                   -1: "The exclusivity-aware loss (b, weight matched) raises the hair pair's share: against the "
                       "write-up's hypothesis"}
    lines.append(f"{exclusivity[_significant(c4)]} ({_numbers(c4)}){_first_order_clause(c4, f4)}.")
    if c5["low"] == c5["high"]:
        lines.append("Brackets and J·g detect the manipulated attributes equally in every seed (the AUROC difference "
                     "is the same everywhere): the comparison is at its ceiling or floor and decides nothing.")
    else:
        detection = {1: "Brackets detect the manipulated attributes better than J·g",
                     0: f"Brackets detect the manipulated attributes no better than J·g, {power}",
                     -1: "J·g detects the manipulated attributes better than brackets do"}
        lines.append(f"{detection[_significant(c5)]} (AUROC difference {_numbers(c5)}).")
    if sensitivity is not None:
        disagree = [n.split(" ")[0] for n in table if _significant(sensitivity[n]) != _significant(table[n])]
        lines.append("On the log-odds scale every contrast reads the same." if not disagree else
                     f"On the log-odds scale {', '.join(disagree)} read differently (" +
                     "; ".join(f"{n}: {_numbers(sensitivity[m])}" for n, m in
                               ((m.split(' ')[0], m) for m in table if m.split(' ')[0] in disagree)) +
                     "): those conclusions depend on the currency, and the Fisher scale's are the pre-registered ones.")
    lines.append(f"Each test is an exact sign-flip test over {n_seeds} seeds, Holm-corrected over the five contrasts; "
                 "the intervals are 95% t intervals over seeds (their coverage is tested in tests/test_stats.py).")
    return lines


# ----------------------------------------------------------------------------- figures

KEY_ATTRIBUTES = (*HAIR_PAIR, *GLASSES, *CORRELATED_CONTROLS, "Blond_Hair", "Gray_Hair", "Male", "Attractive")
MAIN_ARMS = ("independent", "independent, no bands", "categorical, matched", "exclusive makeup", "categorical x4")


def plot_arm_profiles(profiles: dict, arms=MAIN_ARMS, attributes=KEY_ATTRIBUTES):
    """Each arm's relative log10 magnitude of the key attributes: a dot per seed, a bar for the mean."""
    import matplotlib.pyplot as plt
    arms = [a for a in arms if a in profiles]
    fig, ax = plt.subplots(figsize=(12, 4.4))
    width = 0.8 / len(arms)
    for k, arm in enumerate(arms):
        values = np.array([[p.pooled[ATTRIBUTES.index(a)] for a in attributes] for p in profiles[arm]])
        x = np.arange(len(attributes)) + (k - (len(arms) - 1) / 2) * width
        ax.bar(x, values.mean(0), width * 0.9, color=f"C{k}", alpha=0.45, label=f"{arm} ({len(values)} seeds)")
        for row in values:
            ax.plot(x, row, "o", color=f"C{k}", ms=3)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(range(len(attributes)), attributes, rotation=20, ha="right")
    ax.set_ylabel("log10 magnitude − median attribute's\n(Fisher units; late checkpoints, all strata)")
    ax.legend(fontsize=8, ncol=3, loc="upper right")
    fig.tight_layout()
    return fig


def plot_contrasts(table: dict, first_order: dict | None = None):
    """The pre-registered contrasts: mean and 95% t interval over seeds, Holm p beside each (red: < 0.05);
    hollow, below: the same contrast on J·g of the same examples. C1–C4 are log10 differences; C5 a
    difference of AUROCs, on its own axis (reference 0 for both)."""
    import matplotlib.pyplot as plt
    names = list(table)
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 1.4]})
    for ax, rows in ((ax_l, names[:-1]), (ax_a, names[-1:])):
        for y, name in enumerate(rows):
            sources = [(table, 0.0, "o", "brackets")]
            if first_order is not None and name in CONTRASTS:
                sources.append((first_order, 0.25, "s", "J·g"))
            for source, dy, marker, label in sources:
                r = source[name]
                colour = "C3" if r["p_holm"] < 0.05 else "0.3"
                ax.errorbar(r["mean"], y + dy, xerr=[[r["mean"] - r["low"]], [r["high"] - r["mean"]]], fmt=marker,
                            capsize=3, color=colour, mfc="none" if label == "J·g" else colour,
                            label=label if y == 0 and ax is ax_l else None)
                ax.annotate(f"Holm p {r['p_holm']:.3f}", (r["high"], y + dy), xytext=(6, 0), textcoords="offset points",
                            va="center", fontsize=7)
        ax.axvline(0, color="0.3", lw=0.8)
        labels = [n.split(": ", 1)[1] for n in rows]
        ax.set_yticks(range(len(rows)), [t.replace(" of the manipulated attributes within (a)", "\n(manipulated, in (a))")
                                         for t in labels], fontsize=8)
        low, high = ax.get_xlim()
        ax.set_xlim(low, high + 0.35 * (high - low))      # room for the Holm p labels
        ax.set_ylim(len(rows) - 0.5, -0.5)
    ax_l.set_title("C1–C4 (log10 ratio of relative magnitudes)", fontsize=10)
    ax_a.set_title("C5 (difference of AUROCs)", fontsize=10)
    ax_l.set_xlabel("mean over seeds, 95% t interval (red: Holm p < 0.05)")
    ax_a.set_xlabel("brackets − J·g")
    if first_order is not None:
        ax_l.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_dial(P: Profile, profiles: dict):
    """The dial: hair pair and Eyeglasses relative magnitude against the band fraction (independent loss)."""
    import matplotlib.pyplot as plt
    arms = {a.name: a for a in study_arms(P)}
    dial = [n for n in ("independent, no bands", "independent, bands / 3", "independent") if n in profiles]
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, (label, names) in enumerate((("Black & Brown hair", HAIR_PAIR), ("Eyeglasses", GLASSES),
                                        ("makeup & lipstick (not banded)", CORRELATED_CONTROLS))):
        xs = [arms[n].band for n in dial]
        values = [mean_of(profiles[n], names) for n in dial]
        ax.plot(xs, [v.mean() for v in values], "o-", color=f"C{k}", label=label)
        for x, v in zip(xs, values):
            ax.plot(np.full(len(v), x), v, ".", color=f"C{k}", alpha=0.5)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set(xlabel="noise band: fraction of faces at posterior 0.5", ylabel="log10 magnitude − median attribute's",
           title="The dial (independent loss; dots: seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- command line

def main(argv=None) -> int:
    import argparse
    from ..training.config import get_profile, run_paths

    parser = argparse.ArgumentParser(prog="python -m lie_helpers.study",
                                     description="Train and analyse the study's runs (notebook 04 reads them).")
    parser.add_argument("--profile", default="study")
    parser.add_argument("--shard", default="0/1", metavar="K/N", help="run the runs K, K+N, … (one process a core)")
    args = parser.parse_args(argv)
    try:
        k, n = (int(x) for x in args.shard.split("/"))
    except ValueError:
        raise SystemExit(f"--shard must be K/N, e.g. 0/2; got {args.shard!r}.") from None
    os.chdir(REPO_DIR / "notebooks")      # where notebook 04 runs: the profile's paths (../data, ../runs) agree
    P = get_profile(args.profile)
    seconds = train_and_analyse(P, run_paths(P).root, shard=(k, n))
    for (arm, seed), t in seconds.items():
        print(f"{arm:<28} seed {seed}: {t:6.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
