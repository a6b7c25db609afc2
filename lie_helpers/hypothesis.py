"""Does the loss explain the brackets? The two-loss experiment of notebook 04.

The write-up's hypothesis: Black_Hair and Brown_Hair dominate the brackets because the
independent loss treats mutually exclusive attributes as independent. The test: train the
same model on the same data and seeds with (a) the independent loss and (b) hair colour as
one categorical output (lie_helpers.losses), and compare how strongly the brackets at
matched checkpoints perturb the hair outputs.

One currency for every model, whatever outputs it uses for an attribute (a sigmoid, or a
member of a softmax group: lie_helpers.losses): the Bernoulli marginal "attribute k is
present". The primary scale, `fisher`, measures its change in Fisher units, d log-odds ·
√(p_k(1 − p_k)) ≈ √(2 KL); a softmax group's logits are defined only up to a shared constant,
and every scale here removes it. Sensitivity checks: `log_odds` (the change of each
attribute's log-odds, log p_k/(1 − p_k)), `log_prob` (of its log-probability) and
`log_odds_per_spread` (log-odds perturbations divided by how much each attribute's log-odds
vary over the batch, which removes the scale of each output).

Bracket magnitudes are heavy-tailed and two losses give two different dynamics, so every
comparison is made within one model and checkpoint first: the hair magnitude against
control attributes (effect size, log10 ratio), against the unconfusable hair colours
(ambiguity contrast) and against all other attributes (AUROC); then those numbers are
averaged over each run's checkpoints and compared across losses, paired by seed
(lie_helpers.stats: t intervals, sign-flip tests, Holm).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .analysis import analyse_run, load_run_brackets
from .attributes import ATTRIBUTES, HAIR_COLOURS
from .config import Profile, data_dir
from .generated_celeba import read_ground_truth
from .losses import get_loss
from .run_folder import RunPaths
from .stats import auroc, t_interval
from .train import list_checkpoints, train

LOSS_NAMES = ("independent", "categorical_hair_matched")
HAIR_PAIR = ("Black_Hair", "Brown_Hair")            # exclusive and confusable (generated ground truth)
CORRELATED_CONTROLS = ("Heavy_Makeup", "Wearing_Lipstick")  # phi 0.83 in the generated data, never exclusive
NOISE_CONTROL = "Attractive"                        # drawn independently of everything, not drawn on the face
CONTROLS = (*CORRELATED_CONTROLS, NOISE_CONTROL)
UNAMBIGUOUS_HAIR = ("Blond_Hair", "Gray_Hair")      # exclusive with them, never confused (generated ground truth)
PERTURBATION_SCALES = ("fisher", "log_odds", "log_prob")   # the first is primary
SCALES = (*PERTURBATION_SCALES, "log_odds_per_spread")


# ----------------------------------------------------------------------------- the runs

@dataclass(frozen=True)
class HypothesisRun:
    loss: str
    seed: int
    profile: Profile
    run_dir: Path


def hypothesis_profile(P: Profile, loss: str, seed: int, checkpoints: int = 5) -> Profile:
    """P with `loss` and `seed`, saving about `checkpoints` checkpoints instead of every P.checkpoint_every steps.

    The cadence is a multiple of P's, so every checkpoint also exists in the main run. It
    only thins what is saved (and analysed): checkpoints evaluate in eval mode without
    touching parameters, buffers or random state, so the trajectory is the same.
    """
    every = P.checkpoint_every * max(1, round(P.steps / checkpoints / P.checkpoint_every))
    return dataclasses.replace(P, loss=loss, seed=seed, checkpoint_every=every)


def hypothesis_runs(P: Profile, paths: RunPaths, checkpoints: int = 5) -> list[HypothesisRun]:
    """Both losses × P.seeds, each saving about `checkpoints` checkpoints (see hypothesis_profile).
    The main run (notebook 01) is reused, with all its checkpoints, where it has that loss and seed."""
    runs = []
    for loss in LOSS_NAMES:
        for seed in P.seeds:
            if loss == P.loss and seed == P.seed:
                runs.append(HypothesisRun(loss, seed, P, paths.root))
            else:
                runs.append(HypothesisRun(loss, seed, hypothesis_profile(P, loss, seed, checkpoints),
                                          paths.root / "hypothesis" / f"{loss}-seed{seed}"))
    return runs


def train_and_analyse(runs: list[HypothesisRun], train_split, valid_split, test_split, *,
                      progress: bool = True) -> dict:
    """Train every run (or resume, or skip if done) and store its bracket records; returns seconds per run."""
    seconds = {}
    for run in runs:
        start = time.perf_counter()
        train(run.profile, run.run_dir, (train_split.images, train_split.attributes),
              (valid_split.images, valid_split.attributes), fingerprint=train_split.fingerprint, progress=progress)
        analyse_run(run.profile, (test_split.images, test_split.attributes), run_dir=run.run_dir,
                    fingerprint=train_split.fingerprint, progress=progress)
        seconds[(run.loss, run.seed)] = time.perf_counter() - start
    return seconds


# ----------------------------------------------------------------------------- comparable outputs

def log_softmax_pushforward(d_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """d log softmax(z) = dz − Σ_k p_k dz_k (last dimension): invariant to a shared shift of dz."""
    p = logits.softmax(-1)
    return d_logits - (p * d_logits).sum(-1, keepdim=True)


def log_odds_pushforward(d_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """d log(p_k / (1 − p_k)) of a softmax = dz_k − Σ_{j≠k} q_j dz_j, q = softmax over the classes j ≠ k.

    Equal to d log p_k / (1 − p_k), written without the division so it stays exact when p_k → 1.
    """
    k = logits.shape[-1]
    others = logits.unsqueeze(-2).expand(*logits.shape[:-1], k, k).masked_fill(
        torch.eye(k, dtype=torch.bool, device=logits.device), float("-inf"))
    q = others.softmax(-1)                                  # row k: softmax over j ≠ k
    return d_logits - (q @ d_logits.unsqueeze(-1)).squeeze(-1)


def _attribute_columns(loss_fn, out_shape, binary, groups, dtype):
    """Scatter per-output values into [..., 40] in CelebA's order (a group's "none" class is no attribute)."""
    out = torch.zeros(*out_shape, len(ATTRIBUTES), dtype=dtype)
    out[..., loss_fn.binary_index] = binary
    for members, values in zip(loss_fn.group_index, groups):
        out[..., members] = values[..., :len(members)]
    return out


def _by_kind(loss: str, tensors: torch.Tensor, logits: torch.Tensor):
    """The loss, its binary block (values and logits) and each softmax group's (values and logits)."""
    loss_fn = get_loss(loss)
    n_binary = len(loss_fn.binary_index)
    return (loss_fn, tensors[..., :n_binary], logits[..., :n_binary],
            [(tensors[..., where], logits[..., where]) for where in loss_fn.group_slices()])


