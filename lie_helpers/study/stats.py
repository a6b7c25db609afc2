"""Statistics over seeds for the study of notebook 04: the seed is the unit.

Every function takes values [seeds] or [seeds, checkpoints]; checkpoints of one run are
repeated measurements of it, so they are averaged within the run first (`seed_means`).

* `sign_flip_test`: paired sign-flip permutation test of a mean difference (scipy), exact
  over all 2^seeds sign patterns up to `EXACT_SEEDS` seeds;
* `holm`: Holm's step-down adjustment of a family of p-values;
* `t_interval`: Student-t interval of the mean over seeds, the interval whose coverage
  `interval_coverage` checks (the bootstrap covers too little with a handful of seeds);
* `bootstrap_interval`: scipy's BCa bootstrap over seeds, percentile where BCa is undefined;
* `auroc`, `auroc_null`: a detection AUROC and its permutation null over which attributes are positive;
* `contrasts`: a family of pre-registered paired contrasts: mean, t interval, sign-flip p, Holm p.
"""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import scipy.stats

EXACT_SEEDS = 12            # 2^12 = 4096 sign patterns: enumerate them all up to here
INTERVALS = ("t", "bca", "percentile")


def seed_means(values) -> np.ndarray:
    """[seeds] or [seeds, checkpoints] -> [seeds]: each run's checkpoints averaged."""
    values = np.asarray(values, float)
    if values.ndim not in (1, 2) or values.shape[0] < 2:
        raise ValueError(f"values must be [seeds] or [seeds, checkpoints] with at least 2 seeds, got shape "
                         f"{values.shape}.")
    if not np.isfinite(values).all():
        raise ValueError("values hold nan or inf: drop or fix those runs first.")
    return values.mean(axis=1) if values.ndim == 2 else values


def sign_flip_test(a, b=None, *, alternative: str = "two-sided", n_resamples: int = 9999, seed: int = 0) -> float:
    """p-value of mean(a − b) = 0 (of mean(a) = 0 without b) against `alternative`, pairing a and b by seed.

    Under the null each seed's difference is as likely to have either sign; scipy's permutation
    test with permutation_type='samples' on one sample flips the signs. Exact (all 2^seeds
    patterns) up to EXACT_SEEDS seeds, else `n_resamples` random patterns.
    """
    d = seed_means(a) - (0 if b is None else seed_means(b))
    exact = len(d) <= EXACT_SEEDS
    result = scipy.stats.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                                          alternative=alternative, n_resamples=np.inf if exact else n_resamples,
                                          rng=np.random.default_rng(seed))
    return float(result.pvalue)


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values, in the input order: reject H_i at level α when adjusted p_i ≤ α (family-wise error ≤ α)."""
    p = np.asarray(p_values, float)
    order = np.argsort(p)
    steps = (len(p) - np.arange(len(p))) * p[order]                  # (m − i) p_(i), i = 0 … m − 1
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1, np.maximum.accumulate(steps))
    return adjusted


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the mean over seeds, Student t with seeds − 1 degrees of freedom."""
    x = seed_means(values)
    low, high = scipy.stats.ttest_1samp(x, 0).confidence_interval(level)
    return float(x.mean()), float(low), float(high)


