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
* `contrasts`: a family of pre-registered paired contrasts: mean, t interval, sign-flip p, Holm p (the first
  version's; the study now uses the intervals below);
* `sign_flip_p`, `sign_flip_interval`, `holm_levels`, `sign_flip_contrasts`, `against_first_order`: intervals that
  invert the sign-flip test at Holm-consistent levels, and contrasts paired against J·g; `detectable_shift` the
  smallest shift the test could detect with the seeds' spread; coverage on non-Gaussian data.
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


# ----------------------------------------------------------------------------- intervals that agree with the tests
#
# Inverting the paired sign-flip test (issue 19): the confidence set is every shift δ for which the sign-flip
# test of d − δ does not reject. For the mean statistic the test's p-value is a step function of δ whose steps
# sit at the means of subsets of the d_i. With A the set of flipped signs, flipping raises the mean of d − δ
# exactly when Σ_{i∈A} (d_i − δ) ≤ 0, i.e. when mean_A(d) ≤ δ, so over all 2^n patterns (exact)
#     p_greater(δ) = (1 + #{A ≠ ∅ : mean_A(d) ≤ δ}) / 2^n,   p_less(δ) = (1 + #{A ≠ ∅ : mean_A(d) ≥ δ}) / 2^n,
# and the two-sided p-value is min(1, 2·min(p_less, p_greater)) (scipy's; the sign-flip null is symmetric, so it
# equals the share of patterns whose |mean| reaches the observed one). The interval's ends are therefore order
# statistics of the 2^n − 1 subset means (Hartigan 1969): no search, and interval-excludes-0 ⇔ the test rejects.
#
# What it covers: the test assumes the d_i are symmetric about δ, so the interval is one for the centre of
# symmetry (mean = median = pseudo-median there), exact at its level for any symmetric continuous distribution
# whatever its tails. For skewed data no exact target exists: the ends are subset means, so it follows the
# mean as n grows; sign_flip_coverage measures what it covers at small n (tests/test_stats_intervals.py).


def _subset_means(d: np.ndarray, exact: bool, n_resamples: int, seed: int) -> tuple[np.ndarray, int, int]:
    """(sorted means of the flipped subsets that are not empty, patterns with nothing flipped, denominator).

    exact: all 2^n sign patterns; else `n_resamples` random ones, and the p-value counts the observed
    arrangement once more (scipy's (count + 1) / (n_resamples + 1))."""
    n = len(d)
    if exact:
        flipped = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).astype(bool)
        base, denominator = 0, 2 ** n
    else:
        flipped = np.random.default_rng(seed).random((n_resamples, n)) < 0.5
        base, denominator = 1, n_resamples + 1
    size = flipped.sum(axis=1)
    empty = size == 0
    means = (flipped[~empty] @ d) / size[~empty]
    return np.sort(means), base + int(empty.sum()), denominator


def sign_flip_p(a, b=None, *, delta: float = 0.0, alternative: str = "two-sided", n_resamples: int = 9999,
                seed: int = 0) -> float:
    """p-value of the sign-flip test of mean(a − b − δ) = 0, from the subset means (the formula above).

    Equal to sign_flip_test(a − δ, b) up to EXACT_SEEDS seeds; beyond, the Monte Carlo test of
    sign_flip_interval (its own `n_resamples` seeded patterns, not scipy's).
    """
    d = seed_means(a) - (0 if b is None else seed_means(b))
    means, always, denominator = _subset_means(d, len(d) <= EXACT_SEEDS, n_resamples, seed)
    greater = (always + np.searchsorted(means, delta, side="right")) / denominator     # #{mean_A ≤ δ}
    less = (always + len(means) - np.searchsorted(means, delta, side="left")) / denominator  # #{mean_A ≥ δ}
    if alternative == "greater":
        return float(greater)
    if alternative == "less":
        return float(less)
    if alternative != "two-sided":
        raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}.")
    return float(min(1.0, 2 * min(greater, less)))


