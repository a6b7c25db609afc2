"""Known-answer controls of the study's readouts, at the study's own checkpoint and examples (issue 19, part 2).

A readout is used for a contrast only after it recovers an effect whose size the mathematics fixes before the
run (DESIGN.md §6). The expected values are written below, in code, before any control runs; the controls run at
arm (a)'s first seed (design.control_run), its last checkpoint, on the primary readout's examples (example set 0,
strata "ambiguous black/brown" and "faint glasses"; lie_helpers.study.sources):

1. Loss-weight dose (`dose_control`): the named source k's loss term multiplied by w ∈ {1, 2, 4, 8}, for k = HAIR
   (banded) and k = Smiling (an unbanded reference source). Every field is linear in its terms, so D_k → w² D_k and
   J·g_k → w J·g_k while every other source's self part and gradient stay as they were (the reference median
   leaves k out): Q_k has slope 2 in log10 w, Q^g_k slope 1, and C5's statistic Q_k − 2·Q^g_k slope 0, all
   exactly; tolerances are the issue's (2 ± 0.3, 1 ± 0.15). The old readout (an attribute's log10 magnitude of
   the whole bracket minus the median attribute's, on the dosed source's attributes: Black & Brown hair, or
   Smiling) runs beside them with the slopes a readout of source k must show (2 and 1); DESIGN.md §6 reports ≈ 0.
2. Curvature at fixed residuals (`curvature_check`, analysis.controls.curvature_control, in float64): Eyeglasses'
   term tempered at τ ∈ {0.5, 2, 4} with adjusted targets. Residuals, every gradient and every J·g are unchanged
   (to round-off), the bracket changes by exactly its closed form, and the self part of Eyeglasses moves (its
   Hessian's Eyeglasses curvature changes): where brackets can show what a gradient cannot.
3. Training-level dose (`training_dose`): Eyeglasses' mean |p − y| (analysis.controls.mean_abs_residual) on the
   glasses band's test images must grow monotonically with the glasses band across the arms that differ in
   nothing else: independent with no bands (0), bands / 3, and bands (study_band); no new training.

4. Adam's readout (`adam_dose_control`, issue 20): the same dose on the same sources with the checkpoint's Adam state
   held FIXED (P and m₀ not recomputed). D^A_k → w² D^A_k and J·(P g_k) → w J·(P g_k) exactly, so Q^A has slope 2,
   Q^Ag slope 1 and Q^A − 2·Q^Ag slope 0, with the primary's tolerances. Adam's whole self bracket (1−β1)·D^A_k +
   β1·M_k has no single slope (M_k → w M_k): its readout at each w must match the curve that the two w = 1 parts fix,
   the readout of (1−β1)·w²·D^A_k + β1·w·M_k with every other source as at w = 1 (to ADAM_FULL_TOLERANCE log10).

The record of 1, 2 and 4 (`control_record`) is made once, in the study's process that analyses the control run, and
stored in `<study run>/study/controls.json` under a key (the control run's weights, examples, sources, the
expectations); 3 needs three arms' runs and is cheap, so notebook 04 computes it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import sources
from .design import arm_profile, arm_run_dir, control_run, study_arms
from .example_sets import split_truth
from .source_records import adam_key, source_key, source_set, source_step, stratum_inputs
from ..analysis import controls
from ..analysis.adam_records import load_adam_state
from ..analysis.currency import HAIR_PAIR
from ..analysis.source_brackets import adam_source_brackets, source_brackets
from ..data.attributes import ATTRIBUTES
from ..data.storage import atomic_write_json, json_digest, read_json
from ..engine.brackets import bracket_mode
from ..training import run_folder
from ..training.config import Profile
from ..training.datasets import load_profile_split, prepare_data
from ..training.losses import get_loss
from ..training.train import load_checkpoint, prepare_inputs

CONTROL_VERSION = 2
DOSE_WEIGHTS = (1.0, 2.0, 4.0, 8.0)
DOSE_SOURCES = (sources.HAIR, "Smiling")                    # banded, and an unbanded reference source
OLD_READOUT_ATTRIBUTES = {sources.HAIR: HAIR_PAIR, "Smiling": ("Smiling",)}
CURVATURE_SOURCE, CURVATURE_STRATUM = "Eyeglasses", "faint glasses"
TRAINING_DOSE_ARMS = ("independent, no bands", "independent, bands / 3", "independent")

# ---- the known answers, written before any control runs --------------------------------------------------------
DOSE_EXPECTED = {            # readout -> (slope in log10 w, tolerance)
    "Q, self-share": (2.0, 0.3),
    "Q^g, J·g share": (1.0, 0.15),
    "Q − 2·Q^g (C5's statistic)": (0.0, 0.3),
    "old readout, bracket": (2.0, 0.3),          # what a readout of the dosed source must show
    "old readout, J·g": (1.0, 0.15),
}
PRIMARY_READOUTS = {"Q, self-share": "Q", "Q^g, J·g share": "Q^g", "Q − 2·Q^g (C5's statistic)": "C5"}
CURVATURE_EXPECTED = {       # quantity -> ("max" or "min", bound): float64, so round-off is ~1e-15 relative
    "residual change": ("max", 1e-10),                      # max |∂ℓ/∂z(τ) − ∂ℓ/∂z(1)|: unchanged
    "J·g change (log10)": ("max", 1e-9),                    # every J·g unchanged
    "bracket change against its closed form": ("max", 1e-6),  # relative error: exact
    "self part change (log10)": ("min", 0.01),              # largest |log10 ratio| over τ: D_Eyeglasses moves
}
ADAM_DOSE_EXPECTED = {       # Adam's readout at a fixed state: readout -> (slope in log10 w, tolerance)
    "Q^A, Adam self-share (D^A)": (2.0, 0.3),
    "Q^Ag, J·Pg share": (1.0, 0.15),
    "Q^A − 2·Q^Ag (C5's statistic on Adam)": (0.0, 0.3),
}
ADAM_READOUTS = dict(zip(ADAM_DOSE_EXPECTED, ("Q^A", "Q^Ag", "C5^A")))
ADAM_FULL = "Adam's whole self bracket against its w = 1 curve"
ADAM_FULL_TOLERANCE = 0.01   # max |readout − curve| over w, log10: round-off only (float32)
TRAINING_DOSE_EXPECTED = "strictly increasing with the glasses band (arm means over the seeds the three arms share)"


# ----------------------------------------------------------------------------- 1. loss-weight dose


def dose_control(model, base_loss, strata: dict, batch, source: str, weights=DOSE_WEIGHTS) -> dict:
    """The dose on named source `source` (sources.SOURCE_GROUPS) at the model's weights, every readout of
    DOSE_EXPECTED at each w, averaged over `strata` ({stratum: (inputs, targets)}) as the study's Q is.

    Returns {"source", "weights", "readouts": {name: {"values", "slope", "expected", "tolerance", "passed"}}}."""
    weights = tuple(float(w) for w in weights)
    if weights[0] != 1.0 or len(weights) < 2:
        raise ValueError(f"weights must start at 1 and hold at least two values, got {weights}.")
    with bracket_mode(model), torch.no_grad():
        batch_logits = model(batch).detach()
    n_outputs, loss = batch_logits.shape[1], base_loss.name
    grouped = sources.SourceGroups(base_loss, n_outputs)
    old = [ATTRIBUTES.index(a) for a in OLD_READOUT_ATTRIBUTES.get(source, sources.SOURCE_GROUPS[source])]
    values = {name: [] for name in DOSE_EXPECTED}
    for w in weights:
        dosed = controls.WeightedLoss(grouped, {source: w}, n_outputs)
        per = {name: [] for name in DOSE_EXPECTED}
        for inputs, targets in strata.values():
            r = source_brackets(model, dosed, inputs, targets, batch, self_part=True)
            record = sources.record_from(r, loss, batch_logits)
            q = sources.shares(record["fisher|self"])[source]
            qg = sources.shares(record["fisher|first_order"])[source]
            per["Q, self-share"].append(q)
            per["Q^g, J·g share"].append(qg)
            per["Q − 2·Q^g (C5's statistic)"].append(q - 2 * qg)
            per["old readout, bracket"].append(controls.relative_share(loss, r.bracket_pushforward, batch_logits)[old].mean())
            per["old readout, J·g"].append(controls.relative_share(loss, r.gradient_pushforward, batch_logits)[old].mean())
        for name in DOSE_EXPECTED:
            values[name].append(float(np.mean(per[name])))
    return {"source": source, "weights": list(weights), "readouts": _slopes(weights, values, DOSE_EXPECTED)}


def _slopes(weights, values: dict, expected: dict) -> dict:
    out = {}
    for name, (slope_expected, tolerance) in expected.items():
        slope = controls.log_slope(weights, values[name])
        out[name] = {"values": values[name], "slope": slope, "expected": slope_expected, "tolerance": tolerance,
                     "passed": controls.readout_passes(slope, slope_expected, tolerance)}
    return out


def adam_dose_control(model, base_loss, strata: dict, batch, source: str, state, weights=DOSE_WEIGHTS) -> dict:
    """dose_control's analogue for Adam's readout at the frozen Adam state `state` (module docstring, 4): every
    readout of ADAM_DOSE_EXPECTED at each w, and Adam's whole self bracket's readout against the curve the two w = 1
    parts fix. Returns {"source", "weights", "readouts", "full": {"values", "curve", "deviation", "tolerance",
    "passed", "slope"}}."""
    weights = tuple(float(w) for w in weights)
    if weights[0] != 1.0 or len(weights) < 2:
        raise ValueError(f"weights must start at 1 and hold at least two values, got {weights}.")
    with bracket_mode(model), torch.no_grad():
        batch_logits = model(batch).detach()
    n_outputs, loss, beta1 = batch_logits.shape[1], base_loss.name, state.betas[0]
    grouped = sources.SourceGroups(base_loss, n_outputs)
    k = sources.SOURCES.index(source)
    values = {name: [] for name in [*ADAM_DOSE_EXPECTED, "full", "curve"]}
    at_one = {}                        # stratum -> (D^A_k, M_k pushforwards, full-self magnitudes) at w = 1
    for w in weights:
        per = {name: [] for name in values}
        for stratum, (inputs, targets) in strata.items():
            r = adam_source_brackets(model, controls.WeightedLoss(grouped, {source: w}, n_outputs), inputs, targets,
                                     batch, state)
            m = {part: sources.pair_magnitudes(loss, value, batch_logits, "fisher")
                 for part, value in sources.adam_parts(r, state).items()}
            if w == 1.0:
                at_one[stratum] = (r.self_pushforward[:, k:k + 1], r.momentum_pushforward[:, k:k + 1], m["adam_full_self"])
            d1, m1, full1 = at_one[stratum]
            curve = full1.copy()
            curve[:, k] = sources.pair_magnitudes(loss, (1 - beta1) * w ** 2 * d1 + beta1 * w * m1, batch_logits,
                                                  "fisher")[:, 0]
            q, qg = sources.shares(m["adam_self"])[source], sources.shares(m["adam_first_order"])[source]
            for name, value in zip(values, (q, qg, q - 2 * qg, sources.shares(m["adam_full_self"])[source],
                                            sources.shares(curve)[source])):
                per[name].append(value)
        for name in values:
            values[name].append(float(np.mean(per[name])))
    deviation = float(np.max(np.abs(np.subtract(values["full"], values["curve"]))))
    full = {"values": values["full"], "curve": values["curve"], "deviation": deviation, "tolerance": ADAM_FULL_TOLERANCE,
            "passed": bool(deviation <= ADAM_FULL_TOLERANCE), "slope": controls.log_slope(weights, values["full"])}
    return {"source": source, "weights": list(weights), "readouts": _slopes(weights, values, ADAM_DOSE_EXPECTED),
            "full": full}


# ----------------------------------------------------------------------------- 2. curvature at fixed residuals


def curvature_check(model, base_loss, inputs, targets, batch, source: str = CURVATURE_SOURCE) -> dict:
    """controls.curvature_control on `source`, summarised against CURVATURE_EXPECTED (pass float64 tensors)."""
    c = controls.curvature_control(model, base_loss, inputs, targets, batch, source)
    measured = {
        "residual change": max(c.residual_change),
        "J·g change (log10)": max(abs(v) for key in ("J·g, all sources", "J·g, source k") for v in c.log10_ratio[key]),
        "bracket change against its closed form": max(c.prediction_error),
        "self part change (log10)": max(abs(v) for v in c.log10_ratio["source bracket, self part D_k"]),
    }
    checks = {name: {"value": float(measured[name]), "kind": kind, "bound": bound,
                     "passed": bool(measured[name] <= bound if kind == "max" else measured[name] >= bound)}
              for name, (kind, bound) in CURVATURE_EXPECTED.items()}
    return {"source": source, "taus": list(c.taus), "checks": checks,
            "log10_ratio": {k: [float(v) for v in vs] for k, vs in c.log10_ratio.items()},
            "curvature_factor_median": [float(np.median(f)) for f in c.curvature_factor]}


# ----------------------------------------------------------------------------- the record of 1 and 2


def controls_path(run_dir) -> Path:
    return Path(run_dir) / "study" / "controls.json"


def control_key(profile: Profile, run_dir, sets) -> str:
    """What the control record depends on: the control run's source-record key and every expectation above."""
    arm, seed = control_arm(profile)
    settings, arm_dir = arm_profile(profile, arm, seed), arm_run_dir(run_dir, arm, seed)
    step = source_step(settings)
    return json_digest({"sources": source_key(settings, arm_dir, step, sets), "version": CONTROL_VERSION,
                        "adam": [adam_key(settings, arm_dir, step, sets), ADAM_DOSE_EXPECTED, ADAM_FULL_TOLERANCE],
                        "dose": [list(DOSE_WEIGHTS), list(DOSE_SOURCES), DOSE_EXPECTED],
                        "curvature": [CURVATURE_SOURCE, CURVATURE_STRATUM, list(controls.TEMPERATURES),
                                      CURVATURE_EXPECTED]}, 16)


