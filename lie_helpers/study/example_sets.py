"""Stratified bracket examples and pushforward batches, and how close a model gets to the true posterior.

The first N test images hold few ambiguous faces (issue 11: one of six bracket examples, 3 of 32
pushforward images), so a contrast between strata has little power. Here a test split is cut into
strata by the generated data's true posteriors (lie_helpers.data.generated_model.true_posteriors):

    ambiguous black/brown     black or brown label whose own posterior is in (0.2, 0.8) (hair band included)
    unambiguous black/brown   black or brown label whose own posterior is >= 0.8
    faint glasses             P(Eyeglasses) in (0.2, 0.8): the glasses band (ambiguous, not exclusive)
    other                     neither black nor brown, no faint glasses

Strata are disjoint: a black/brown face with faint glasses is in none, as is one whose own label's
posterior is <= 0.2 (it looks like the other colour). :func:`draw_example_sets` draws, per seed,
several sets, deterministic from the seed: each holds bracket examples of each stratum, kept apart
(6 examples: 15 pairs per stratum, against 153 for 18 mixed ones), and one pushforward batch shared by
them, which never holds a bracket example. Pass one stratum's examples and the batch to
lie_helpers.analysis.fixed_inputs (example_indices=s.bracket[stratum], batch_indices=s.pushforward). :func:`posterior_fit` says whether a trained model reaches the
posterior: its mean prediction on the bands (true value 0.5) and its calibration against every
image's recorded posterior.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.attributes import ATTRIBUTES
from ..data.generated_celeba import read_ground_truth, read_true_posteriors
from ..analysis.currency import attribute_log_odds
from ..training.config import Profile, data_dir
from ..training.train import EVAL_BATCH, prepare_inputs

AMBIGUOUS = (0.2, 0.8)        # an own-label posterior strictly inside is ambiguous
STRATA = ("ambiguous black/brown", "unambiguous black/brown", "faint glasses", "other")
BRACKET = {"ambiguous black/brown": 6, "unambiguous black/brown": 6, "other": 6}
PUSHFORWARD = {"ambiguous black/brown": 12, "unambiguous black/brown": 12, "other": 8}
_IDX = {a: i for i, a in enumerate(ATTRIBUTES)}


@dataclass(frozen=True)
class SplitTruth:
    """The true posteriors of one split's images (aligned with its file names) and who is in a band."""
    posteriors: dict          # "Black_Hair", "Brown_Hair", "Eyeglasses" -> float array [N]
    in_hair_band: np.ndarray  # bool [N]
    in_glasses_band: np.ndarray


def split_truth(data_root, filenames) -> SplitTruth:
    """The generated data's ground truth (in `data_root`/celeba/) for the images `filenames` of a split."""
    names, posteriors = read_true_posteriors(data_root)
    position = {name: i for i, name in enumerate(names)}
    missing = [f for f in filenames if f not in position]
    if missing:
        raise ValueError(f"{len(missing)} file(s) of the split, e.g. {missing[:3]}, are not in the ground truth of "
                         f"{data_root}: pass the data folder the split was loaded from.")
    at = np.array([position[f] for f in filenames], dtype=np.int64)
    bands = read_ground_truth(data_root).get("noise_bands", {})
    wanted = set(filenames)
    masks = [np.isin(list(filenames), [n for n in bands[k]["images"] if n in wanted]) if k in bands
             else np.zeros(len(filenames), bool) for k in ("hair", "glasses")]
    return SplitTruth({k: v[at] for k, v in posteriors.items()}, *masks)


def strata(attributes, truth: SplitTruth) -> dict[str, np.ndarray]:
    """Indices (into the split) of each stratum of :data:`STRATA` (module docstring); `attributes` [N, 40] in {0, 1}."""
    a = np.asarray(attributes)
    black, brown = a[:, _IDX["Black_Hair"]] == 1, a[:, _IDX["Brown_Hair"]] == 1
    own = np.where(black, truth.posteriors["Black_Hair"], truth.posteriors["Brown_Hair"])
    low, high = AMBIGUOUS
    glasses = (truth.posteriors["Eyeglasses"] > low) & (truth.posteriors["Eyeglasses"] < high)
    black_or_brown = (black | brown) & ~glasses
    members = {
        "ambiguous black/brown": black_or_brown & (own > low) & (own < high),
        "unambiguous black/brown": black_or_brown & (own >= high),
        "faint glasses": glasses & ~(black | brown),
        "other": ~(black | brown) & ~glasses,
    }
    return {name: np.flatnonzero(members[name]) for name in STRATA}


@dataclass(frozen=True)
class ExampleSet:
    """One draw (indices into the test split): each stratum's bracket examples, and the pushforward batch."""
    seed: int
    number: int
    bracket: dict             # stratum -> indices [n]
    pushforward: np.ndarray
    pushforward_strata: tuple