def attribute_log_odds(loss: str, logits: torch.Tensor) -> torch.Tensor:
    """Each attribute's log-odds of being present, [..., 40] in CelebA's order: a binary output's logit, and for
    a softmax group's member log p_k/(1 − p_k) = z_k − logsumexp_{j≠k} z_j."""
    logits = logits.double()
    loss_fn, binary, _, groups = _by_kind(loss, logits, logits)
    odds = []
    for z, _ in groups:
        k = z.shape[-1]
        others = z.unsqueeze(-2).expand(*z.shape[:-1], k, k).masked_fill(
            torch.eye(k, dtype=torch.bool, device=z.device), float("-inf"))
        odds.append(z - others.logsumexp(-1))
    return _attribute_columns(loss_fn, logits.shape[:-1], binary, odds, logits.dtype)


def attribute_perturbations(loss: str, d_logits: torch.Tensor, logits: torch.Tensor,
                            scale: str = "fisher") -> torch.Tensor:
    """The outputs' perturbation [..., n_outputs] as each attribute's change, [..., 40] in CelebA's order.

    Scales (PERTURBATION_SCALES): `log_odds` (d log p_k/(1 − p_k)), `log_prob` (d log p_k) and
    `fisher`, the change of the Bernoulli marginal "attribute k present" in Fisher units,
    d log-odds · √(p_k(1 − p_k)) = dp_k / √(p_k(1 − p_k)): to second order ±√(2 KL(p_k ‖ p_k + dp_k)),
    whatever outputs the model uses for it (a sigmoid, or p_k of a softmax). A shared shift of
    a group's logits changes none of them. `logits` broadcasts against d_logits.
    """
    if scale not in PERTURBATION_SCALES:
        raise ValueError(f"scale must be one of {PERTURBATION_SCALES}, got {scale!r}.")
    d_logits, logits = d_logits.double(), logits.double().expand_as(d_logits)
    loss_fn, binary_d, binary_z, groups = _by_kind(loss, d_logits, logits)
    if scale == "log_prob":                                 # d log σ(z) = σ(−z) dz
        binary, grouped = torch.sigmoid(-binary_z) * binary_d, [log_softmax_pushforward(d, z) for d, z in groups]
    else:
        binary, grouped = binary_d, [log_odds_pushforward(d, z) for d, z in groups]
    out = _attribute_columns(loss_fn, d_logits.shape[:-1], binary, grouped, d_logits.dtype)
    if scale == "fisher":                                   # √(p(1 − p)) = exp(−(softplus(l) + softplus(−l)) / 2)
        l = attribute_log_odds(loss, logits)
        out = out * torch.exp(-(F.softplus(l) + F.softplus(-l)) / 2)
    return out