def control_arm(profile: Profile):
    name, seed = control_run(profile)
    return next(a for a in study_arms(profile) if a.name == name), seed


def control_record(profile: Profile, run_dir, sets, test) -> dict:
    """The dose and curvature controls of the control run (module docstring), from controls.json when it was made
    under the same key, else computed and stored. `sets`: the control seed's example sets; `test`: its arm's
    (the banded) test split."""
    path, key = controls_path(run_dir), control_key(profile, run_dir, sets)
    relative = path.relative_to(Path(run_dir)).as_posix()
    with run_folder.lock(run_dir):
        problem = run_folder.listed_file_problem(run_dir, relative, key)
        if problem is None:
            return read_json(path)
        if path.exists():
            print(f"Recomputing the known-answer controls: {problem}", flush=True)
        record = _controls(profile, run_dir, sets, test, key)
        atomic_write_json(path, record)
        run_folder.add_file(run_dir, relative, key)
        return record


def _controls(profile: Profile, run_dir, sets, test, key: str) -> dict:
    arm, seed = control_arm(profile)
    settings, arm_dir = arm_profile(profile, arm, seed), arm_run_dir(run_dir, arm, seed)
    step, loss_fn, example_set = source_step(settings), get_loss(settings.loss), source_set(sets)
    model = load_checkpoint(arm_dir, step, settings)
    strata = {s: stratum_inputs(settings, test, example_set, s) for s in sources.SOURCE_STRATA}
    batch = strata[sources.SOURCE_STRATA[0]][2]
    dose = {k: dose_control(model, loss_fn, {s: v[:2] for s, v in strata.items()}, batch, k) for k in DOSE_SOURCES}
    state = load_adam_state(arm_dir, step, settings)
    adam = {k: adam_dose_control(model, loss_fn, {s: v[:2] for s, v in strata.items()}, batch, k, state)
            for k in DOSE_SOURCES}
    model64 = load_checkpoint(arm_dir, step, settings, dtype=torch.float64)
    curvature = curvature_check(model64, loss_fn, *stratum_inputs(settings, test, example_set, CURVATURE_STRATUM,
                                                                  dtype=torch.float64))
    return json.loads(json.dumps({"key": key, "arm": arm.name, "seed": seed, "step": step, "dose": dose,
                                  "adam_dose": adam, "curvature": curvature}, default=float))


