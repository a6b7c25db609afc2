"""The study's verdict: sentences generated from the contrasts, saying what the numbers support and what not."""
from __future__ import annotations

import numpy as np

from .contrasts import CONTRASTS, DETECTION

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
