"""The study's verdict: sentences generated from the controls and the contrasts, saying what the numbers support,
what not, and what the test could have detected. No sentence is written by hand after the results."""
from __future__ import annotations

import numpy as np

from .contrasts import ALPHA, CONTRASTS, PAIRED, PREDICTED
from .sources import GLASSES, HAIR, REFERENCE
from .known_answers import (ADAM_DOSE_EXPECTED, ADAM_READOUTS, CURVATURE_EXPECTED, DOSE_EXPECTED, PRIMARY_READOUTS,
                            readouts_passed)

SHORT = {name: name.split(" ")[0] for name in CONTRASTS}


def significant(row, alpha: float = ALPHA) -> int:
    """+1 / −1 when Holm rejects 0 in that direction (adjusted p ≤ α: the interval excludes 0), else 0."""
    return int(np.sign(row["mean"])) if row["p_holm"] <= alpha else 0


def numbers(row) -> str:
    return (f"{row['mean']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}] at {row['level']:.1%}, "
            f"Holm p {row['p_holm']:.3f}")


def _slopes(record: dict, readout: str, control: str = "dose") -> str:
    return ", ".join(f"{d['readouts'][readout]['slope']:+.3f} ({k})" for k, d in record[control].items())


def control_lines(record: dict, training: dict | None = None) -> list[str]:
    """What the known-answer controls show (known_answers.control_record; training: known_answers.training_dose)."""
    lines = []
    for readout, short in PRIMARY_READOUTS.items():
        expected, tolerance = DOSE_EXPECTED[readout]
        ok = readouts_passed(record)[short]
        lines.append(f"Loss-weight dose, {readout}: slope {_slopes(record, readout)} in log10 w, expected "
                     f"{expected:g} ± {tolerance:g}: {'passed' if ok else 'FAILED: not used for any contrast'}.")
    old = [r for r in DOSE_EXPECTED if r.startswith("old readout")]
    failed = [r for r in old if not all(d["readouts"][r]["passed"] for d in record["dose"].values())]
    lines.append("The old readout (an attribute's share of the whole bracket against the median attribute) "
                 + ("fails the same dose: " if failed else "passes the same dose: ")
                 + "; ".join(f"{r}: slope {_slopes(record, r)}, expected {DOSE_EXPECTED[r][0]:g}" for r in old)
                 + (". It is reported, not used." if failed else "."))
    c = record["curvature"]
    checks = c["checks"]
    held = all(v["passed"] for v in checks.values())
    lines.append(f"Curvature at fixed residuals ({c['source']}, τ = {', '.join(f'{t:g}' for t in c['taus'])}): residuals "
                 f"moved by at most {checks['residual change']['value']:.1e} and J·g by {checks['J·g change (log10)']['value']:.1e} "
                 f"log10, the bracket changed as its closed form says (relative error "
                 f"{checks['bracket change against its closed form']['value']:.1e}), and the {c['source']} self part moved "
                 f"by up to {checks['self part change (log10)']['value']:.2f} log10: "
                 + ("every expectation held; here brackets see a change of curvature that no gradient shows."
                    if held else "FAILED: " + ", ".join(k for k, v in checks.items() if not v["passed"]) + "."))
    if training is not None:
        values = ", ".join(f"{m:.3f} (band {b:g})" for m, b in zip(training["means"], training["bands"]))
        lines.append(f"Training-level dose: Eyeglasses' mean |residual| on the {training['images']} glasses-band images "
                     f"is {values}, over seeds {training['seeds']} ({training['monotone_seeds']} of "
                     f"{len(training['seeds'])} seeds increase on their own): "
                     + ("monotone, as the design makes it." if training["monotone"] else
                        "NOT monotone: the band does not act as a dose on these runs, and C3 tests less than it should."))
    return lines