def common_mode_fraction(d_logits: torch.Tensor) -> torch.Tensor:
    """Fraction of ‖dz‖² along (1, …, 1) (last dimension): the part of a softmax-logit change that changes
    nothing."""
    return d_logits.mean(-1).pow(2) * d_logits.shape[-1] / d_logits.pow(2).sum(-1)


def attribute_magnitudes(perturbations: torch.Tensor) -> torch.Tensor:
    """[checkpoints, pairs, batch, 40] -> [checkpoints, 40]: RMS over the batch, then median over the pairs.

    The median asks whether *most* brackets move an attribute (the write-up's observation),
    and is not carried by one extreme pair.
    """
    return perturbations.pow(2).mean(dim=2).sqrt().median(dim=1).values


# ----------------------------------------------------------------------------- within one model and checkpoint

def attribute_mask(names) -> np.ndarray:
    return np.isin(np.array(ATTRIBUTES), list(names))


def hair_vs_controls(log_magnitudes: np.ndarray, controls=CONTROLS) -> np.ndarray:
    """log10(hair magnitude / median control magnitude), hair = geometric mean of Black_Hair and Brown_Hair."""
    hair = log_magnitudes[..., attribute_mask(HAIR_PAIR)].mean(-1)
    return hair - np.median(log_magnitudes[..., attribute_mask(controls)], axis=-1)


def ambiguity_contrast(log_magnitudes: np.ndarray) -> np.ndarray:
    """log10(Black & Brown / Blond & Gray), geometric means: the confusable hair colours against the
    unconfusable ones. Both sides are exclusive hair outputs of the same kind in the same model,
    so the contrast isolates ambiguity from exclusivity and from how the hair outputs are built."""
    return (log_magnitudes[..., attribute_mask(HAIR_PAIR)].mean(-1)
            - log_magnitudes[..., attribute_mask(UNAMBIGUOUS_HAIR)].mean(-1))


# ----------------------------------------------------------------------------- ground truth

def ambiguous_filenames(P: Profile) -> set[str]:
    """Black- or brown-labelled images whose hair shade makes their own label uncertain (generated data
    only; real CelebA has no such list, so the set is empty)."""
    if P.data_source != "generated":
        return set()
    return {name for pair in read_ground_truth(data_dir(P))["ambiguous_pairs"] for name in pair["ambiguous_images"]}


def attribute_groups(P: Profile) -> dict[str, list[str]]:
    """Which attributes are exclusive & ambiguous, exclusive only, hidden, noise, or other visible ones.

    Generated data: read from its ground truth (lie_helpers.generated_celeba). Real CelebA has none:
    there the write-up's reading (hair colours exclusive, Black/Brown confusable) is assumed
    and no attribute is known to be noise or hidden.
    """
    if P.data_source == "generated":
        gt = read_ground_truth(data_dir(P))
        exclusive = {a for group in gt["exclusive_groups"] for a in group}
        ambiguous = {a for pair in gt["ambiguous_pairs"] for a in pair["attributes"]}
        hidden, noise = set(gt["hidden_correlated_attributes"]), set(gt["noise_attributes"])
    else:
        exclusive, ambiguous, hidden, noise = set(HAIR_COLOURS), set(HAIR_PAIR), set(), set()
    groups = {"exclusive & ambiguous": exclusive & ambiguous, "exclusive only": exclusive - ambiguous,
              "hidden (correlated)": hidden, "noise": noise}
    groups["other visible"] = set(ATTRIBUTES) - set().union(*groups.values())
    return {name: [a for a in ATTRIBUTES if a in members] for name, members in groups.items()}


