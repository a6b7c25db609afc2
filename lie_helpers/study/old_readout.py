"""The study's first readout, now only reported: each run's profile over the attributes, and its old contrasts.

A run's profile is its log10 magnitude of each attribute's change (the whole bracket pushed onto the batch) minus
the median attribute's, on the Fisher scale (analysis.currency), averaged over the example sets and strata at the
run's last checkpoint (design.record_steps). It FAILS the loss-weight dose (lie_helpers.study.known_answers;
DESIGN.md §6): reweighting one loss term raises the pushforward on every output through shared features, and the
relative share cancels it. So it decides nothing: notebook 04 shows it beside the primary readout
(lie_helpers.study.sources, .contrasts), with the contrasts the first version of the study registered on it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import design, example_sets, stats
from .design import GLASSES, Arm, arm_profile, arm_run_dir, record_steps, study_sets
from .records import first_order_path, read_record, record_key, record_path
from ..analysis.currency import CORRELATED_CONTROLS, HAIR_PAIR, attribute_magnitudes, attribute_mask, attribute_perturbations
from ..data.attributes import HAIR_COLOURS
from ..training.datasets import load_profile_split, prepare_data
from ..training.config import Profile
from ..training.losses import get_loss, gradient_share
from ..training.train import load_checkpoint

SCALE = "fisher"


@dataclass
class RunProfile:
    """One run's relative log10 magnitudes [40] (minus the median attribute) at its last checkpoint, averaged over
    example sets: per stratum of bracket examples and pooled over strata."""
    arm: str
    seed: int
    by_stratum: dict         # stratum -> [40]
    pooled: np.ndarray       # [40]
    first_order: np.ndarray   # the same for J·g of the same examples and batch, pooled


def _relative(log_magnitude: torch.Tensor) -> np.ndarray:
    m = log_magnitude.numpy()
    return m - np.median(m, axis=-1, keepdims=True)


def run_profile(profile: Profile, run_dir, arm: Arm, seed: int, sets, scale: str = SCALE) -> RunProfile:
    """The run's profile (RunProfile) on `scale` (currency.PERTURBATION_SCALES; Fisher is primary), from records
    that verify under the current key (`sets`: that seed's example sets, study_sets)."""
    arm_settings = arm_profile(profile, arm, seed)
    arm_dir = arm_run_dir(run_dir, arm, seed)
    per, first = {}, []
    for step in record_steps(arm_settings):
        key = record_key(arm_settings, arm_dir, step, sets)
        record, first_order = (read_record(arm_dir, path, key)
                               for path in (record_path(arm_dir, step), first_order_path(arm_dir, step)))
        for name, d_logits in record.items():
            if not name.endswith("|logit_perturbation"):
                continue
            number, stratum, _ = name.split("|")
            logits = record[f"{number}|batch_logits"][None]
            perturbation = attribute_perturbations(arm_settings.loss, d_logits, logits, scale)
            per.setdefault(stratum, []).append(_relative(attribute_magnitudes(perturbation[None])[0].log10()))
            jg = attribute_perturbations(arm_settings.loss, first_order[f"{number}|{stratum}|gradient_pushforward"],
                                         logits, scale)
            first.append(_relative(attribute_magnitudes(jg[None])[0].log10()))
    by_stratum = {k: np.mean(v, axis=0) for k, v in per.items()}
    return RunProfile(arm.name, seed, by_stratum, np.mean(list(by_stratum.values()), axis=0), np.mean(first, axis=0))


def study_profiles(profile: Profile, run_dir, scale: str = SCALE, sets=None) -> dict[str, list[RunProfile]]:
    """Arm name -> its runs' profiles on `scale`, in seed order (`sets`: study_sets' first value, else drawn)."""
    sets = sets if sets is not None else study_sets(profile)[0]
    return {arm.name: [run_profile(profile, run_dir, arm, seed, sets[seed], scale) for seed in arm.seeds]
            for arm in design.study_arms(profile)}


def attribute_means(profiles: list[RunProfile], names, stratum: str | None = None, first_order: bool = False) -> np.ndarray:
    """[seeds]: each run's mean relative magnitude over the attributes `names`."""
    mask = attribute_mask(names)
    rows = [p.first_order if first_order else (p.pooled if stratum is None else p.by_stratum[stratum])
            for p in profiles]
    return np.array([row[mask].mean() for row in rows])


OLD_CONTRASTS = {
    "old C1, makeup arm: (c) − (a) on Heavy_Makeup & Wearing_Lipstick":
        ("exclusive makeup", "independent", CORRELATED_CONTROLS),
    "old C2, bands on exclusive hair: bands − no bands on Black & Brown hair":
        ("independent", "independent, no bands", HAIR_PAIR),
    "old C3, bands on glasses: bands − no bands on Eyeglasses":
        ("independent", "independent, no bands", GLASSES),
    "old C4, exclusivity: (a) − (b matched) on Black & Brown hair":
        ("independent", "categorical, matched", HAIR_PAIR),
}


def _paired(profiles: dict, a: str, b: str) -> None:
    seeds_a, seeds_b = [p.seed for p in profiles[a]], [p.seed for p in profiles[b]]
    if seeds_a != seeds_b:
        raise ValueError(f"Arms {a!r} and {b!r} have other seeds ({seeds_a} and {seeds_b}): a paired test needs the same.")


def old_contrast_table(profiles: dict, first_order: bool = False) -> dict:
    """The first version's contrasts, named "old C1"–"old C4" so they are not read as the registered C1–C5 of
    lie_helpers.study.contrasts, on this readout (reported only), paired by seed: sign-flip tests, Holm
    over the four, intervals at Holm-consistent levels (stats.sign_flip_contrasts)."""
    family = {}
    for name, (a, b, names) in OLD_CONTRASTS.items():
        _paired(profiles, a, b)
        family[name] = (attribute_means(profiles[a], names, first_order=first_order),
                        attribute_means(profiles[b], names, first_order=first_order))
    return stats.sign_flip_contrasts(family)


def hair_gradient_shares(profile: Profile, run_dir, arm: Arm, sets, test) -> np.ndarray:
    """[seeds]: the hair outputs' share of the logit gradient (losses.gradient_share) on the runs' pushforward
    batches at the last checkpoint: how well (b)'s hair weight matches (a)'s in the regime the brackets see."""
    shares = []
    for seed in arm.seeds:
        arm_settings = arm_profile(profile, arm, seed)
        loss_fn = get_loss(arm_settings.loss)
        values = []
        arm_dir = arm_run_dir(run_dir, arm, seed)
        for step in record_steps(arm_settings):
            record = read_record(arm_dir, record_path(arm_dir, step), record_key(arm_settings, arm_dir, step, sets[seed]))
            for s in sets[seed]:
                targets = test.attributes[torch.as_tensor(s.pushforward)]
                values.append(gradient_share(loss_fn, record[f"{s.number}|batch_logits"], targets, HAIR_COLOURS))
        shares.append(np.mean(values))
    return np.array(shares)


def arm_posterior_fit(profile: Profile, run_dir, arm: Arm, seed: int) -> dict:
    """How close the run's last checkpoint comes to the bands' posterior 0.5 (example_sets.model_posterior_fit)."""
    arm_settings = arm_profile(profile, arm, seed)
    test = load_profile_split(arm_settings, "test", progress=False)
    model = load_checkpoint(arm_run_dir(run_dir, arm, seed), arm_settings.steps, arm_settings)
    return example_sets.model_posterior_fit(model, get_loss(arm_settings.loss), test, prepare_data(arm_settings, progress=False))