def sign_flip_interval(a, b=None, level: float = 0.95, *, alternative: str = "two-sided", n_resamples: int = 9999,
                       seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): every δ for which the sign-flip test of a − b − δ does not reject at 1 − level.

    Two-sided: both one-sided p-values above (1 − level)/2; 'greater' gives [low, inf), 'less' (−inf, high].
    The ends are subset means (closed interval); ±inf where no subset mean is extreme enough (few seeds at a
    high level: 6 seeds reach at best two-sided p = 2/64, so any level above 1 − 2/64 gives (−inf, inf)).
    interval excludes 0 ⇔ sign_flip_p(a, b) ≤ 1 − level, exactly.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}.")
    d = seed_means(a) - (0 if b is None else seed_means(b))
    means, always, denominator = _subset_means(d, len(d) <= EXACT_SEEDS, n_resamples, seed)
    tail = (1 - level) / (2 if alternative == "two-sided" else 1)
    # not rejected on one side ⇔ (always + count) / denominator > tail ⇔ count ≥ m
    m = int(np.floor(tail * denominator - always + 1e-12)) + 1
    low = -np.inf if m <= 0 else (means[m - 1] if m <= len(means) else np.inf)
    high = np.inf if m <= 0 else (means[len(means) - m] if m <= len(means) else -np.inf)
    if alternative == "greater":
        high = np.inf
    elif alternative == "less":
        low = -np.inf
    return float(d.mean()), float(low), float(high)


def holm_levels(p_values, alpha: float = 0.05) -> np.ndarray:
    """Per-hypothesis test levels that make intervals agree with Holm's step-down decisions.

    Sorted p_(0) ≤ … ≤ p_(m−1): Holm rejects while p_(r) ≤ α/(m − r). A rejected hypothesis gets its step's
    level α/(m − r); every hypothesis from the first one kept on gets that step's level α/(m − r_stop). Then
    p_i ≤ level_i ⇔ Holm rejects i (kept ones have p_i ≥ p_(r_stop) > α/(m − r_stop)), so an interval at
    confidence 1 − level_i that inverts the same test excludes 0 exactly when Holm rejects.
    """
    p = np.asarray(p_values, float)
    m = len(p)
    levels = np.empty(m)
    stopped = None
    for r, i in enumerate(np.argsort(p, kind="stable")):
        step = alpha / (m - r)
        if stopped is None and p[i] > step:
            stopped = step
        levels[i] = step if stopped is None else stopped
    return levels


def sign_flip_contrasts(family: dict, level: float = 0.95, alternative: str = "two-sided") -> dict:
    """name -> (a, b) paired by seed (b None: a against 0) -> name -> {mean, low, high, level, p, p_holm}.

    p: the exact sign-flip test (sign_flip_p, equal to sign_flip_test up to EXACT_SEEDS seeds); p_holm: Holm over
    the family; [low, high]: sign_flip_interval at the Holm-consistent confidence `level` (1 − holm_levels), so
    the interval excludes 0 exactly when p_holm ≤ 1 − level.
    """
    alpha = 1 - level
    diffs = {name: seed_means(a) - (0 if b is None else seed_means(b)) for name, (a, b) in family.items()}
    p = {name: sign_flip_p(d, alternative=alternative) for name, d in diffs.items()}
    adjusted = holm(list(p.values()))
    levels = holm_levels(list(p.values()), alpha)
    rows = {}
    for (name, d), p_holm, used in zip(diffs.items(), adjusted, levels):
        mean, low, high = sign_flip_interval(d, level=1 - used, alternative=alternative)
        rows[name] = {"mean": mean, "low": low, "high": high, "level": float(1 - used), "p": p[name],
                      "p_holm": float(p_holm)}
    return rows


