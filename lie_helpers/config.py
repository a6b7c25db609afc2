"""Profiles: every setting of a run, visible at a glance.

A profile fixes data, model, training and analysis settings. `get_profile` is the one
way to obtain one; an unknown profile or setting fails here, before any work starts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Profile:
    name: str
    # data
    data_source: str = "generated"      # "generated" (drawn offline) or "real" (CelebA files)
    data_root: str = "../data"          # folder holding celeba/ (relative to notebooks/)
    generated_images: int = 4000        # images drawn for generated data (all splits)
    data_seed: int = 0
    image_size: int = 32                # training resolution (square)
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
    # hypothesis experiments
    seeds: tuple = (0, 1, 2)

    def hash(self) -> str:
        """Short hash of the settings that determine a training run's results."""
        keys = ["data_source", "generated_images", "data_seed", "image_size", "depth", "width",
                "steps", "batch_size", "lr", "betas", "checkpoint_every", "seed", "loss", "eval_images"]
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PROFILES = {
    # Seconds on a 2-core CPU: proves the chain runs end to end (CI).
    "ci": Profile(name="ci", generated_images=600, image_size=32, width=0.125, steps=80,
                  checkpoint_every=40, eval_images=59, seeds=(0, 1)),
    # Minutes on a laptop CPU, large enough for the hair attributes to become uncertain.
    "default": Profile(name="default"),
    # The write-up's settings, for a GPU with real or full-size generated data.
    "full": Profile(name="full", generated_images=202_599, image_size=64, width=1.0,
                    steps=5000, checkpoint_every=100, eval_images=4096),
}


def get_profile(name: str, **overrides) -> Profile:
    """The named profile with `overrides` applied; unknown names or settings raise ValueError."""
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r}. Choose one of: {', '.join(PROFILES)}.")
    fields = {f.name for f in dataclasses.fields(Profile)} - {"name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown} for profile {name!r}. "
                         f"Valid settings: {', '.join(sorted(fields))}.")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(PROFILES[name], **overrides)


@dataclass(frozen=True)
class RunPaths:
    """Where one run's artifacts live. Each notebook reads the folders of the one before."""
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def brackets(self) -> Path:
        return self.root / "brackets"

    @property
    def figures(self) -> Path:
        return self.root / "figures"


def run_paths(profile: Profile, run_dir=None, runs_root="../runs") -> RunPaths:
    """The run folder of `profile`: `run_dir` if given, else <runs_root>/<profile name>."""
    return RunPaths(Path(run_dir) if run_dir is not None else Path(runs_root) / profile.name)


def data_dir(profile: Profile) -> Path:
    """The folder that holds `celeba/`: data_root itself for real data, a seeded sub-folder for generated."""
    root = Path(profile.data_root)
    if profile.data_source == "real":
        return root
    if profile.data_source == "generated":
        return root / f"generated-n{profile.generated_images}-seed{profile.data_seed}"
    raise ValueError(f"Unknown data_source {profile.data_source!r}; use 'generated' or 'real'.")


def describe_source(profile: Profile) -> str:
    """One line for figure captions: which profile and which data produced a result."""
    data = ("real CelebA" if profile.data_source == "real"
            else f"GENERATED CelebA-format data ({profile.generated_images} images, seed {profile.data_seed})")
    return f"profile '{profile.name}' · {data} · MXResNet{profile.depth} width {profile.width}, {profile.image_size}px"
