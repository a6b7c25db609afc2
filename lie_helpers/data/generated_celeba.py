"""Generated CelebA-format data: faces drawn from their attributes, with the ground truth.

:func:`generate_celeba` draws faces (PIL ImageDraw) whose visible features follow their
attributes and writes torchvision's CelebA layout (see :mod:`lie_helpers.data.celeba`), so the
real loading path is what runs; plus ``<root>/celeba/ground_truth.json``, the structure
real data lacks, read back by :func:`read_ground_truth`. Deterministic from the seed. Three
steps in three modules: attributes (:mod:`lie_helpers.data.generated_model`: the attribute
model and the noise bands), drawing (:mod:`lie_helpers.data.faces`), writing (here).

The generated data's ground truth (generator version 1)
-------------------------------------------------------
Attributes are drawn first (``generated_model.sample_attributes``, vectorised, no images
needed), then each face is drawn from its attribute row (``faces.render_face``). Marginal
rates follow CelebA's published frequencies (``generated_model.CELEBA_BASE_RATES``);
conditional probabilities are solved so that each marginal stays at its CelebA rate in
expectation.

* Exclusive groups: hair colour (Black_Hair, Blond_Hair, Brown_Hair, Gray_Hair; at most
  one, about 37% of faces have none of them and are drawn with red/auburn hair); hair
  texture (Straight_Hair, Wavy_Hair; at most one). Bald faces have no hair, so none of
  the hair colours, Bangs or textures; No_Beard excludes Goatee, Mustache and Sideburns;
  5_o_Clock_Shadow only appears without a beard.
* Ambiguous pair: Black_Hair / Brown_Hair. The label is drawn first, then a shade t on
  one dark-to-brown colour ramp, t ~ N(0.20, 0.12) for black and N(0.56, 0.13) for brown,
  clipped to [0, 1]. The tails overlap, so some black-labelled faces are lighter than some
  brown-labelled ones: no model can separate them (Bayes error about 7%).
  Every image's shade is in ``hair_shade.txt``; ``ground_truth.json`` lists the
  ambiguous images (posterior of their own label below 0.8 given the shade).
  Blond (yellow ramp), gray (grey ramp) and "no hair colour" (red ramp) do not overlap.
* Correlated pairs (all listed with their realised phi coefficient in the json): Male
  with Goatee, Mustache, Sideburns, 5_o_Clock_Shadow, Bald, Bushy_Eyebrows, Big_Nose,
  Wearing_Necktie (+) and with No_Beard, Wearing_Lipstick, Heavy_Makeup, Arched_Eyebrows,
  Wearing_Earrings, Wearing_Necklace, Rosy_Cheeks, Blond_Hair, Wavy_Hair, Bangs (-);
  Heavy_Makeup with Wearing_Lipstick (+, makeup only with lipstick); Young with
  Gray_Hair, Receding_Hairline, Chubby, Eyeglasses (-); Chubby with Double_Chin (+);
  Smiling with Mouth_Slightly_Open and High_Cheekbones (+).
* Visible attributes (35): every attribute changes the drawing except the five below.
  Male: wider, squarer jaw, short hair (female: long hair to the shoulders); Young=0:
  forehead lines, crow's feet and cheek folds; Blurry: Gaussian blur of radius 3.
* Hidden but correlated (1): High_Cheekbones, not drawn, predictable only through Smiling.
* Noise (4): Attractive, Bags_Under_Eyes, Oval_Face, Pointy_Nose: not drawn and drawn
  independently of everything, at their base rates. Controls: a model can only learn
  their base rate.
* Noise bands (off by default; a dial for experiments, ``generated_model.noise_bands``): a
  fraction `hair_band` of the black- and brown-haired faces is drawn in ONE shade, the one
  whose posterior is 0.5 (``generated_model.BAND_SHADE``), and labelled Black_Hair or
  Brown_Hair by a fair coin; a fraction `glasses_band` of all faces wears faint glasses (the glasses blended
  at 50% opacity over the face) labelled Eyeglasses by a fair coin. Both true posteriors
  are exactly 0.5; the glasses band is ambiguous without being exclusive. The bands come
  from their own random stream (nested: the images of a smaller fraction are among those
  of a larger one, with the same coins), so with both fractions 0 every file is byte-
  identical to data generated without them. ``ground_truth.json`` lists each band (its
  fraction, mechanism and images) and ``posterior.txt`` every image's true posterior of
  Black_Hair, Brown_Hair and Eyeglasses given what is drawn
  (``generated_model.true_posteriors``).
* Splits: the first 80.3% of files are train, the next 9.8% valid, the rest test
  (CelebA's 162770 / 19867 / 19962 proportions, contiguous as in CelebA).
* Identities: one identity per image. Landmarks are the drawn eye centres, nose tip and
  mouth corners; bbox is the drawn face's box in the aligned image (real CelebA's bbox
  refers to the in-the-wild images).
* Per-image variation not tied to attributes: background and clothes colours, skin
  tone, eye colour, shifts of up to 5 px and scale 0.94-1.06.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import filelock
import numpy as np
from tqdm.auto import tqdm

from . import storage
from .progress import report as report_progress
from .attributes import ATTRIBUTES, BASE_FOLDER, GROUND_TRUTH, IMAGE_FOLDER, INDEX
from .faces import DARK_RAMP, DRAWING, HEIGHT, WIDTH, render_face
from .generated_model import (AMBIGUOUS_POSTERIOR, BAND_SHADE, CELEBA_BASE_RATES, CORRELATED_PAIRS, EXCLUSIVE_GROUPS,
                              HIDDEN_CORRELATED, NOISE_ATTRIBUTES, SHADE, VISIBLE_ATTRIBUTES, bayes_error, check_bands,
                              conditional_probabilities, drawn_shades, noise_bands, sample_attributes, true_posteriors)

GENERATOR_VERSION = 1
GENERATION_WAIT_SECONDS = 6 * 3600   # how long a caller waits for another that generates the same folder
# CelebA's partition sizes: 162770 train, 19867 valid, 19962 test of 202599.
SPLIT_FRACTIONS = (162770 / 202599, 19867 / 202599, 19962 / 202599)


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------
def generate_celeba(root, n_images: int = 4000, seed: int = 0, *, overwrite: bool = False,
                    progress: bool = True, workers: int = 1, quality: int = 90,
                    hair_band: float = 0.0, glasses_band: float = 0.0) -> Path:
    """Write generated CelebA-format data to `root`/celeba/ and return `root`.

    `hair_band`, `glasses_band`: the noise bands' fractions (``generated_model.noise_bands``; 0 leaves every
    file as without them). Deterministic from (`n_images`, `seed`, `quality`, the bands): the same
    arguments give byte-identical files
    (with the same Pillow/libjpeg). Generation happens in a hidden sibling folder
    ``root/.celeba.partial-<pid>-<token>`` renamed to ``root/celeba`` at the end, so an
    interrupted run never looks complete (its leftovers are removed by the next run). If
    ``root/celeba`` already holds generated data with the same parameters and generator
    version, it is returned without work; other contents raise ValueError unless
    `overwrite` (which only ever replaces generated data, never real CelebA). `workers` > 1
    draws in that many processes (same bytes as one).

    Safe under concurrent callers (e.g. `make study`'s shards): one generates, holding the lock
    ``root/.celeba.lock``; the others wait for it, then find the finished folder and use it. A finished
    folder is never replaced without `overwrite`, even one that appears while this call draws.
    """
    root = Path(root)
    n_images, seed = int(n_images), int(seed)
    bands = (float(hair_band), float(glasses_band))
    if n_images < 3:
        raise ValueError(f"n_images must be at least 3 (one per split), got {n_images}.")
    check_bands(*bands)
    if _complete(root, n_images, seed, quality, bands):     # the common case: nothing to wait for
        return root
    root.mkdir(parents=True, exist_ok=True)
    with _generation_lock(root, progress):
        return _generate_locked(root, n_images, seed, overwrite, progress, workers, quality, bands)


def _complete(root: Path, n_images: int, seed: int, quality: int, bands) -> bool:
    gt = _read_ground_truth(root) if (root / BASE_FOLDER).exists() else None
    return gt is not None and _params_match(gt, n_images, seed, quality, bands)


@contextlib.contextmanager
def _generation_lock(root: Path, progress: bool):
    """Hold ``root/.celeba.lock`` while generating; a second caller waits (saying so) for as long as the first draws."""
    lock = filelock.FileLock(root / f".{BASE_FOLDER}.lock")
    try:
        lock.acquire(timeout=2)
    except filelock.Timeout:
        if progress:
            print(f"Waiting for another process that is generating {storage.show(root / BASE_FOLDER)} …", flush=True)
        lock.acquire(timeout=GENERATION_WAIT_SECONDS)
    try:
        yield
    finally:
        lock.release()


def _generate_locked(root: Path, n_images: int, seed: int, overwrite: bool, progress: bool, workers: int,
                     quality: int, bands) -> Path:
    target = root / BASE_FOLDER
    if target.exists():
        gt = _read_ground_truth(root)
        if gt is not None and _params_match(gt, n_images, seed, quality, bands):
            return root
        if gt is None:
            raise ValueError(f"{target} exists and does not hold data generated by lie_helpers (no readable "
                             f"{GROUND_TRUTH}); it may be real CelebA. Pick another folder, or move it away.")
        if not overwrite:
            raise ValueError(
                f"{target} holds generated data with other parameters (n_images={gt.get('n_images')}, "
                f"seed={gt.get('seed')}, jpeg_quality={gt.get('jpeg_quality')}, generator_version="
                f"{gt.get('generator_version')}, hair/glasses bands={_bands_of(gt)}); asked for n_images={n_images}, "
                f"seed={seed}, jpeg_quality={quality}, generator_version={GENERATOR_VERSION}, hair/glasses bands={bands}. "
                "Delete it, "
                "choose another folder, or pass overwrite=True.")
    _remove_stale_partials(root)
    tmp = root / f".{BASE_FOLDER}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    image_dir = tmp / IMAGE_FOLDER
    image_dir.mkdir(parents=True)
    try:
        attrs, hair_z = sample_attributes(n_images, seed)
        attrs, in_hair, in_glasses = noise_bands(attrs, seed, *bands)
        names = [f"{i + 1:06d}.jpg" for i in range(n_images)]
        chunk = 256
        jobs = [(str(image_dir), seed, s, attrs[s:s + chunk], hair_z[s:s + chunk], in_hair[s:s + chunk],
                 in_glasses[s:s + chunk], quality) for s in range(0, n_images, chunk)]
        results = []
        bar = tqdm(total=n_images, desc=f"Drawing {n_images} CelebA-format faces", unit="img",
                   disable=not progress)
        if workers > 1:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                for out in pool.map(_render_chunk, jobs):
                    results.extend(out)
                    bar.update(len(out))
                    report_progress("drawing faces", len(results), n_images, unit="images")
        else:
            for job in jobs:
                out = _render_chunk(job)
                results.extend(out)
                bar.update(len(out))
                report_progress("drawing faces", len(results), n_images, unit="images")
        bar.close()
        shades = drawn_shades(attrs, hair_z, in_hair)
        _write_text_files(tmp, names, attrs, shades, results, split_sizes(n_images))
        banded = bands != (0.0, 0.0)
        if banded:
            _write_posteriors(tmp, names, true_posteriors(attrs, shades, in_hair, in_glasses))
        # Written last; the folder only becomes visible through the rename below.
        gt = _ground_truth(attrs, hair_z, n_images, seed, names, quality, (*bands, in_hair, in_glasses) if banded else None)
        (tmp / GROUND_TRUTH).write_text(json.dumps(gt, indent=2) + "\n")
        if target.exists() and not overwrite:     # appeared meanwhile (a caller that took no lock): use it
            shutil.rmtree(tmp, ignore_errors=True)
            if _complete(root, n_images, seed, quality, bands):
                return root
            raise ValueError(f"{target} appeared while generating and holds other data; it is left untouched. "
                             "Delete it, choose another folder, or pass overwrite=True.")
        if target.exists():      # overwrite=True on generated data (checked above)
            trash = root / f".{BASE_FOLDER}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}-old"
            os.rename(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _render_chunk(args):
    """Draw and save faces [start, stop) (top level, so worker processes can run it)."""
    folder, seed, start, rows, hair_z, in_hair_band, in_glasses_band, quality = args
    out = []
    for k, (row, z, band_hair, band_glasses) in enumerate(zip(rows, hair_z, in_hair_band, in_glasses_band)):
        i = start + k
        img, landmarks, bbox = render_face(row, float(z), seed=(int(seed), i),
                                           shade=BAND_SHADE if band_hair else None, faint_glasses=bool(band_glasses))
        img.save(os.path.join(folder, f"{i + 1:06d}.jpg"), "JPEG", quality=quality)
        out.append((landmarks, bbox))
    return out


def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, valid, test) counts for `n` images in CelebA's proportions."""
    n_train = int(round(n * SPLIT_FRACTIONS[0]))
    n_valid = int(round(n * SPLIT_FRACTIONS[1]))
    return n_train, n_valid, n - n_train - n_valid


def _remove_stale_partials(root: Path) -> None:
    for p in root.glob(f".{BASE_FOLDER}.partial-*"):
        try:
            pid = int(p.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or not storage.pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------
# The text files
# --------------------------------------------------------------------------------------
def _write_text_files(folder: Path, names, attrs, shades, drawn, sizes) -> None:
    n = len(names)
    n_train, n_valid, _ = sizes
    part = np.full(n, 2)
    part[:n_train] = 0
    part[n_train:n_train + n_valid] = 1
    signed = attrs.astype(int) * 2 - 1
    lines = [f"{n}", " ".join(ATTRIBUTES)]
    lines += [name + " " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, signed.tolist())]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{name} {p}\n" for name, p in zip(names, part.tolist())))
    (folder / "identity_CelebA.txt").write_text("".join(f"{name} {i + 1}\n" for i, name in enumerate(names)))
    lines = [f"{n}", "image_id x_1 y_1 width height"]
    lines += [name + " " + " ".join(f"{v:4d}" for v in bbox) for name, (_, bbox) in zip(names, drawn)]
    (folder / "list_bbox_celeba.txt").write_text("\n".join(lines) + "\n")
    lines = [f"{n}", "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
                     "leftmouth_x leftmouth_y rightmouth_x rightmouth_y"]
    lines += [name + " " + " ".join(f"{v:4d}" for v in lm) for name, (lm, _) in zip(names, drawn)]
    (folder / "list_landmarks_align_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "hair_shade.txt").write_text(
        "".join(f"{name} {'nan' if np.isnan(t) else f'{t:.4f}'}\n" for name, t in zip(names, shades.tolist())))


def _write_posteriors(folder: Path, names, posteriors: dict) -> None:
    lines = ["image_id " + " ".join(posteriors)]
    lines += [name + " " + " ".join(f"{p:.4f}" for p in row)
              for name, row in zip(names, np.stack(list(posteriors.values()), 1).tolist())]
    (folder / "posterior.txt").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------
# The ground truth record
# --------------------------------------------------------------------------------------
def _ground_truth(attrs, hair_z, n, seed, names, quality: int = 90, bands=None) -> dict:
    """The ground_truth.json record; `bands` = (hair_band, glasses_band, in_hair_band, in_glasses_band)
    when a noise band is on (the record then lists them; without, it is the same as before bands existed)."""
    in_hair = np.zeros(n, bool) if bands is None else bands[2]
    in_glasses = np.zeros(n, bool) if bands is None else bands[3]
    black = attrs[:, INDEX["Black_Hair"]] == 1
    brown = attrs[:, INDEX["Brown_Hair"]] == 1
    post = true_posteriors(attrs, drawn_shades(attrs, hair_z, in_hair), in_hair, in_glasses)["Black_Hair"]
    own = np.where(black, post, 1 - post)
    ambiguous = (black | brown) & (own < AMBIGUOUS_POSTERIOR)
    flipped = (black | brown) & (own < 0.5)
    n_train, n_valid, n_test = split_sizes(n)
    col = {a: attrs[:, i] for i, a in enumerate(ATTRIBUTES)}
    record = {
        "generator": "lie_helpers.generated_celeba.generate_celeba",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "n_images": int(n),
        "image_size": [WIDTH, HEIGHT],
        "jpeg_quality": int(quality),
        "splits": {"train": n_train, "valid": n_valid, "test": n_test,
                   "order": "contiguous: train files first, then valid, then test"},
        "attributes": list(ATTRIBUTES),
        "visible_attributes": list(VISIBLE_ATTRIBUTES),
        "hidden_correlated_attributes": list(HIDDEN_CORRELATED),
        "noise_attributes": list(NOISE_ATTRIBUTES),
        "drawing": DRAWING,
        "exclusive_groups": [list(g) for g in EXCLUSIVE_GROUPS],
        "constraints": [
            "Bald implies none of Black_Hair, Blond_Hair, Brown_Hair, Gray_Hair, Bangs, Straight_Hair, Wavy_Hair, Receding_Hairline",
            "No_Beard implies none of Goatee, Mustache, Sideburns",
            "5_o_Clock_Shadow implies Male and No_Beard",
            "Goatee, Mustache, Sideburns, Bald imply Male; Wearing_Lipstick, Heavy_Makeup imply not Male",
            "Heavy_Makeup implies Wearing_Lipstick",
            "Receding_Hairline implies not Bangs",
        ],
        "ambiguous_pairs": [{
            "attributes": ["Black_Hair", "Brown_Hair"],
            "mechanism": "label drawn first, then a shade t on one dark-to-brown ramp; the shade distributions overlap",
            "colour_ramp": {"t=0": list(DARK_RAMP[0]), "t=1": list(DARK_RAMP[1])},
            "shade_given_label": {k: {"mean": m, "sd": sd, "clipped_to": [0, 1]} for k, (m, sd) in SHADE.items()},
            "bayes_error": round(bayes_error(), 4),
            "ambiguous_definition": f"black or brown face whose posterior for its own label given the shade is < {AMBIGUOUS_POSTERIOR}",
            "ambiguous_fraction_of_black_or_brown": round(float(ambiguous.sum() / max(1, (black | brown).sum())), 4),
            "looks_like_other_fraction_of_black_or_brown": round(float(flipped.sum() / max(1, (black | brown).sum())), 4),
            "ambiguous_images": [names[i] for i in np.flatnonzero(ambiguous)],
            "per_image_shades": "hair_shade.txt (NaN for faces that are neither black- nor brown-haired)",
        }],
        "correlated_pairs": [
            {"attributes": [a, b], "sign": sign, "mechanism": why, "phi": round(_phi(col[a], col[b]), 4)}
            for a, b, sign, why in CORRELATED_PAIRS],
        "base_rates": {a: CELEBA_BASE_RATES[a] for a in ATTRIBUTES},
        "realised_rates": {a: round(float(col[a].mean()), 4) for a in ATTRIBUTES},
        "conditional_probabilities": {k: round(v, 6) for k, v in conditional_probabilities().items()},
        "identity": "one identity per image (identity = image number)",
        "landmarks": "drawn eye centres, nose tip and mouth corners in the 178x218 image",
        "bbox": "drawn face box in the 178x218 image (real CelebA's bbox refers to the in-the-wild images)",
    }
    if bands is not None:
        record["noise_bands"] = {
            "hair": {"attributes": ["Black_Hair", "Brown_Hair"], "fraction": float(bands[0]),
                     "of": "black- or brown-haired faces",
                     "mechanism": f"drawn at shade {BAND_SHADE:.4f}, where P(Black_Hair | shade) = 0.5; "
                                  "labelled Black_Hair or Brown_Hair by a fair coin",
                     "shade": BAND_SHADE, "posterior": 0.5, "images": [names[i] for i in np.flatnonzero(in_hair)]},
            "glasses": {"attributes": ["Eyeglasses"], "fraction": float(bands[1]), "of": "all faces",
                        "mechanism": "glasses blended at 50% opacity whatever the label; labelled Eyeglasses "
                                     "by a fair coin (not exclusive with anything)",
                        "posterior": 0.5, "images": [names[i] for i in np.flatnonzero(in_glasses)]},
            "streams": "own random streams: nested across fractions, the other draws untouched",
            "per_image_posteriors": "posterior.txt (P(Black_Hair), P(Brown_Hair), P(Eyeglasses) given what is drawn)",
        }
    return record


def _phi(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    sx, sy = x.std(), y.std()
    if sx == 0 or sy == 0:
        return 0.0
    return float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy))