def posterior_lines(posterior: dict) -> list[str]:
    """Whether arm (a) reaches the bands' posterior 0.5 ({"hair": per-seed p(black) on the band, "glasses": …})."""
    lines = []
    for band, values in posterior.items():
        values = np.asarray(values, float)
        mean, off = float(values.mean()), float(np.abs(values - 0.5).mean())
        told = f"mean prediction {mean:.2f}, single runs {off:.2f} from 0.5 on average"
        if off <= 0.15:
            lines.append(f"On the {band} band the model reaches the posterior 0.5 ({told}).")
        elif abs(mean - 0.5) <= 0.15:
            lines.append(f"On the {band} band the model reaches the posterior 0.5 only on average over seeds ({told}: "
                         "each run leans one way), so the band tests less than it is meant to.")
        else:
            lines.append(f"On the {band} band the model does not reach the posterior 0.5 ({told}), so the band tests "
                         "less than it is meant to.")
    return lines


WHAT = {
    "C1": ("against (a), (c)'s makeup softmax {} the makeup source's self-share",
           " C1 is a contrast, not a control: nothing fixes its sign in advance (DESIGN.md §6)."),
    "C2": ("the hair band {} the hair source's self-share", ""),
    "C3": ("the glasses band {} the glasses source's self-share", ""),
    "C4": ("against the exclusivity-aware loss (b, weight matched), the independent loss {} the hair source's "
           "self-share", ""),
    "C5": ("within (a) the hair source creates {} self-bracket than its gradient share predicts (Q_HAIR − 2·Q^g_HAIR, "
           "against the reference sources)", ""),
}
VERBS = {1: "raises", -1: "lowers", 0: "does not detectably change"}


def contrast_line(name: str, row: dict, paired: dict | None, dose_step: float) -> str:
    """One contrast's sentence: its direction (or none detected, with what could have been), J·g's paired reading."""
    short = SHORT[name]
    what, note = WHAT[short]
    sign = significant(row)
    told = what.format({1: "more", -1: "less", 0: "no detectably more or less"}[sign] if short == "C5" else VERBS[sign])
    line = f"{short}: {told} ({numbers(row)})."
    if not sign:
        could = "could" if row["detectable"] <= abs(dose_step) else "could not"
        line += (f" With these seeds' spread the test at Holm's first level detects a contrast of "
                 f"{row['detectable']:.2f} or more, so it {could} have detected one the size of a doubled source weight "
                 f"({dose_step:+.2f}).")
    if name in PREDICTED:
        verdict = {PREDICTED[name]: " This is what the write-up's hypothesis predicts.",
                   -PREDICTED[name]: " This is against the write-up's hypothesis.",
                   0: " No support for the write-up's hypothesis from this test."}
        line += verdict[sign]
    if paired is not None:
        p_sign = significant(paired)
        if sign and p_sign == sign:
            line += f" It exceeds what the source's J·g predicts (Q − 2·Q^g paired by seed: {numbers(paired)})."
        elif sign:
            line += (f" It is no more than the source's J·g predicts (Q − 2·Q^g paired by seed: {numbers(paired)}): a "
                     "first-order effect, not one of brackets.")
        elif p_sign:
            line += f" Paired against J·g the difference is detectable ({numbers(paired)})."
    return line + note