# ----------------------------------------------------------------------------- one run, many runs

@dataclass
class RunMagnitudes:
    """log10 per-attribute bracket magnitudes of one run at the requested checkpoints."""
    loss: str
    seed: int
    steps: list
    log_magnitudes: np.ndarray    # [checkpoints, 40]
    common_mode: float            # losses with softmax groups: median share of a group's logit perturbation along
                                  # (1,…,1); nan without groups


def run_magnitudes(run: HypothesisRun, steps, scale: str = SCALES[0]) -> RunMagnitudes:
    """Read a run's bracket records (lie_helpers.analysis) and summarise them at `steps` on `scale` (SCALES)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}.")
    record = load_run_brackets(run.profile, run.run_dir)
    missing = sorted(set(steps) - set(record.steps))
    if missing:
        raise ValueError(f"{run.run_dir} has no bracket records for steps {missing}: run analyse_run first.")
    index = [record.steps.index(s) for s in steps]
    d_logits, logits = record.logit_perturbation[index], record.batch_logits[index]
    base = "log_odds" if scale == "log_odds_per_spread" else scale
    log_m = attribute_magnitudes(attribute_perturbations(run.loss, d_logits, logits[:, None], base)).log10()
    if scale == "log_odds_per_spread":      # ÷ the spread of each attribute's log-odds over the batch
        log_m = log_m - attribute_log_odds(run.loss, logits).std(dim=1).log10()
    slices = get_loss(run.loss).group_slices()
    common = (torch.cat([common_mode_fraction(d_logits[..., where].double()).flatten() for where in slices])
              .median().item() if slices else float("nan"))
    return RunMagnitudes(run.loss, run.seed, list(steps), log_m.numpy(), common)


def matched_steps(runs: list[HypothesisRun], from_step: int = 0) -> list[int]:
    """Checkpoint steps (≥ from_step) that every run has."""
    common = set.intersection(*(set(list_checkpoints(r.run_dir)) for r in runs))
    return sorted(s for s in common if s >= from_step)


QUANTITIES = {"effect": "hair vs controls, log10", "ambiguity": "Black & Brown vs Blond & Gray, log10",
              "auroc": "AUROC, exclusive & ambiguous vs the rest"}


@dataclass
class Comparison:
    """quantity (QUANTITIES) -> loss -> values [seeds, checkpoints]."""
    seeds: list
    steps: list
    tables: dict

    def summary(self, level: float = 0.95) -> dict:
        """'<quantity> <loss>' and '<quantity> difference' ((a) − (b), paired by seed) -> (mean, low, high):
        checkpoints averaged within each run, then a Student-t interval over seeds (lie_helpers.stats)."""
        a, b = LOSS_NAMES
        rows = {}
        for name, table in self.tables.items():
            for loss in LOSS_NAMES:
                rows[f"{name} {loss}"] = t_interval(table[loss], level)
            rows[f"{name} difference"] = t_interval(table[a] - table[b], level)
        return rows


def window(m: RunMagnitudes, from_step: int) -> np.ndarray:
    """The log-magnitudes of the checkpoints at or after `from_step`."""
    return m.log_magnitudes[[i for i, s in enumerate(m.steps) if s >= from_step]]


def relative_log_magnitudes(m: RunMagnitudes, from_step: int = 0) -> np.ndarray:
    """[40]: each attribute's log10 magnitude minus the median attribute's, same model and checkpoint,
    averaged over the checkpoints ≥ from_step. 0 is a typical attribute; +1 is ten times as large."""
    late = window(m, from_step)
    return (late - np.median(late, axis=-1, keepdims=True)).mean(0)


def compare(magnitudes: list[RunMagnitudes], positives, from_step: int = 0) -> Comparison:
    """Every quantity of every run at the checkpoints ≥ from_step, arranged [seeds, checkpoints] per loss."""
    seeds = sorted({m.seed for m in magnitudes})
    by_key = {(m.loss, m.seed): window(m, from_step) for m in magnitudes}
    positive = attribute_mask(positives)
    measures = {"effect": hair_vs_controls, "ambiguity": ambiguity_contrast,
                "auroc": lambda log_m: auroc(log_m, positive)}
    tables = {name: {loss: np.stack([measure(by_key[loss, s]) for s in seeds]) for loss in LOSS_NAMES}
              for name, measure in measures.items()}
    return Comparison(seeds, [s for s in magnitudes[0].steps if s >= from_step], tables)


def group_aurocs(magnitudes: list[RunMagnitudes], groups: dict, from_step: int = 0) -> dict:
    """group -> loss -> AUROC of the group's attributes against all others, averaged over seeds and checkpoints.

    Separates candidate explanations: if attributes that are only uncertain (noise, hidden)
    rank as high as the exclusive ones, brackets track uncertainty, not the loss's fit.
    """
    return {name: {loss: float(np.mean([auroc(window(m, from_step), attribute_mask(members))
                                         for m in magnitudes if m.loss == loss]))
                   for loss in LOSS_NAMES}
            for name, members in groups.items() if members}


def ci_text(interval) -> str:
    """'+0.12 [−0.03, +0.27]' for a (mean, low, high) interval."""
    mean, low, high = interval
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def _side(interval) -> int:
    """+1 when a (mean, low, high) interval lies above 0, −1 below, 0 when it contains 0."""
    return 1 if interval[1] > 0 else -1 if interval[2] < 0 else 0


# What each side of an interval means: +1 above zero, 0 containing it, −1 below.
OBSERVATION = {1: "The brackets perturb Black_Hair and Brown_Hair more than the controls: reproduced.",
               0: "Not reliably more than the controls: the write-up's observation is not reproduced here.",
               -1: "Less than the controls: the write-up's observation is not reproduced here."}
SPECIFICITY = {1: "The confusable pair stands out among the hair colours, as the hypothesis needs.",
               0: "The confusable pair does not stand out among the hair colours: whatever the hair outputs "
                  "show is not tied to the exclusive & ambiguous pair.",
               -1: "The confusable pair is perturbed *less* than the unconfusable hair colours."}
LOSS_EFFECT = {1: "The categorical loss lowers the hair outputs' share of the brackets, as the hypothesis predicts.",
               0: "The interval includes zero: these seeds do not show that the loss changes the hair outputs' share.",
               -1: "The categorical loss *raises* the hair outputs' share: against the hypothesis."}


def verdict(summaries: dict, primary: str = SCALES[0]) -> list[str]:
    """Plain-language reading of {scale: Comparison.summary()}: what the numbers support, what they do not."""
    s = summaries[primary]
    auc = s["auroc independent"]
    lines = [f"Observation, (a) independent loss: hair vs controls {ci_text(s['effect independent'])} "
             f"(log10, 95% interval; ×{10 ** s['effect independent'][0]:.2f}); "
             f"AUROC {auc[0]:.2f} [{auc[1]:.2f}, {auc[2]:.2f}]. "
             + OBSERVATION[_side(s["effect independent"])],
             f"Specificity, (a): Black & Brown vs the unconfusable Blond & Gray {ci_text(s['ambiguity independent'])}. "
             + SPECIFICITY[_side(s["ambiguity independent"])],
             f"Loss, (a) − (b): hair vs controls {ci_text(s['effect difference'])}, Black & Brown vs Blond & Gray "
             f"{ci_text(s['ambiguity difference'])}, AUROC {ci_text(s['auroc difference'])}. "
             + LOSS_EFFECT[_side(s["effect difference"])]]
    agree = len({_side(summary["effect difference"]) for summary in summaries.values()}) == 1
    lines.append("Robustness: the loss comparison " + ("reads the same" if agree else "does not read the same")
                 + " on every scale (" + ", ".join(f"{scale}: {ci_text(summary['effect difference'])}"
                                                   for scale, summary in summaries.items()) + ").")
    return lines