def draw_example_sets(split_strata: dict, seed: int, n_sets: int = 4, bracket: dict = BRACKET,
                      pushforward: dict = PUSHFORWARD) -> list[ExampleSet]:
    """`n_sets` sets of `bracket[s]` examples and `pushforward[s]` batch images from each stratum s.

    Deterministic from (`seed`, set number); sets are drawn independently of each other, and within a
    set the batch and the examples are disjoint (sorted within each stratum). Raises ValueError naming
    a stratum with too few images.
    """
    if n_sets < 1:
        raise ValueError(f"n_sets must be at least 1, got {n_sets}.")
    unknown = sorted((set(bracket) | set(pushforward)) - set(split_strata))
    if unknown:
        raise ValueError(f"Unknown stratum/strata {unknown}; choose from {', '.join(split_strata)}.")
    for name in set(bracket) | set(pushforward):
        need, have = bracket.get(name, 0) + pushforward.get(name, 0), len(split_strata[name])
        if have < need:
            raise ValueError(
                f"Stratum {name!r} has {have} image(s) in the test split; a set needs {need} ({bracket.get(name, 0)} "
                f"bracket examples + {pushforward.get(name, 0)} pushforward images). Generate more images "
                "(generated_images) or widen the band (hair_noise_band for black/brown, glasses_noise_band for "
                "faint glasses), or ask for fewer.")
    sets = []
    for number in range(n_sets):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), number, 0x5E7]))
        examples, batch = {}, []
        for name in split_strata:                       # the strata's order, whatever the dicts' order
            nb, npf = bracket.get(name, 0), pushforward.get(name, 0)
            chosen = rng.choice(split_strata[name], nb + npf, replace=False)
            if nb:
                examples[name] = np.sort(chosen[:nb]).astype(np.int64)
            batch += [(name, i) for i in np.sort(chosen[nb:])]
        sets.append(ExampleSet(int(seed), number, examples, np.array([i for _, i in batch], dtype=np.int64),
                               tuple(name for name, _ in batch)))
    return sets


# ----------------------------------------------------------------------------- does the model reach the posterior?

def predicted_probabilities(model, loss_fn, images) -> np.ndarray:
    """P(attribute) [N, 40] in CelebA's order from a trained model (eval mode) on uint8 images [N, 3, S, S]:
    the sigmoid of each attribute's log-odds (currency.attribute_log_odds), for any loss's outputs."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(prepare_inputs(images[i:i + EVAL_BATCH], param.device, param.dtype)).cpu()
                            for i in range(0, len(images), EVAL_BATCH)])
    model.train(was_training)
    return torch.sigmoid(attribute_log_odds(loss_fn.name, logits)).numpy()


def posterior_fit(probabilities, attributes, truth: SplitTruth, bins: int = 5) -> dict:
    """How close predicted probabilities [N, 40] come to the true posteriors, per attribute.

    Black_Hair over black- and brown-labelled faces, Eyeglasses over all: ``band`` (n, mean predicted,
    its standard error, and the gap to the true 0.5), ``mean_abs_error`` |p̂ − p| against every image's
    posterior, and ``calibration``: per bin of the true posterior, its count, mean true and mean predicted.
    """
    p = np.asarray(probabilities, dtype=float)
    a = np.asarray(attributes)
    black_or_brown = (a[:, _IDX["Black_Hair"]] == 1) | (a[:, _IDX["Brown_Hair"]] == 1)
    report = {}
    for name, rows, band in (("Black_Hair", black_or_brown, truth.in_hair_band),
                             ("Eyeglasses", np.ones(len(a), bool), truth.in_glasses_band)):
        predicted, true = p[rows, _IDX[name]], truth.posteriors[name][rows]
        in_band = p[band, _IDX[name]]
        edges = np.linspace(0, 1, bins + 1)
        which = np.clip(np.digitize(true, edges[1:-1]), 0, bins - 1)
        report[name] = {
            "band": {"n": int(band.sum()), "posterior": 0.5,
                     "mean_predicted": float(in_band.mean()) if band.any() else float("nan"),
                     "standard_error": float(in_band.std(ddof=1) / np.sqrt(len(in_band))) if band.sum() > 1 else float("nan"),
                     "gap": float(in_band.mean() - 0.5) if band.any() else float("nan")},
            "n": int(rows.sum()),
            "mean_abs_error": float(np.abs(predicted - true).mean()) if rows.any() else float("nan"),
            "calibration": [{"bin": [float(edges[k]), float(edges[k + 1])], "n": int((which == k).sum()),
                             "mean_posterior": float(true[which == k].mean()),
                             "mean_predicted": float(predicted[which == k].mean())}
                            for k in range(bins) if (which == k).any()],
        }
    return report


def model_posterior_fit(model, loss_fn, split, data_root, bins: int = 5) -> dict:
    """:func:`posterior_fit` of a trained model on a split (lie_helpers.celeba.SplitTensors) of the generated
    data in `data_root`: does it reach the posterior 0.5 on the bands, and is it calibrated elsewhere?"""
    probabilities = predicted_probabilities(model, loss_fn, split.images)
    return posterior_fit(probabilities, split.attributes.numpy(), split_truth(data_root, split.filenames), bins)


# ----------------------------------------------------------------------------- ground truth

def ambiguous_filenames(profile: Profile) -> set[str]:
    """Black- or brown-labelled images whose hair shade makes their own label uncertain (generated data
    only; real CelebA has no such list, so the set is empty)."""
    if profile.data_source != "generated":
        return set()
    return {name for pair in read_ground_truth(data_dir(profile))["ambiguous_pairs"] for name in pair["ambiguous_images"]}