def verdict(tables: dict, record: dict, n_seeds: int, *, training: dict | None = None, posterior: dict | None = None,
            sensitivity: dict | None = None, robustness: dict | None = None, mean_dominant_share: float | None = None
            ) -> list[str]:
    """Sentences from the controls (known_answers.control_record, .training_dose) and the contrasts
    (contrasts.contrast_tables on the Fisher scale; sensitivity: the same on log-odds; robustness:
    contrasts.robustness_table), in that order."""
    lines = control_lines(record, training)
    if posterior is not None:
        lines += posterior_lines(posterior)
    passed = readouts_passed(record)
    if not passed["Q"]:
        return lines + ["The self-share Q failed its known-answer control, so no contrast is read from it."]
    hair = record["dose"].get("HAIR")
    dose_step = (hair["readouts"]["Q, self-share"]["values"][1] - hair["readouts"]["Q, self-share"]["values"][0]
                 if hair else 2 * np.log10(2))
    q = tables["Q"]
    detectable = ", ".join(f"{SHORT[n]} {q[n]['detectable']:.2f}" for n in q)
    lines.append(f"Power: a doubled hair weight moves Q_HAIR by {dose_step:+.2f} (the dose control). With the seeds' "
                 f"spread the sign-flip test at Holm's first level (α/{len(q)} = {ALPHA / len(q):.3f}) detects a contrast "
                 f"of at least {detectable} (log10)"
                 + ("; inf: too few seeds for any interval at that level." if not np.isfinite(
                     [r["detectable"] for r in q.values()]).all() else "."))
    for name, row in q.items():
        paired = tables["against J·g"].get(name) if name in PAIRED else None
        if name == list(CONTRASTS)[-1] and not passed["C5"]:
            lines.append(f"{SHORT[name]} is not read: its statistic failed the dose control.")
            continue
        lines.append(contrast_line(name, row, paired if passed["Q^g"] else None, dose_step))
    if robustness:
        same = all(significant(robustness[n]) == significant(q[n]) for n in robustness)
        share = "" if mean_dominant_share is None else (f" (in (a) the dominant example's pairs carry "
                                                        f"{mean_dominant_share:.0%} of the summed hair self-bracket)")
        lines.append(f"With each stratum's dominant example left out{share}, "
                     + "; ".join(f"{SHORT[n]} reads {numbers(r)}" for n, r in robustness.items())
                     + (": the same conclusions." if same else ": a conclusion changes, so it rests on one example."))
    if sensitivity is not None:
        disagree = [n for n in q if significant(sensitivity["Q"][n]) != significant(q[n])]
        lines.append("On the log-odds scale every contrast reads the same." if not disagree else
                     "On the log-odds scale " + "; ".join(f"{SHORT[n]} reads {numbers(sensitivity['Q'][n])}"
                                                         for n in disagree)
                     + ": those conclusions depend on the currency; the Fisher scale's are the pre-registered ones.")
    lines.append(f"Each test is an exact sign-flip test over {n_seeds} seeds, Holm-corrected over its family; each "
                 "interval inverts the same test at its Holm-consistent level, so it excludes 0 exactly when Holm "
                 "rejects, and covers a median-like location of the seeds' differences (their centre of symmetry), "
                 "not the mean of a skewed distribution (coverage on non-Gaussian data: tests/test_stats_intervals.py).")
    return lines


assert set(CURVATURE_EXPECTED) >= {"residual change", "J·g change (log10)", "bracket change against its closed form",
                                   "self part change (log10)"}


