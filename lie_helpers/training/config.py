"""Profiles: every setting of a run, visible at a glance.

A profile fixes data, model, training and analysis settings. `get_profile` is the one
way to obtain one; an unknown profile or setting, or a value of the wrong type or out of
range, fails here (every Profile is checked when it is made), before any work starts.

A run with overrides lives in its own folder, named from them (`run_folder_name`), so an
experiment never blocks or overwrites the profile's own run.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..data.generated_model import MAX_BAND
from ..data.storage import json_digest
from .losses import LOSSES
from .mxresnet import LAYERS
from .run_folder import RunPaths

DATA_SOURCES = ("generated", "real")
NOISE_BANDS = ("hair_noise_band", "glasses_noise_band")   # generated data only (generated_model.noise_bands)


# ----------------------------------------------------------------------------- checks

def _integer(minimum: int):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"an integer >= {minimum}")
        if value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return value
    return check


def _positive_number(value):
    if not _is_number(value):
        raise TypeError("a number > 0")
    if not (math.isfinite(value) and value > 0):
        raise ValueError("a number > 0")
    return float(value)


def _fraction(maximum: float):
    def check(value):
        if not _is_number(value):
            raise TypeError(f"a number in [0, {maximum}]")
        if not 0 <= value <= maximum:
            raise ValueError(f"a number in [0, {maximum}]")
        return float(value)
    return check


def _one_of(choices):
    def check(value):
        if value not in choices:
            raise ValueError(f"one of {', '.join(map(repr, choices))}")
        return value
    return check


def _text(value):
    if not isinstance(value, (str, Path)) or not str(value):
        raise TypeError("a non-empty path")
    return str(value)


def _flag(value):
    if not isinstance(value, bool):
        raise TypeError("true or false")
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _betas(value):
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(_is_number(b) and 0 <= b < 1 for b in value)):
        raise ValueError("a pair [beta1, beta2], each in [0, 1)")
    return tuple(float(b) for b in value)


def _stages(value):
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) and re.fullmatch(r"\d\d", v) for v in value):
        raise ValueError('a list of two-digit notebook numbers, e.g. ["00", "01"] (empty: every notebook)')
    return tuple(value)


def _seeds(value):
    if not isinstance(value, (tuple, list)) or not value:
        raise TypeError("a non-empty list of distinct integers >= 0")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value) or len(set(value)) != len(value):
        raise ValueError("a non-empty list of distinct integers >= 0")
    return tuple(value)


# What each setting accepts; a check returns the value in its canonical type (int -> float
# for a float setting, list -> tuple) and raises with a description of what is allowed.
CHECKS = {
    "name": _text,
    "data_source": _one_of(DATA_SOURCES), "data_root": _text, "generated_images": _integer(3),
    "data_seed": _integer(0), "image_size": _integer(1),
    "hair_noise_band": _fraction(MAX_BAND), "glasses_noise_band": _fraction(MAX_BAND),
    "depth": _one_of(tuple(LAYERS)), "width": _positive_number,
    "steps": _integer(1), "batch_size": _integer(1), "lr": _positive_number, "betas": _betas,
    "checkpoint_every": _integer(1), "seed": _integer(0), "loss": _one_of(tuple(LOSSES)),
    "eval_images": _integer(1),
    "bracket_examples": _integer(2), "pushforward_batch": _integer(1), "save_full_brackets": _flag,
    "swap_checkpoints": _integer(0), "swap_sweeps": _flag, "side_run_steps": _integer(0),
    "seeds": _seeds, "study_band": _fraction(MAX_BAND), "study_examples": _integer(2), "study_batch": _integer(4),
    "study_sets": _integer(1), "stages": _stages,
}


def _checked(name: str, value):
    try:
        return CHECKS[name](value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Setting {name} must be {err}; got {value!r}.") from None



# ----------------------------------------------------------------------------- profiles

@dataclass(frozen=True)
class Profile:
    name: str
    # data
    data_source: str = "generated"      # "generated" (drawn offline) or "real" (CelebA files)
    data_root: str = "../data"          # folder holding celeba/ (relative to notebooks/)
    generated_images: int = 4000        # images drawn for generated data (all splits)
    data_seed: int = 0
    image_size: int = 32                # training resolution (square)
    hair_noise_band: float = 0.0        # generated data: fraction of black/brown faces at posterior 0.5
    glasses_noise_band: float = 0.0     # generated data: fraction of faces with faint, coin-labelled glasses
    # model
    depth: int = 18
    width: float = 0.25                 # channel multiplier; 1.0 is MXResNet as published
    # training (the write-up: Adam lr 5e-3, betas (0.8, 0.999), batch 32, 5000 steps)
    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-3
    betas: tuple = (0.8, 0.999)
    checkpoint_every: int = 50
    seed: int = 0
    loss: str = "independent"           # see lie_helpers.losses.LOSSES
    eval_images: int = 384              # validation images scored at each checkpoint
    # brackets
    bracket_examples: int = 6           # first N test examples: N(N-1)/2 pairs
    pushforward_batch: int = 32         # fixed batch whose logits the brackets are pushed onto
    save_full_brackets: bool = False    # also store every bracket (float16 safetensors)
    # real order effects (lie_helpers.analysis.order_effects): the checkpoints where two training steps are swapped
    swap_checkpoints: int = 4
    # notebook 02 §5b–c: one swap of each swap checkpoint again across 7 learning rates on two stems (the expansion's
    # residual orders), and continued for 100 later steps (what persists); off: only the swaps of §5
    swap_sweeps: bool = True
    # notebook 05's run of another loss beside the main run (lie_helpers.study.runs.loss_runs): its steps (0: steps)
    side_run_steps: int = 0
    # the decisive test (notebook 04, lie_helpers.study): its arms train with these seeds, on data whose
    # noise bands (hair and glasses) are study_band; bracket examples per stratum, pushforward batch and
    # example sets per seed
    seeds: tuple = (0, 1, 2)
    study_band: float = 0.3
    study_examples: int = 6
    study_batch: int = 32
    study_sets: int = 2
    # which notebooks the chain runs for this profile (empty: all)
    stages: tuple = ()

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _checked(f.name, getattr(self, f.name)))
        if self.data_source == "real" and any(getattr(self, k) for k in NOISE_BANDS):
            raise ValueError(f"{' and '.join(NOISE_BANDS)} only exist for generated data: set them to 0 "
                             "or use data_source='generated'.")
        if self.checkpoint_every > self.steps:
            raise ValueError(f"checkpoint_every must be at most steps ({self.steps}), got {self.checkpoint_every}.")

    def hash(self) -> str:
        """Short hash of the settings that determine a training run's results (the noise bands only when
        on, so that runs made before they existed keep their hash)."""
        keys = ["data_source", "generated_images", "data_seed", "image_size", "depth", "width",
                "steps", "batch_size", "lr", "betas", "checkpoint_every", "seed", "loss", "eval_images"]
        keys += [k for k in NOISE_BANDS if getattr(self, k)]
        return json_digest({k: getattr(self, k) for k in keys}, 12)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PROFILES = {
    # Seconds on a 2-core CPU: proves the chain runs end to end (CI).
    "ci": Profile(name="ci", generated_images=600, image_size=32, width=0.125, steps=80,
                  checkpoint_every=40, eval_images=59, seeds=(0, 1), swap_checkpoints=1,
                  study_examples=2, study_batch=8, study_sets=1),
    # Minutes on a laptop CPU, large enough for the hair attributes to become uncertain. The decisive
    # test (notebook 04) is the `study` profile's, not part of this chain.
    "default": Profile(name="default", stages=("00", "01", "02", "03", "05")),
    # The write-up's settings (network, optimizer, batch, steps, checkpoint spacing), with full-size generated or
    # real data. Validation: 1,024 images a checkpoint (per-attribute accuracy to ±0.016), not 4,096: scoring
    # 4,096 at 51 checkpoints measured 31 min on 2 loaded cores (8.9 ms an image), for curves no comparison uses.
    # Notebook 05's categorical side run: 500 steps, not 5,000 (half an hour of training), because notebook 05 reads
    # its last checkpoint for an identity that holds at every step (every field of a softmax group sums to zero).
    # Real swaps (notebook 02 §5) at one checkpoint, not four: one swap of two full-size steps in float64 took 482 s
    # on 2 loaded cores. Without the sweeps of §5b–c (swap_sweeps): they repeat that swap 14 times across learning
    # rates (at 482 s a swap, about 1.9 h) and continue it for 100 steps, and what they measure (the
    # expansion's residual orders 1, 2, 3; what persists is Adam's bracket) is a property of the method, checked on the
    # default profile; the brackets themselves took 2.7 to 4.4 min a checkpoint on 2 loaded cores (51 checkpoints).
    "full": Profile(name="full", generated_images=202_599, image_size=64, width=1.0, steps=5000, checkpoint_every=100,
                    eval_images=1024, side_run_steps=500, swap_checkpoints=1, swap_sweeps=False,
                    stages=("00", "01", "02", "03", "05")),
    # The decisive test of the write-up's hypothesis (notebook 04 alone; `make study`): 8 seeds an arm,
    # 2000 steps, so that the model reaches the bands' posterior (lie_helpers.study).
    "study": Profile(name="study", steps=2000, checkpoint_every=500, seeds=tuple(range(8)), stages=("04",)),
}


def get_profile(name: str, **overrides) -> Profile:
    """The named profile with `overrides` applied; unknown names or settings, and values of the
    wrong type or out of range, raise ValueError naming the setting and what it accepts."""
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r}. Choose one of: {', '.join(PROFILES)}.")
    fields = {f.name for f in dataclasses.fields(Profile)} - {"name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown} for profile {name!r}. "
                         f"Valid settings: {', '.join(sorted(fields))}.")
    return dataclasses.replace(PROFILES[name], **overrides)


def swap_steps(profile: Profile) -> list[int]:
    """The `swap_checkpoints` checkpoints, evenly spread inside the run (never step 0, whose Adam state is empty,
    nor the last), where real order effects are measured; training keeps their Adam state."""
    grid = list(range(profile.checkpoint_every, profile.steps, profile.checkpoint_every))
    if not grid or profile.swap_checkpoints == 0:
        return []
    wanted = [profile.steps * k / (profile.swap_checkpoints + 1) for k in range(1, profile.swap_checkpoints + 1)]
    return sorted({min(grid, key=lambda s: abs(s - w)) for w in wanted})


# ----------------------------------------------------------------------------- run folders

def profile_overrides(profile: Profile) -> dict:
    """The settings in which `profile` differs from the named profile it was made from."""
    base = PROFILES.get(profile.name) or Profile(name=profile.name)
    return {f.name: getattr(profile, f.name) for f in dataclasses.fields(Profile)
            if getattr(profile, f.name) != getattr(base, f.name)}


def run_folder_name(profile_name: str, overrides: dict | None = None) -> str:
    """The run folder's name: the profile's name alone, or with the overrides that change it and a
    short hash of them, e.g. "default-steps2000-3f2a9c" (readable, deterministic, one per setting)."""
    changed = profile_overrides(get_profile(profile_name, **(overrides or {})))
    if not changed:
        return profile_name
    readable = "-".join(f"{k}{_compact(v)}" for k, v in sorted(changed.items()))
    return f"{profile_name}-{readable[:60]}-{json_digest(changed, 6)}"


def _compact(value) -> str:
    text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return re.sub(r"[^A-Za-z0-9.,_]+", "_", text)


def run_paths(profile: Profile, run_dir=None, runs_root="../runs") -> RunPaths:
    """The run folder of `profile`: `run_dir` if given, else <runs_root>/<run_folder_name>, so a
    profile with overrides never shares the folder of the profile's own run."""
    if run_dir is not None:
        return RunPaths(Path(run_dir))
    return RunPaths(Path(runs_root) / run_folder_name(profile.name, profile_overrides(profile)))


def data_dir(profile: Profile) -> Path:
    """The folder that holds `celeba/`: data_root itself for real data, a seeded sub-folder for generated
    (named with its noise bands when they are on, e.g. generated-n4000-seed0-hairband0.1)."""
    root = Path(profile.data_root)
    if profile.data_source == "real":
        return root
    bands = "".join(f"-{k.split('_')[0]}band{getattr(profile, k):g}" for k in NOISE_BANDS if getattr(profile, k))
    return root / f"generated-n{profile.generated_images}-seed{profile.data_seed}{bands}"


def describe_source(profile: Profile) -> str:
    """One line for figure captions: which profile and which data produced a result."""
    data = ("real CelebA" if profile.data_source == "real"
            else f"GENERATED CelebA-format data ({profile.generated_images} images, seed {profile.data_seed}"
                 + "".join(f", {k.replace('_', ' ')} {getattr(profile, k):g}" for k in NOISE_BANDS if getattr(profile, k))
                 + ")")
    return f"profile '{profile.name}' · {data} · MXResNet{profile.depth} width {profile.width}, {profile.image_size}px"