def readouts_passed(record: dict) -> dict:
    """{"Q": bool, "Q^g": bool, "C5": bool, "Q^A": bool, "Q^Ag": bool, "C5^A": bool, "Adam full": bool}: whether each
    readout passed its dose control on every dosed source (Adam's: 4. of the module docstring; "Adam full" the whole
    self bracket against its w = 1 curve). A record without Adam's controls (made before them) passes none of Adam's."""
    out = {short: all(d["readouts"][name]["passed"] for d in record["dose"].values())
           for name, short in PRIMARY_READOUTS.items()}
    adam = list(record.get("adam_dose", {}).values())
    out.update({short: bool(adam) and all(d["readouts"][name]["passed"] for d in adam)
                for name, short in ADAM_READOUTS.items()})
    out["Adam full"] = bool(adam) and all(d["full"]["passed"] for d in adam)
    return out


# ----------------------------------------------------------------------------- 3. training-level dose


def training_dose(profile: Profile, run_dir, attribute: str = "Eyeglasses") -> dict:
    """Eyeglasses' mean |residual| at each TRAINING_DOSE_ARMS run's last checkpoint on the glasses band's test
    images (file names of the banded split; each arm's own images and labels for those files).

    Returns {"arms", "bands", "seeds" (those all three arms have), "per_seed": {arm: [values]}, "means",
    "monotone" (of the means, strictly increasing), "monotone_seeds" (seeds whose three values increase)}."""
    arms = {a.name: a for a in study_arms(profile)}
    chosen = [arms[name] for name in TRAINING_DOSE_ARMS]
    seeds = [s for s in chosen[0].seeds if all(s in a.seeds for a in chosen)]
    banded = arm_profile(profile, arms["independent"], seeds[0])
    test = load_profile_split(banded, "test", progress=False)
    in_band = split_truth(prepare_data(banded, progress=False), test.filenames).in_glasses_band
    names = [f for f, b in zip(test.filenames, in_band) if b]
    per_seed = {}
    for arm in chosen:
        values = []
        for seed in seeds:
            settings = arm_profile(profile, arm, seed)
            split = load_profile_split(settings, "test", progress=False)
            at = torch.as_tensor([split.filenames.index(f) for f in names], dtype=torch.long)
            model = load_checkpoint(arm_run_dir(run_dir, arm, seed), settings.steps, settings)
            values.append(controls.mean_abs_residual(model, get_loss(settings.loss), prepare_inputs(split.images[at]),
                                                     split.attributes[at], attribute))
        per_seed[arm.name] = values
    means = [float(np.mean(per_seed[a.name])) for a in chosen]
    rows = np.array([per_seed[a.name] for a in chosen])
    return {"arms": list(TRAINING_DOSE_ARMS), "bands": [a.band for a in chosen], "seeds": seeds, "images": len(names),
            "per_seed": per_seed, "means": means, "monotone": controls.monotone(means),
            "monotone_seeds": int(sum(controls.monotone(rows[:, k]) for k in range(len(seeds))))}