def adam_lines(record: dict, adam_tables: dict | None, primary: dict, whole: dict | None = None,
               momentum: dict | None = None) -> list[str]:
    """What Adam's readout (secondary, issue 20) shows: its dose controls (known_answers.adam_dose_control, in
    `record`); how much of Adam's self bracket Q^A reads (`momentum`: contrasts.adam_momentum_ratios); when Q^A
    passed (adam_tables from contrasts.adam_contrast_tables, else None), every registered contrast on Q^A; C1–C4 on
    Adam's whole self bracket (`whole`: contrasts.adam_whole_table; no single-slope control, reported); and C4 on
    every readout beside the primary's (`primary`: contrast_tables of the primary)."""
    if "adam_dose" not in record:
        return ["Adam's readout was not controlled (a control record made before its controls), so it is not read."]
    passed = readouts_passed(record)
    lines = []
    for readout, short in ADAM_READOUTS.items():
        expected, tolerance = ADAM_DOSE_EXPECTED[readout]
        lines.append(f"Adam's readout, loss-weight dose with the checkpoint's Adam state fixed, {readout}: slope "
                     f"{_slopes(record, readout, 'adam_dose')} in log10 w, expected {expected:g} ± {tolerance:g}: "
                     + ("passed." if passed[short] else "FAILED: not used for any contrast."))
    full = record["adam_dose"]
    worst = max(d["full"]["deviation"] for d in full.values())
    slopes = ", ".join(f"{d['full']['slope']:+.3f} ({k})" for k, d in full.items())
    lines.append(f"Adam's whole self bracket (1−β1)·D^A + β1·M (slope {slopes}"
                 f": no single slope, its momentum part is linear in w) matched the curve its two w = 1 parts fix to "
                 f"{worst:.1e} log10 (tolerance {next(iter(full.values()))['full']['tolerance']:g}): "
                 + ("passed, a check of the code (exact by construction at weights that are powers of 2), not a "
                    "known-answer control of a readout." if passed["Adam full"] else "FAILED."))
    if momentum is not None:
        reference = float(np.median([momentum[k] for k in REFERENCE]))
        relation = ("outweighs" if reference > 0.5 else "is outweighed by" if reference < -0.5 else "is comparable with")
        lines.append(f"In Adam's self bracket the momentum part β1·M {relation} the bilinear part (1−β1)·D^A that Q^A "
                     f"reads: log10 of their ratio, median over runs and strata, {reference:+.1f} on the reference "
                     f"sources (from {min(momentum[k] for k in REFERENCE):+.1f} to {max(momentum[k] for k in REFERENCE):+.1f}), "
                     f"{momentum[HAIR]:+.1f} on HAIR, {momentum[GLASSES]:+.1f} on GLASSES"
                     + (". So Q^A reads the part of Adam's bracket a dose scales by w², not Adam's bracket as a whole."
                        if reference > 0.5 else "."))
    if adam_tables is None or not passed["Q^A"]:
        return lines + ["Adam's self-share Q^A failed its known-answer control, so no contrast is read from it."]
    adam = record["adam_dose"].get("HAIR")
    values = adam["readouts"][next(iter(ADAM_READOUTS))]["values"] if adam else None
    dose_step = values[1] - values[0] if values else 2 * np.log10(2)
    for name, row in adam_tables["Q"].items():
        if name == list(CONTRASTS)[-1] and not passed["C5^A"]:
            lines.append(f"On Adam's readout {SHORT[name]} is not read: its statistic failed the dose control.")
            continue
        paired = adam_tables["against J·g"].get(name) if name in PAIRED and passed["Q^Ag"] else None
        line = contrast_line(name, row, paired, dose_step).replace("Q_HAIR − 2·Q^g_HAIR", "Q^A_HAIR − 2·Q^Ag_HAIR").replace(
            "self-bracket", "Adam self-bracket").replace("self-share", "Adam self-share Q^A").replace(
            "J·g predicts", "J·Pg predicts").replace("Q − 2·Q^g", "Q^A − 2·Q^Ag").replace("against J·g", "against J·Pg")
        lines.append("On Adam's readout, " + line)
    c4 = next(n for n in CONTRASTS if n in PREDICTED)
    if whole is not None:
        lines.append("On Adam's whole self bracket (reported: no single-slope known answer) "
                     + "; ".join(f"{SHORT[n]} reads {numbers(row)}" for n, row in whole.items()) + ".")
    readings = {"the primary (SGD) readout Q": primary["Q"][c4], "Q^A (Adam's bilinear part)": adam_tables["Q"][c4],
                **({"Adam's whole self bracket": whole[c4]} if whole is not None else {}),
                "Q^Ag (J·Pg)": adam_tables["Q^g"][c4]}
    detected = [name for name, row in readings.items() if significant(row) > 0]
    brackets = [name for name in detected if name != "Q^Ag (J·Pg)"]
    verdict = ("no readout detects it" if not detected else
               "every readout detects it" if len(detected) == len(readings) else
               "the conclusion depends on the readout: detected on " + ", ".join(detected) + ", not on "
               + ", ".join(n for n in readings if n not in detected))
    lines.append(f"{SHORT[c4]}, the write-up's hypothesis: " + "; ".join(f"{numbers(row)} on {name}"
                                                                         for name, row in readings.items())
                 + f". {verdict[0].upper() + verdict[1:]}"
                 + ("; where J·Pg's C4 is detected too, a bracket's C4 may be first order (the arms' Adam states and "
                    "gradient scales differ), so a detection on a bracket readout is not yet support for the hypothesis"
                    if brackets and "Q^Ag (J·Pg)" in detected else "")
                 + ". The primary's is the registered verdict.")
    return lines
