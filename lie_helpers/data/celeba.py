"""CelebA: the real files through torchvision, and a tensor cache (generated data: generated_celeba).

Three parts, one layout
-----------------------
Everything here reads the layout of torchvision's ``CelebA`` under a folder
``<root>/celeba/``::

    img_align_celeba/000001.jpg ...     178x218 RGB JPEG faces
    list_attr_celeba.txt                count; 40 attribute names; "000001.jpg -1  1 ..."
    list_eval_partition.txt             "000001.jpg 0"   (0 train, 1 valid, 2 test)
    identity_CelebA.txt                 "000001.jpg 2880"
    list_bbox_celeba.txt                count; "image_id x_1 y_1 width height"; rows
    list_landmarks_align_celeba.txt     count; "lefteye_x ... rightmouth_y"; rows

* Real data: :class:`CelebAFolder` is ``torchvision.datasets.CelebA`` (its parsing, its
  ``download=True``) with checks that name the missing or corrupt file and the fix.
  Torchvision compares the md5 checksums of the five text files with the official ones;
  ``verify_checksums=False`` is the one, explicit way to skip that (it still checks that
  every file is present). Generated data always needs it.
* Generated data: :func:`lie_helpers.data.generated_celeba.generate_celeba` writes the layout
  above, and the ground truth the real data lacks, ``<root>/celeba/ground_truth.json``.
* Fast input: :func:`load_split_tensors` decodes a split once into uint8 tensors at the
  training resolution (center crop 178x178, antialiased bilinear resize), cached as
  safetensors keyed by :func:`data_fingerprint`, split and resolution.

Nothing here knows a profile: a profile picks its data in :mod:`lie_helpers.training.datasets`
(``prepare_data``, ``load_profile_split``).

Fingerprint and cache
---------------------
:func:`data_fingerprint` hashes the contents of the five text files and the sorted list
of image file names with their byte sizes; it does not read the image bytes (real
CelebA's 1.4 GB would take long), so replacing an image by another of exactly the same
size is not noticed. The cache lives in ``<data_dir>/cache/`` unless ``cache_dir`` is
given, one file per (fingerprint, split, resolution); stale files of the same split and
resolution are removed when a new one is written.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import CelebA
from torchvision.datasets.utils import check_integrity
from tqdm.auto import tqdm

from .attributes import ATTRIBUTES, BASE_FOLDER, GROUND_TRUTH, IMAGE_FOLDER, TEXT_FILES
from .progress import report as report_progress
from .storage import atomic_save_tensors, load_tensors, read_metadata, remove_stale_temporaries, show

PREPROCESS_VERSION = 1
SPLITS = ("train", "valid", "test", "all")
OFFICIAL_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------
def _fix_text(root) -> str:
    """How to get data into `root`, with paths as the user can type them where they ran the command (storage.show)."""
    where = show(root)
    return (
        "To fix this, either\n"
        f"  * generate CelebA-format data offline: lie_helpers.data.generated_celeba.generate_celeba({where!r}, n_images=4000)\n"
        "    (or use a profile with data_source='generated' and lie_helpers.training.datasets.prepare_data(profile)), or\n"
        f"  * use real CelebA: CelebAFolder({where!r}, download=True) (needs internet and gdown; Google Drive\n"
        "    often refuses with a quota error), or download it by hand from the official page\n"
        f"    {OFFICIAL_PAGE}: 'Align&Cropped Images' (img_align_celeba.zip), 'Anno'\n"
        "    (list_attr_celeba.txt, identity_CelebA.txt, list_bbox_celeba.txt, list_landmarks_align_celeba.txt)\n"
        "    and 'Eval' (list_eval_partition.txt); put the text files and the unzipped img_align_celeba/ folder into\n"
        f"    {show(Path(root) / BASE_FOLDER)}/ so that {show(Path(root) / BASE_FOLDER / IMAGE_FOLDER / '000001.jpg')} exists."
    )


def _is_generated(root) -> bool:
    return (Path(root) / BASE_FOLDER / GROUND_TRUTH).exists()


def _regenerate_or_redownload(root, generated: bool | None = None) -> str:
    """The fix for a missing or corrupt file: draw generated data anew, download real data again. `generated`: what
    the folder held when reading began (None: look now; a folder removed meanwhile no longer says)."""
    if _is_generated(root) if generated is None else generated:
        return (f"This folder holds GENERATED data: delete the folder {show(Path(root) / BASE_FOLDER)} and run "
                "again (prepare_data, load_profile_split or generate_celeba draws it anew; notebook 01 does).")
    return (f"Re-download the file from the official CelebA page {OFFICIAL_PAGE} ('Anno' and 'Eval' folders) "
            f"into {show(Path(root) / BASE_FOLDER)}/.")


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------
def check_celeba_folder(root, *, verify_checksums: bool = True) -> Path:
    """Check that `root`/celeba/ holds CelebA's files; return the celeba/ folder.

    Raises FileNotFoundError naming what is missing (and how to get it), or, with
    `verify_checksums`, ValueError naming a text file whose md5 differs from the official one.
    Does not parse the files or open the images (CelebAFolder and the loaders do).
    """
    root = Path(root)
    base = root / BASE_FOLDER
    if not root.is_dir():
        raise FileNotFoundError(f"Data folder {show(root)} does not exist.\n{_fix_text(root)}")
    if not base.is_dir():
        hint = ""
        if (root / IMAGE_FOLDER).is_dir() or (root / "list_attr_celeba.txt").exists():
            hint = (f"\n{root} looks like the celeba/ folder itself: pass its parent folder "
                    f"{root.parent} instead (torchvision reads <root>/celeba/).")
        raise FileNotFoundError(f"{show(root)} has no '{BASE_FOLDER}/' folder.{hint}\n{_fix_text(root)}")
    missing = [name for name, _, _ in TEXT_FILES if not (base / name).is_file()]
    image_dir = base / IMAGE_FOLDER
    if not image_dir.is_dir():
        missing.append(IMAGE_FOLDER + "/")
    elif not any(image_dir.iterdir()):
        missing.append(IMAGE_FOLDER + "/ (the folder is empty)")
    if missing:
        fix = _regenerate_or_redownload(root) if _is_generated(root) else _fix_text(root)
        raise FileNotFoundError(f"{show(base)} is incomplete; missing: {', '.join(missing)}.\n{fix}")
    if verify_checksums:
        md5 = {filename: digest for _, digest, filename in CelebA.file_list}
        bad = [name for name, _, _ in TEXT_FILES if not check_integrity(str(base / name), md5[name])]
        if bad:
            if _is_generated(root):
                raise ValueError(
                    f"{', '.join(bad)} in {base} do not match the md5 checksums of the official CelebA files: "
                    f"this folder holds GENERATED CelebA-format data ({GROUND_TRUTH} is present), which never "
                    "matches them. Load it with verify_checksums=False (CelebAFolder(..., verify_checksums=False), "
                    "load_split_tensors(..., verify_checksums=False)).")
            raise ValueError(
                f"{', '.join(bad)} in {base} do not match the md5 checksums of the official CelebA files, so "
                f"they are corrupt or modified. {_regenerate_or_redownload(root)} If you changed them on purpose, "
                "load with verify_checksums=False.")
    return base


# --------------------------------------------------------------------------------------
# torchvision's CelebA with explicit checks
# --------------------------------------------------------------------------------------
class CelebAFolder(CelebA):
    """``torchvision.datasets.CelebA`` with clear errors and an explicit checksum switch.

    Same arguments as torchvision's class (root is the folder that holds ``celeba/``), plus
    keyword-only ``verify_checksums``: True (default) keeps torchvision's md5 check of the
    text files against the official CelebA files; False only checks that every file is
    present, which generated data (or a modified copy of CelebA) needs. Parsing, splits,
    targets and ``download=True`` are torchvision's own. Missing files raise
    FileNotFoundError, checksum mismatches and corrupt text files ValueError, each naming
    the file and the fix; ``dataset[i]`` on a corrupt JPEG raises ValueError naming it.
    """

    def __init__(self, root, split: str = "train", target_type="attr", transform=None,
                 target_transform=None, download: bool = False, *, verify_checksums: bool = True) -> None:
        self.verify_checksums = verify_checksums
        self._prechecked = False
        if not isinstance(split, str) or split.lower() not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
        if download:
            self.root = os.path.expanduser(root) if isinstance(root, str) else root
            try:
                self.download()          # torchvision's: skipped when the files pass _check_integrity
            except Exception as err:  # noqa: BLE001 - gdown, quota and network errors all get the manual route
                raise RuntimeError(f"Downloading CelebA into {Path(root) / BASE_FOLDER} failed "
                                   f"({type(err).__name__}: {err}).\n{_fix_text(root)}") from err
        check_celeba_folder(root, verify_checksums=verify_checksums)
        self._prechecked = True
        try:
            super().__init__(root, split=split, target_type=target_type, transform=transform,
                             target_transform=target_transform, download=False)
        except (ValueError, IndexError, TypeError, RuntimeError) as err:
            raise self._diagnose(err) from err
        self._validate()

    def _check_integrity(self) -> bool:
        if self._prechecked:
            return True
        if self.verify_checksums:
            return super()._check_integrity()
        base = Path(self.root) / self.base_folder
        return all((base / name).is_file() for name, _, _ in TEXT_FILES) and (base / IMAGE_FOLDER).is_dir()

    def _corrupt(self, name: str, why: str) -> ValueError:
        path = Path(self.root) / self.base_folder / name
        return ValueError(f"{path} is corrupt: {why}. {_regenerate_or_redownload(self.root)}")

    def _diagnose(self, err: Exception) -> Exception:
        """Find the text file that torchvision could not use (parsing it alone with torchvision's parser)."""
        rows = {}
        for name, header, columns in TEXT_FILES:
            try:
                csv = self._load_csv(name, header=header)
            except Exception as parse_err:  # noqa: BLE001 - any parse failure names the file
                return self._corrupt(name, f"torchvision cannot parse it ({type(parse_err).__name__}: {parse_err})")
            if csv.data.ndim != 2 or csv.data.shape[1] != columns:
                return self._corrupt(name, f"expected {columns} value column(s), found shape {tuple(csv.data.shape)}")
            rows[name] = csv.data.shape[0]
        expected = rows["list_eval_partition.txt"]
        for name, count in rows.items():
            if count != expected:
                return self._corrupt(name, f"it has {count} rows but list_eval_partition.txt has {expected}")
        return ValueError(f"torchvision could not load CelebA from {Path(self.root) / self.base_folder}: {err}")

    def _validate(self) -> None:
        names = [n for n in self.attr_names if n]
        if tuple(names) != ATTRIBUTES:
            raise self._corrupt("list_attr_celeba.txt", "its second line is not CelebA's 40 attribute names")
        bad = bad_attribute_value(Path(self.root) / self.base_folder / "list_attr_celeba.txt")
        if bad:
            raise self._corrupt("list_attr_celeba.txt", f"attribute values must be exactly -1 or 1; {bad}")

    @property
    def generated(self) -> bool:
        if not hasattr(self, "_generated"):
            self._generated = _is_generated(self.root)
        return self._generated

    def image_path(self, index: int) -> Path:
        return Path(self.root) / self.base_folder / IMAGE_FOLDER / self.filename[index]

    def __getitem__(self, index: int):
        try:
            image, target = super().__getitem__(index)
            if isinstance(image, Image.Image):
                image.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise _bad_image(self.image_path(index), err, self.generated) from err
        return image, target


def bad_attribute_value(path) -> str | None:
    """Where list_attr_celeba.txt holds a value other than exactly -1 or 1 ('line 7, Bald: 2'), or None.

    Checked on the text: torchvision maps each value v to (v + 1) // 2, which reads 2 as
    present and 0 as absent without complaint.
    """
    lines = Path(path).read_text().splitlines()[2:]
    values = {v for line in lines for v in line.split()[1:]}
    if values <= {"-1", "1"}:
        return None
    for number, line in enumerate(lines, 3):
        for name, value in zip(ATTRIBUTES, line.split()[1:]):
            if value not in ("-1", "1"):
                return f"line {number}, {name}: {value!r}"
    return None


def _bad_image(path: Path, err: Exception, generated: bool | None = None) -> Exception:
    """The error for an image that is missing or cannot be decoded; `generated` as in _regenerate_or_redownload."""
    root = path.parent.parent.parent
    generated = _is_generated(root) if generated is None else generated
    if isinstance(err, FileNotFoundError):
        return FileNotFoundError(f"Image {show(path)} is missing. {_regenerate_or_redownload(root, generated)}")
    return ValueError(f"Image {show(path)} cannot be decoded ({type(err).__name__}: {err}); the file is corrupt. "
                      + (_regenerate_or_redownload(root, generated) if generated else
                         f"Re-extract it from img_align_celeba.zip ('Align&Cropped Images' on {OFFICIAL_PAGE})."))


# --------------------------------------------------------------------------------------
# Fingerprint, tensor cache
# --------------------------------------------------------------------------------------
def data_fingerprint(data_dir) -> str:
    """16 hex digits identifying the CelebA files under `data_dir`/celeba/.

    Covers the contents of the five text files and the sorted image file names with their
    byte sizes (not the image bytes). Raises FileNotFoundError if files are missing.
    """
    base = check_celeba_folder(data_dir, verify_checksums=False)
    h = hashlib.sha256()
    for name, _, _ in TEXT_FILES:
        h.update(name.encode() + b"\0")
        with open(base / name, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    entries = sorted((e.name, e.stat().st_size) for e in os.scandir(base / IMAGE_FOLDER) if e.is_file())
    h.update(IMAGE_FOLDER.encode() + b"\0")
    for name, size in entries:
        h.update(f"{name}\0{size}\0".encode())
    return h.hexdigest()[:16]


def _decode(path: Path, size: int, generated: bool | None = None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            left, top = int(round((w - side) / 2)), int(round((h - side) / 2))
            # crop, then resize: the same pixels as torchvision's CenterCrop(178) + Resize(S) on PIL images
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:
        raise _bad_image(path, err, generated) from err


def _remove_stale_caches(cache_dir: Path, stem: str, keep: Path, source: str) -> None:
    """Delete older cache files of the same source, split and resolution (other sources' files stay)."""
    for stale in cache_dir.glob(f"{stem}-*.safetensors"):
        if stale == keep:
            continue
        try:
            same_source = read_metadata(stale).get("source") == source
        except Exception:  # noqa: BLE001 - an unreadable cache file is stale by definition
            same_source = True
        if same_source:
            stale.unlink(missing_ok=True)


@dataclass
class SplitTensors:
    """One split decoded at the training resolution."""
    images: torch.Tensor          # uint8 [N, 3, S, S]
    attributes: torch.Tensor      # int64 [N, 40], values in {0, 1}, CelebA's order
    filenames: list
    fingerprint: str
    split: str
    image_size: int


def load_split(data_dir, split: str, image_size: int, *, verify_checksums: bool = True, cache_dir=None,
               progress: bool = True, workers: int | None = None) -> SplitTensors:
    """Like :func:`load_split_tensors`, but returns a :class:`SplitTensors` with file names."""
    data_dir = Path(data_dir)
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    image_size = int(image_size)
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}.")
    base = check_celeba_folder(data_dir, verify_checksums=verify_checksums)
    generated = _is_generated(data_dir)      # what the folder holds now names the fix of a file missing later
    fp = data_fingerprint(data_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else data_dir / "cache"
    stem = f"celeba-{split}-{image_size}px-p{PREPROCESS_VERSION}"
    path = cache_dir / f"{stem}-{fp}.safetensors"
    if path.exists():
        try:
            t = load_tensors(path)
            meta = read_metadata(path)
            if meta.get("fingerprint") == fp and t["images"].shape[1:] == (3, image_size, image_size):
                return SplitTensors(t["images"], t["attributes"].to(torch.int64), json.loads(meta["filenames"]),
                                    fp, split, image_size)
        except Exception as err:  # noqa: BLE001 - any unreadable cache file is rebuilt
            warnings.warn(f"Rebuilding the unreadable cache file {path} ({err}).")
    ds = CelebAFolder(data_dir, split=split, verify_checksums=False)   # checksums checked above
    image_dir = base / IMAGE_FOLDER
    present = {e.name for e in os.scandir(image_dir)}
    missing = [name for name in ds.filename if name not in present]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) of split '{split}' are missing from {image_dir}, e.g. {', '.join(missing[:5])}. "
            + _regenerate_or_redownload(data_dir, generated))
    n = len(ds.filename)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    paths = [image_dir / name for name in ds.filename]
    started = time.perf_counter()
    with tqdm(total=n, desc=f"Decoding CelebA {split} at {image_size}px", unit="img", disable=not progress) as bar:
        if workers > 1 and n > 64:
            with ThreadPoolExecutor(workers) as pool:
                for i, arr in enumerate(pool.map(lambda p: _decode(p, image_size, generated), paths, chunksize=64)):
                    images[i] = arr
                    bar.update(1)
                    report_progress(f"decoding {split}", i + 1, n, unit="images")
        else:
            for i, p in enumerate(paths):
                images[i] = _decode(p, image_size, generated)
                bar.update(1)
                report_progress(f"decoding {split}", i + 1, n, unit="images")
    images_t = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    attributes = ds.attr.to(torch.uint8)
    meta = {"fingerprint": fp, "split": split, "image_size": image_size, "preprocess_version": PREPROCESS_VERSION,
            "preprocess": "center crop to the short side (178x178), bilinear antialiased resize",
            "source": str(data_dir.resolve()), "filenames": json.dumps(list(ds.filename)),
            "attribute_names": json.dumps(list(ATTRIBUTES)),
            "decode_seconds": f"{time.perf_counter() - started:.2f}"}
    remove_stale_temporaries(cache_dir, recursive=False)   # of killed writers of this cache
    atomic_save_tensors(path, {"images": images_t, "attributes": attributes}, meta)
    _remove_stale_caches(cache_dir, stem, path, meta["source"])
    return SplitTensors(images_t, attributes.to(torch.int64), list(ds.filename), fp, split, image_size)


def load_split_tensors(data_dir, split: str, image_size: int, *, verify_checksums: bool = True, cache_dir=None,
                       progress: bool = True, workers: int | None = None):
    """(images uint8 [N, 3, S, S], attributes int64 [N, 40] in {0, 1}) of one split, cached.

    `data_dir` holds ``celeba/``; `split` is 'train', 'valid', 'test' or 'all'; S =
    `image_size`. Images are center-cropped to 178x178 and resized (bilinear, antialiased)
    once, then read from ``<cache_dir or data_dir/cache>/celeba-<split>-<S>px-p1-<fingerprint>.safetensors``
    (written atomically) until the source files change. Generated data needs
    ``verify_checksums=False``. Missing files raise FileNotFoundError, corrupt files
    ValueError, naming the file and the fix, before decoding starts where possible.
    """
    s = load_split(data_dir, split, image_size, verify_checksums=verify_checksums, cache_dir=cache_dir,
                   progress=progress, workers=workers)
    return s.images, s.attributes

