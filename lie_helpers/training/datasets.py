"""A profile's data: where it lives, drawing it when it is generated, and its splits at the profile's resolution.

The data layer (:mod:`lie_helpers.data`) knows folders, files and tensors; this module is where a
:class:`~lie_helpers.training.config.Profile` picks them: :func:`prepare_data` makes the data
available in :func:`~lie_helpers.training.config.data_dir`, :func:`load_profile_split` loads a split.
"""
from __future__ import annotations

from pathlib import Path

from ..data.celeba import SplitTensors, check_celeba_folder, load_split
from ..data.generated_celeba import generate_celeba
from .config import Profile, data_dir


def prepare_data(profile: Profile, *, verify_checksums: bool | None = None, progress: bool = True) -> Path:
    """Make `profile`'s data available; return the folder that holds ``celeba/``.

    Generated source: draws the data if it is missing (nothing to do when present).
    Real source: checks the folder (files present; md5 checksums unless
    `verify_checksums` is False, default True for real data).
    """
    root = data_dir(profile)
    if profile.data_source == "generated":
        generate_celeba(root, profile.generated_images, profile.data_seed, progress=progress,
                        hair_band=profile.hair_noise_band, glasses_band=profile.glasses_noise_band)
        check_celeba_folder(root, verify_checksums=False)
    else:
        check_celeba_folder(root, verify_checksums=True if verify_checksums is None else verify_checksums)
    return root


def profile_verify_checksums(profile: Profile) -> bool:
    """Whether `profile`'s data can pass torchvision's md5 check (only real CelebA can)."""
    return profile.data_source == "real"


def load_profile_split(profile: Profile, split: str, *, cache_dir=None, progress: bool = True) -> SplitTensors:
    """`prepare_data(profile)` then :func:`~lie_helpers.data.celeba.load_split` at the profile's image size and
    checksum setting."""
    root = prepare_data(profile, progress=progress)
    return load_split(root, split, profile.image_size, verify_checksums=profile_verify_checksums(profile),
                      cache_dir=cache_dir, progress=progress)