def _bands_of(gt: dict) -> tuple[float, float]:
    bands = gt.get("noise_bands")
    return (0.0, 0.0) if bands is None else (bands["hair"]["fraction"], bands["glasses"]["fraction"])


def _params_match(gt: dict, n: int, seed: int, quality: int, bands=(0.0, 0.0)) -> bool:
    return (gt.get("generator_version") == GENERATOR_VERSION and gt.get("n_images") == n
            and gt.get("seed") == seed and gt.get("jpeg_quality") == quality and _bands_of(gt) == tuple(bands))


def read_ground_truth(root) -> dict:
    """The ground truth of the generated data in `root`/celeba/ (see the module docstring); raises naming the
    file when it is missing or corrupt."""
    return storage.read_json(Path(root) / BASE_FOLDER / GROUND_TRUTH)


def _read_ground_truth(root) -> dict | None:
    try:
        return read_ground_truth(root)
    except (FileNotFoundError, ValueError):
        return None


def read_true_posteriors(root) -> tuple[list[str], dict]:
    """(file names, ``generated_model.true_posteriors``) of the generated data in `root`/celeba/, from its records
    (attributes, hair_shade.txt and the bands in ground_truth.json), so data without bands has them too."""
    base = Path(root) / BASE_FOLDER
    gt = read_ground_truth(root)
    rows = (base / "list_attr_celeba.txt").read_text().splitlines()[2:]
    names = [r.split()[0] for r in rows]
    attrs = (np.array([[int(v) for v in r.split()[1:]] for r in rows]) + 1) // 2
    shades = np.array([float(line.split()[1]) for line in (base / "hair_shade.txt").read_text().splitlines()])
    bands = gt.get("noise_bands", {})
    masks = [np.isin(names, bands[k]["images"]) if k in bands else np.zeros(len(names), bool)
             for k in ("hair", "glasses")]
    return names, true_posteriors(attrs, shades, *masks)