def bootstrap_interval(values, level: float = 0.95, n_resamples: int = 9999, seed: int = 0,
                       method: str = "bca") -> tuple[float, float, float, str]:
    """(mean, low, high, method used) of the mean over seeds by scipy's bootstrap (resampling seeds).

    BCa where it is defined; when it is not (all seeds equal, or a degenerate jackknife) the
    percentile interval, and the fourth entry says so. With 6 seeds both cover less than they state
    (see interval_coverage): use t_interval for the verdict, this one as a check.
    """
    x = seed_means(values)
    if method not in ("bca", "percentile"):
        raise ValueError(f"method must be 'bca' or 'percentile', got {method!r}.")
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0]), float(x[0]), "constant"
    for used in dict.fromkeys([method, "percentile"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
            ci = scipy.stats.bootstrap((x,), np.mean, confidence_level=level, n_resamples=n_resamples,
                                       method="BCa" if used == "bca" else "percentile",
                                       rng=np.random.default_rng(seed)).confidence_interval
        if np.isfinite([ci.low, ci.high]).all():
            return float(x.mean()), float(ci.low), float(ci.high), used
    raise RuntimeError(f"the bootstrap gave no finite interval for {x}.")


def interval_coverage(method: str, sample, true_mean: float, n_simulations: int = 2000, level: float = 0.95,
                      seed: int = 0, **kwargs) -> float:
    """Fraction of `n_simulations` studies whose interval (INTERVALS) contains `true_mean`.

    sample(rng) draws one study's values, [seeds] or [seeds, checkpoints]; kwargs go to the
    interval function (e.g. n_resamples for the bootstrap).
    """
    if method not in INTERVALS:
        raise ValueError(f"method must be one of {INTERVALS}, got {method!r}.")
    rng = np.random.default_rng(seed)
    hits = 0
    for k in range(n_simulations):
        values = sample(rng)
        if method == "t":
            _, low, high = t_interval(values, level)
        else:
            _, low, high, _ = bootstrap_interval(values, level, seed=k, method=method, **kwargs)
        hits += low <= true_mean <= high
    return hits / n_simulations


def auroc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of `scores` [..., attributes] for the `positive` attributes (boolean mask) against
    the rest, ties counting ½: the probability that a positive attribute outranks a negative one."""
    pos, neg = scores[..., positive, None], scores[..., None, ~positive]
    return ((pos > neg) + 0.5 * (pos == neg)).mean(axis=(-1, -2))


def auroc_null(scores, positive, eligible=None, n_resamples: int = 9999, seed: int = 0,
               max_exact: int = 20_000) -> dict:
    """A detection AUROC and its permutation null: which attributes are positive is shuffled.

    scores: [attributes], [seeds, attributes] or [seeds, checkpoints, attributes]; the statistic is
    the AUROC (ties count ½) of the `positive` attributes (boolean mask) against all others,
    averaged over checkpoints, then seeds. The null draws as many positives among the `eligible`
    attributes (default: all), the same draw for every seed; every draw when there are at most
    `max_exact`, else `n_resamples` random ones.

    Over all attributes the null mean is exactly ½ (the two orders of any pair add up to 1), ties
    or not. When only some attributes could have been positives, e.g. live outputs while others
    are dead (tied at the bottom), the null mean is above ½: every live set outranks the dead.

    Returns auroc, null_mean, p_value (of a null draw ≥ auroc; exact, or (1 + count)/(1 + draws)),
    null (the draws' AUROCs) and exact.
    """
    scores = np.asarray(scores, float)
    scores = scores.reshape(-1, scores.shape[-1]) if scores.ndim < 3 else scores.mean(axis=1)
    positive = np.asarray(positive, bool)
    eligible = np.ones_like(positive) if eligible is None else np.asarray(eligible, bool)
    if positive.shape != scores.shape[-1:] or eligible.shape != positive.shape:
        raise ValueError(f"positive and eligible must be masks over the {scores.shape[-1]} attributes of scores, got "
                         f"shapes {positive.shape} and {eligible.shape}.")
    if not positive.any() or positive.all() or (positive & ~eligible).any():
        raise ValueError("positive must hold some but not all attributes, all of them eligible.")
    candidates, k = np.flatnonzero(eligible), int(positive.sum())
    exact = math.comb(len(candidates), k) <= max_exact
    if exact:
        draws = np.array(list(itertools.combinations(candidates, k)))
    else:
        rng = np.random.default_rng(seed)
        draws = np.stack([rng.choice(candidates, k, replace=False) for _ in range(n_resamples)])
    masks = np.zeros((len(draws), len(positive)), bool)
    np.put_along_axis(masks, draws, True, axis=1)
    null = np.array([auroc(scores, mask).mean() for mask in masks])
    observed = float(auroc(scores, positive).mean())
    above = int((null >= observed - 1e-12).sum())
    p_value = above / len(null) if exact else (1 + above) / (1 + len(null))
    return {"auroc": observed, "null_mean": float(null.mean()), "p_value": p_value, "null": null, "exact": exact}


def contrasts(family: dict, level: float = 0.95, alternative: str = "two-sided") -> dict:
    """name -> (a, b) paired by seed (b None: a against 0) -> name -> {mean, low, high, p, p_holm}.

    The family is the set of contrasts written down before the results; Holm controls its
    family-wise error. Intervals are t_interval's, p-values sign_flip_test's.
    """
    rows = {}
    for name, (a, b) in family.items():
        d = seed_means(a) - (0 if b is None else seed_means(b))
        mean, low, high = t_interval(d, level)
        rows[name] = {"mean": mean, "low": low, "high": high, "p": sign_flip_test(d, alternative=alternative)}
    for row, adjusted in zip(rows.values(), holm([row["p"] for row in rows.values()])):
        row["p_holm"] = float(adjusted)
    return rows