def against_first_order(bracket_family: dict, first_order_family: dict, level: float = 0.95) -> dict:
    """Each contrast paired against J·g: per seed, (bracket contrast) − (J·g contrast), one sign-flip test of that
    difference, Holm over the family, Holm-consistent intervals (sign_flip_contrasts).

    Families map name -> (a, b) as in `contrasts`, the same names and seeds in both. A positive mean says the
    brackets show more of the contrast than one gradient step of the same examples does.
    """
    if set(bracket_family) != set(first_order_family):
        raise ValueError("The bracket and J·g families must hold the same contrasts.")
    family = {}
    for name, (a, b) in bracket_family.items():
        fa, fb = first_order_family[name]
        bracket = seed_means(a) - (0 if b is None else seed_means(b))
        first = seed_means(fa) - (0 if fb is None else seed_means(fb))
        if bracket.shape != first.shape:
            raise ValueError(f"{name}: {len(bracket)} seeds for brackets, {len(first)} for J·g; pair them by seed.")
        family[name] = (bracket - first, None)
    return sign_flip_contrasts(family, level)


def detectable_shift(d, level: float) -> float:
    """The smallest shift δ > 0 that the two-sided sign-flip test at confidence `level` rejects for differences with
    d's spread, d − mean(d) + δ (or − δ): the larger distance from mean(d) to an end of sign_flip_interval(d, level).

    The test is shift-equivariant (its interval for d + δ is d's shifted by δ), so it rejects 0 for d − mean(d) + δ
    exactly when δ lies beyond mean(d) − low (and for − δ beyond high − mean(d)): a power statement about the seeds'
    observed spread, inf where no interval exists at that level (too few seeds)."""
    mean, low, high = sign_flip_interval(d, level=level)
    return float(max(mean - low, high - mean))


# ----------------------------------------------------------------------------- coverage on non-Gaussian data

def _lognormal(rng, n):
    return rng.lognormal(0.0, 1.0, n) - 1.0            # median 0


def _exponential(rng, n):
    return rng.exponential(1.0, n) - np.log(2.0)       # median 0


NON_GAUSSIAN = {
    # name: (sampler(rng, n), {parameter: true value}); centre of symmetry where there is one
    "t, 2 df (heavy tails, symmetric)": (lambda rng, n: rng.standard_t(2, n), {"mean": 0.0, "median": 0.0,
                                                                                "pseudo-median": 0.0}),
    "lognormal(0, 1) − 1 (skewed)": (_lognormal, {"mean": float(np.exp(0.5) - 1), "median": 0.0,
                                                  "pseudo-median": None}),
    "exponential(1) − log 2 (skewed)": (_exponential, {"mean": float(1 - np.log(2.0)), "median": 0.0,
                                                       "pseudo-median": None}),
}


def pseudo_median(sampler, n_draws: int = 2_000_000, seed: int = 12345) -> float:
    """The population Hodges-Lehmann location, median of (X + X')/2, by simulation (±0.002 at the default draws)."""
    rng = np.random.default_rng(seed)
    return float(np.median((sampler(rng, n_draws) + sampler(rng, n_draws)) / 2))


def sign_flip_coverage(sample, true_values: dict, n: int = 8, n_simulations: int = 4000, level: float = 0.95,
                       seed: int = 0) -> dict:
    """Share of simulated studies (n seeds each, sample(rng, n)) whose interval contains each true value,
    for the sign-flip inversion and, beside it, the t interval on the same data: {"sign-flip": {parameter:
    coverage}, "t": {...}, "sign-flip median width": ..., "t median width": ...}."""
    rng = np.random.default_rng(seed)
    hits = {"sign-flip": {k: 0 for k in true_values}, "t": {k: 0 for k in true_values}}
    widths = {"sign-flip": [], "t": []}
    for _ in range(n_simulations):
        d = sample(rng, n)
        for method, (_, low, high) in (("sign-flip", sign_flip_interval(d, level=level)), ("t", t_interval(d, level))):
            widths[method].append(high - low)
            for name, value in true_values.items():
                hits[method][name] += low <= value <= high
    out = {method: {k: v / n_simulations for k, v in h.items()} for method, h in hits.items()}
    out.update({f"{method} median width": float(np.median(w)) for method, w in widths.items()})
    return out
