"""CelebA data: generated CelebA-format folders, torchvision's loading path, the tensor cache, errors."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import CelebA

from lie_helpers.data import celeba, faces, generated_celeba, generated_model
from lie_helpers.data.attributes import ATTRIBUTES, HAIR_COLOURS, TEXT_FILES
from lie_helpers.training import datasets
from lie_helpers.training.config import get_profile

N = 60
IDX = {a: i for i, a in enumerate(ATTRIBUTES)}
TEXT = [name for name, _, _ in TEXT_FILES]


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    """A small generated folder shared by the read-only tests."""
    return generated_celeba.generate_celeba(tmp_path_factory.mktemp("gen") / "data", N, seed=0, progress=False)


@pytest.fixture
def copy(gen, tmp_path):
    """A private copy of the generated folder, for tests that damage it."""
    dst = tmp_path / "copy"
    shutil.copytree(gen / "celeba", dst / "celeba")
    return dst


@pytest.fixture(scope="module")
def sample():
    return generated_model.sample_attributes(4000, seed=1)


def _digests(root):
    base = root / "celeba"
    return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- layout
def test_layout_and_text_formats(gen):
    base = gen / "celeba"
    for name in TEXT + ["ground_truth.json", "hair_shade.txt"]:
        assert (base / name).is_file(), name
    lines = (base / "list_attr_celeba.txt").read_text().splitlines()
    assert lines[0] == str(N)
    assert tuple(lines[1].split()) == ATTRIBUTES
    assert len(lines) == N + 2
    first = lines[2].split()
    assert first[0] == "000001.jpg" and len(first) == 41 and set(first[1:]) <= {"-1", "1"}
    assert lines[2][10:14] in (" -1 ", "  1 ")          # CelebA's two-character columns
    part = [int(line.split()[1]) for line in (base / "list_eval_partition.txt").read_text().splitlines()]
    assert part == sorted(part)                          # contiguous, as in CelebA
    assert [part.count(k) for k in (0, 1, 2)] == list(generated_celeba.split_sizes(N)) == [48, 6, 6]
    bbox = (base / "list_bbox_celeba.txt").read_text().splitlines()
    assert bbox[0] == str(N) and bbox[1].split() == ["image_id", "x_1", "y_1", "width", "height"]
    marks = (base / "list_landmarks_align_celeba.txt").read_text().splitlines()
    assert marks[0] == str(N) and len(marks[1].split()) == 10 and len(marks[2].split()) == 11
    images = sorted((base / "img_align_celeba").iterdir())
    assert [p.name for p in images] == [f"{i:06d}.jpg" for i in range(1, N + 1)]
    with Image.open(images[0]) as im:
        assert (im.format, im.size, im.mode) == ("JPEG", (178, 218), "RGB")
    assert not list(gen.glob(".celeba.partial-*"))


@pytest.mark.parametrize("split,count", [("train", 48), ("valid", 6), ("test", 6), ("all", N)])
def test_torchvision_celeba_path_loads_each_split(gen, split, count):
    ds = celeba.CelebAFolder(gen, split=split, target_type=["attr", "identity", "bbox", "landmarks"],
                             verify_checksums=False)
    assert isinstance(ds, CelebA) and len(ds) == count
    assert ds.attr.shape == (count, 40) and set(ds.attr.unique().tolist()) <= {0, 1}
    assert tuple(ds.attr_names) == ATTRIBUTES
    image, (attr, identity, bbox, landmarks) = ds[0]
    assert image.size == (178, 218) and attr.shape == (40,) and bbox.shape == (4,) and landmarks.shape == (10,)
    rows = (gen / "celeba" / "list_attr_celeba.txt").read_text().splitlines()[2:]
    expected = {r.split()[0]: [(int(v) + 1) // 2 for v in r.split()[1:]] for r in rows}
    assert ds.attr.tolist() == [expected[name] for name in ds.filename]


def test_checksum_check_is_on_by_default_and_skipped_explicitly(gen):
    with pytest.raises(ValueError, match="GENERATED.*verify_checksums=False"):
        celeba.CelebAFolder(gen, split="test")
    with pytest.raises(ValueError, match="verify_checksums=False"):
        celeba.load_split_tensors(gen, "test", 16, progress=False)
    with pytest.raises(RuntimeError):                    # why the subclass exists
        CelebA(gen, split="test")
    assert len(celeba.CelebAFolder(gen, split="test", verify_checksums=False)) == 6


# ---------------------------------------------------------------------------- generator
def test_generation_is_deterministic_and_idempotent(gen, tmp_path):
    again = generated_celeba.generate_celeba(tmp_path / "again", N, seed=0, progress=False)
    assert _digests(again) == _digests(gen)
    other = generated_celeba.generate_celeba(tmp_path / "other", N, seed=1, progress=False)
    assert _digests(other)["list_attr_celeba.txt"] != _digests(gen)["list_attr_celeba.txt"]
    stamp = os.stat(again / "celeba" / "list_attr_celeba.txt").st_mtime_ns
    assert generated_celeba.generate_celeba(again, N, seed=0, progress=False) == again      # no work
    assert os.stat(again / "celeba" / "list_attr_celeba.txt").st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other parameters"):
        generated_celeba.generate_celeba(again, N, seed=5, progress=False)
    generated_celeba.generate_celeba(again, 20, seed=5, progress=False, overwrite=True)
    assert json.loads((again / "celeba" / "ground_truth.json").read_text())["n_images"] == 20


def test_interrupted_generation_never_looks_complete(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = generated_celeba.render_face

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generated_celeba, "render_face", flaky)
    with pytest.raises(KeyboardInterrupt):
        generated_celeba.generate_celeba(tmp_path, 30, seed=0, progress=False)
    assert not (tmp_path / "celeba").exists() and not list(tmp_path.glob(".celeba.partial-*"))
    monkeypatch.setattr(generated_celeba, "render_face", real)
    stale = tmp_path / f".celeba.partial-{2**22 + 17}-dead"      # left by a killed process
    stale.mkdir()
    generated_celeba.generate_celeba(tmp_path, 30, seed=0, progress=False)
    assert (tmp_path / "celeba" / "ground_truth.json").exists() and not stale.exists()
    real_like = tmp_path / "real"
    (real_like / "celeba").mkdir(parents=True)
    with pytest.raises(ValueError, match="not hold data generated"):
        generated_celeba.generate_celeba(real_like, 30, overwrite=True, progress=False)


@pytest.mark.slow
def test_parallel_generation_gives_the_same_bytes(gen, tmp_path):
    par = generated_celeba.generate_celeba(tmp_path, N, seed=0, progress=False, workers=2)
    assert _digests(par) == _digests(gen)


def test_base_rates_and_exclusivity(sample):
    attrs, _ = sample
    rates = attrs.mean(axis=0)
    for i, name in enumerate(ATTRIBUTES):
        assert abs(rates[i] - generated_model.CELEBA_BASE_RATES[name]) < 0.03, name
    hair = attrs[:, [IDX[a] for a in HAIR_COLOURS]]
    assert hair.sum(axis=1).max() == 1 and (hair.sum(axis=1) == 0).any()
    assert (attrs[:, IDX["Straight_Hair"]] + attrs[:, IDX["Wavy_Hair"]]).max() == 1
    bald = attrs[:, IDX["Bald"]] == 1
    assert hair[bald].sum() == 0 and attrs[bald, IDX["Bangs"]].sum() == 0
    no_beard = attrs[:, IDX["No_Beard"]] == 1
    assert attrs[no_beard][:, [IDX["Goatee"], IDX["Mustache"], IDX["Sideburns"]]].sum() == 0


def test_correlations_and_noise(sample):
    attrs, _ = sample
    for a, b, sign, _ in generated_model.CORRELATED_PAIRS:
        assert sign * generated_celeba._phi(attrs[:, IDX[a]], attrs[:, IDX[b]]) > 0.1, (a, b)
    for a in generated_model.NOISE_ATTRIBUTES:
        for b in ATTRIBUTES:
            if a != b:
                assert abs(generated_celeba._phi(attrs[:, IDX[a]], attrs[:, IDX[b]])) < 0.08, (a, b)


def test_black_brown_shades_overlap(sample):
    attrs, hair_z = sample
    shade = generated_model.hair_shade(attrs, hair_z)
    black, brown = attrs[:, IDX["Black_Hair"]] == 1, attrs[:, IDX["Brown_Hair"]] == 1
    assert np.isnan(shade[~(black | brown)]).all() and not np.isnan(shade[black | brown]).any()
    assert shade[black].max() > shade[brown].min()
    post = generated_model.black_posterior(shade)
    assert (post[black] < 0.5).mean() > 0.02 and (post[brown] > 0.5).mean() > 0.02
    gt = generated_celeba._ground_truth(attrs, hair_z, len(attrs), 1, [f"{i:06d}.jpg" for i in range(len(attrs))])
    pair = gt["ambiguous_pairs"][0]
    assert pair["attributes"] == ["Black_Hair", "Brown_Hair"] and 0.03 < pair["bayes_error"] < 0.2
    assert len(pair["ambiguous_images"]) > 50


def test_visible_attributes_change_the_drawing_and_others_do_not():
    base = np.zeros(40, dtype=np.int8)
    base[IDX["No_Beard"]] = base[IDX["Young"]] = 1
    ref = np.asarray(faces.render_face(base, seed=(0, 7))[0])
    for name in ATTRIBUTES:
        row = base.copy()
        row[IDX[name]] = 1 - row[IDX[name]]
        changed = not np.array_equal(np.asarray(faces.render_face(row, seed=(0, 7))[0]), ref)
        assert changed == (name in generated_model.VISIBLE_ATTRIBUTES), name


def test_ground_truth_json(gen):
    gt = json.loads((gen / "celeba" / "ground_truth.json").read_text())
    assert gt["seed"] == 0 and gt["n_images"] == N and gt["generator_version"] == generated_celeba.GENERATOR_VERSION
    assert gt["exclusive_groups"][0] == ["Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"]
    groups = gt["visible_attributes"] + gt["hidden_correlated_attributes"] + gt["noise_attributes"]
    assert sorted(groups) == sorted(ATTRIBUTES) and len(groups) == 40
    assert gt["base_rates"]["Male"] == 0.417 and set(gt["realised_rates"]) == set(ATTRIBUTES)
    assert {"Male", "Goatee"} in [set(p["attributes"]) for p in gt["correlated_pairs"]]
    assert gt["splits"]["train"] == 48


# ---------------------------------------------------------------------------- cache
def test_cache_build_reuse_and_rebuild(copy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    images, attrs = celeba.load_split_tensors(copy, "train", 32, verify_checksums=False, cache_dir=cache,
                                              progress=False)
    assert images.shape == (48, 3, 32, 32) and images.dtype == torch.uint8
    assert attrs.shape == (48, 40) and set(attrs.unique().tolist()) <= {0, 1}
    ds = celeba.CelebAFolder(copy, "train", verify_checksums=False,
                             transform=transforms.Compose([transforms.CenterCrop(178), transforms.Resize(32),
                                                           transforms.PILToTensor()]))
    assert torch.equal(attrs, ds.attr)
    assert torch.equal(images[3], ds[3][0])           # the same preprocessing as torchvision's transforms
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1 and celeba.data_fingerprint(copy) in files[0].name

    def boom(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(celeba, "_decode", boom)
    images2, attrs2 = celeba.load_split_tensors(copy, "train", 32, verify_checksums=False, cache_dir=cache,
                                                progress=False)
    assert torch.equal(images, images2) and torch.equal(attrs, attrs2)
    monkeypatch.undo()

    fp = celeba.data_fingerprint(copy)
    path = copy / "celeba" / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    values = lines[2].split()
    values[1 + IDX["Smiling"]] = "1" if values[1 + IDX["Smiling"]] == "-1" else "-1"
    lines[2] = values[0] + " " + " ".join(f"{int(v):2d}" for v in values[1:])
    path.write_text("\n".join(lines) + "\n")
    assert celeba.data_fingerprint(copy) != fp
    s = celeba.load_split(copy, "train", 32, verify_checksums=False, cache_dir=cache, progress=False)
    assert s.attributes[0, IDX["Smiling"]] != attrs[0, IDX["Smiling"]]
    assert torch.equal(s.attributes[1:], attrs[1:]) and s.filenames[0] == "000001.jpg"
    assert [f.name for f in cache.glob("*.safetensors")] == [f"celeba-train-32px-p1-{s.fingerprint}.safetensors"]


def test_default_cache_location_and_profile_helpers(tmp_path):
    profile = get_profile("ci", data_root=str(tmp_path), generated_images=24)
    root = datasets.prepare_data(profile, progress=False)
    assert root == tmp_path / "generated-n24-seed0" and (root / "celeba" / "ground_truth.json").exists()
    s = datasets.load_profile_split(profile, "valid", progress=False)
    assert s.images.shape == (2, 3, profile.image_size, profile.image_size)
    assert len(list((root / "cache").glob("celeba-valid-*.safetensors"))) == 1
    real = get_profile("ci", data_source="real", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.prepare_data(real)


# ---------------------------------------------------------------------------- errors
def test_missing_folder_and_files(copy, tmp_path):
    with pytest.raises(FileNotFoundError, match="(?s)does not exist.*generate_celeba.*Align&Cropped"):
        celeba.load_split_tensors(tmp_path / "nope", "train", 32, verify_checksums=False)
    with pytest.raises(FileNotFoundError, match="pass its parent folder"):
        celeba.CelebAFolder(copy / "celeba", verify_checksums=False)
    (copy / "celeba" / "list_bbox_celeba.txt").unlink()
    with pytest.raises(FileNotFoundError, match="missing: list_bbox_celeba.txt"):
        celeba.CelebAFolder(copy, verify_checksums=False)


def test_missing_image(copy, tmp_path):
    (copy / "celeba" / "img_align_celeba" / "000050.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000050.jpg"):
        celeba.load_split_tensors(copy, "valid", 16, verify_checksums=False, cache_dir=tmp_path, progress=False)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_jpeg_is_named(copy, tmp_path, damage):
    path = copy / "celeba" / "img_align_celeba" / "000055.jpg"
    data = path.read_bytes()
    path.write_bytes(b"not a jpeg at all" if damage == "garbage" else data[: len(data) // 3])
    with pytest.raises(ValueError, match="000055.jpg.*corrupt"):
        celeba.load_split_tensors(copy, "test", 16, verify_checksums=False, cache_dir=tmp_path, progress=False)
    ds = celeba.CelebAFolder(copy, "test", verify_checksums=False)
    with pytest.raises(ValueError, match="000055.jpg"):
        ds[ds.filename.index("000055.jpg")]


@pytest.mark.parametrize("name,edit", [
    ("list_attr_celeba.txt", lambda lines: lines[:3] + [lines[3].replace(" 1", " x", 1)] + lines[4:]),
    ("list_attr_celeba.txt", lambda lines: lines[:-5]),
    ("list_landmarks_align_celeba.txt", lambda lines: lines[:4] + [lines[4].rsplit(" ", 1)[0]] + lines[5:]),
    ("list_eval_partition.txt", lambda lines: lines[:7] + ["000008.jpg zero"] + lines[8:]),
])
def test_corrupt_text_file_is_named(copy, name, edit):
    path = copy / "celeba" / name
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(ValueError, match=f"{name} is corrupt.*delete the folder .*celeba and run again"):
        celeba.CelebAFolder(copy, "train", verify_checksums=False)


@pytest.mark.parametrize("value", ["2", "0", "3", "-2", "+1", "01"])
def test_attribute_values_other_than_exactly_minus_one_or_one_are_refused(copy, value):
    """torchvision maps v to (v + 1) // 2: 2 would read as present and 0 as absent without a check on the text."""
    path = copy / "celeba" / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    row = lines[5].split()
    row[1 + IDX["Bald"]] = value
    lines[5] = " ".join(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"exactly -1 or 1; line 6, Bald: '{re.escape(value)}'"):
        celeba.CelebAFolder(copy, "train", verify_checksums=False)


def test_missing_attribute_file_of_generated_data_names_the_fix_that_works(copy):
    (copy / "celeba" / "list_attr_celeba.txt").unlink()
    with pytest.raises(FileNotFoundError, match="missing: list_attr_celeba.txt") as err:
        celeba.check_celeba_folder(copy, verify_checksums=False)
    assert "generate_celeba(" not in str(err.value)       # it would return at once: the folder exists
    assert f"delete the folder {copy / 'celeba'} and run again" in str(err.value)
    shutil.rmtree(copy / "celeba")                        # the advice, followed, works
    generated_celeba.generate_celeba(copy, N, seed=0, progress=False)
    celeba.check_celeba_folder(copy, verify_checksums=False)


def test_failed_download_points_to_the_manual_route(tmp_path, monkeypatch):
    def refused(*args, **kwargs):
        raise RuntimeError("Too many users have viewed or downloaded this file recently")

    monkeypatch.setattr("torchvision.datasets.celeba.download_file_from_google_drive", refused)
    with pytest.raises(RuntimeError, match="(?s)Too many users.*Align&Cropped.*list_eval_partition.txt"):
        celeba.CelebAFolder(tmp_path, download=True)


# ---------------------------------------------------------------------------- noise bands
BANDS = dict(hair_band=0.3, glasses_band=0.3)


@pytest.fixture(scope="module")
def banded(tmp_path_factory):
    return generated_celeba.generate_celeba(tmp_path_factory.mktemp("banded") / "data", N, seed=0, progress=False,
                                            **BANDS)


def test_bands_off_leave_every_file_byte_identical(gen, tmp_path):
    off = generated_celeba.generate_celeba(tmp_path, N, seed=0, progress=False, hair_band=0.0, glasses_band=0)
    assert _digests(off) == _digests(gen) and not (off / "celeba" / "posterior.txt").exists()
    # the text files as generated before the bands existed (images depend on Pillow's libjpeg: compared above)
    pinned = {"list_attr_celeba.txt": "fad3114b5e3e36a3", "hair_shade.txt": "d020420d254f6b87",
              "ground_truth.json": "5fd0b7384da3a9c4", "list_landmarks_align_celeba.txt": "15201347aea6c0ee"}
    assert {name: _digests(off)[name][:16] for name in pinned} == pinned
    attrs, _ = generated_model.sample_attributes(500, seed=3)
    same, in_hair, in_glasses = generated_model.noise_bands(attrs, 3)
    assert np.array_equal(same, attrs) and not in_hair.any() and not in_glasses.any()
    names, post = generated_celeba.read_true_posteriors(gen)   # data without bands has posteriors too
    attrs, hair_z = generated_model.sample_attributes(N, 0)
    black_or_brown = (attrs[:, IDX["Black_Hair"]] + attrs[:, IDX["Brown_Hair"]]) == 1
    expected = generated_model.black_posterior(generated_model.hair_shade(attrs, hair_z))
    assert np.allclose(post["Black_Hair"][black_or_brown], expected[black_or_brown], atol=2e-3)
    assert (post["Black_Hair"][~black_or_brown] == 0).all()
    assert np.array_equal(post["Eyeglasses"], attrs[:, IDX["Eyeglasses"]])


def test_noise_bands_relabel_by_a_coin_and_are_nested(sample):
    attrs, _ = sample
    black_or_brown = (attrs[:, IDX["Black_Hair"]] == 1) | (attrs[:, IDX["Brown_Hair"]] == 1)
    out, in_hair, in_glasses = generated_model.noise_bands(attrs, 1, 0.3, 0.2)
    assert in_hair.sum() == round(0.3 * black_or_brown.sum()) and not in_hair[~black_or_brown].any()
    assert in_glasses.sum() == round(0.2 * len(attrs))
    hair = out[:, [IDX["Black_Hair"], IDX["Brown_Hair"]]]
    assert (hair[black_or_brown].sum(1) == 1).all() and (hair[~black_or_brown] == 0).all()    # still exclusive
    assert 0.4 < hair[in_hair, 0].mean() < 0.6 and 0.4 < out[in_glasses, IDX["Eyeglasses"]].mean() < 0.6
    changed = (out != attrs).any(0)
    assert set(np.flatnonzero(changed)) <= {IDX["Black_Hair"], IDX["Brown_Hair"], IDX["Eyeglasses"]}
    untouched = ~in_hair & ~in_glasses
    assert np.array_equal(out[untouched], attrs[untouched])
    small, small_hair, small_glasses = generated_model.noise_bands(attrs, 1, 0.1, 0.0)     # nested, same coins
    hair_cols = [IDX["Black_Hair"], IDX["Brown_Hair"]]
    assert (small_hair <= in_hair).all() and np.array_equal(small[small_hair][:, hair_cols], out[small_hair][:, hair_cols])
    assert not small_glasses.any()
    with pytest.raises(ValueError, match=r"hair_band must be a fraction in \[0, 0.9\]"):
        generated_model.noise_bands(attrs, 1, 0.95)


def test_band_faces_are_drawn_in_between():
    assert abs(generated_model.black_posterior(generated_model.BAND_SHADE) - 0.5) < 1e-9
    row = np.zeros(40, dtype=np.int8)
    row[IDX["No_Beard"]] = row[IDX["Young"]] = row[IDX["Black_Hair"]] = 1
    without = np.asarray(faces.render_face(row, seed=(0, 5))[0]).astype(int)
    row[IDX["Eyeglasses"]] = 1
    with_glasses = np.asarray(faces.render_face(row, seed=(0, 5))[0]).astype(int)
    for label in (0, 1):                   # the label does not change a faint drawing
        row[IDX["Eyeglasses"]] = label
        faint = np.asarray(faces.render_face(row, seed=(0, 5), faint_glasses=True)[0]).astype(int)
        assert np.abs(faint - (without + with_glasses) / 2).max() <= 1
        frame = (without != with_glasses).any(-1)
        assert frame.sum() > 200 and np.array_equal(faint[~frame], without[~frame])
    row[IDX["Eyeglasses"]] = 0
    drawn = faces.render_face(row, hair_z=-3.0, seed=(0, 5), shade=generated_model.BAND_SHADE)[0]
    expected = faces._lerp((12, 10, 9), (150, 100, 58), generated_model.BAND_SHADE)
    assert drawn.getpixel((89, 45)) == expected                     # hair on top of the head


def test_band_ground_truth_and_true_posteriors(banded, tmp_path):
    from scipy.stats import norm
    base = banded / "celeba"
    gt = json.loads((base / "ground_truth.json").read_text())
    attrs, hair_z = generated_model.sample_attributes(N, 0)
    out, in_hair, in_glasses = generated_model.noise_bands(attrs, 0, **BANDS)
    names = [f"{i + 1:06d}.jpg" for i in range(N)]
    bands = gt["noise_bands"]
    assert bands["hair"]["fraction"] == 0.3 and bands["glasses"]["fraction"] == 0.3
    assert bands["hair"]["images"] == [names[i] for i in np.flatnonzero(in_hair)] and in_hair.any()
    assert bands["glasses"]["images"] == [names[i] for i in np.flatnonzero(in_glasses)] and in_glasses.any()
    assert set(bands["hair"]["images"]) <= set(gt["ambiguous_pairs"][0]["ambiguous_images"])
    read_names, post = generated_celeba.read_true_posteriors(banded)
    assert read_names == names
    rows = (base / "posterior.txt").read_text().splitlines()
    assert rows[0].split() == ["image_id", "Black_Hair", "Brown_Hair", "Eyeglasses"]
    stored = np.array([[float(v) for v in r.split()[1:]] for r in rows[1:]])
    assert np.allclose(stored, np.stack([post[k] for k in ("Black_Hair", "Brown_Hair", "Eyeglasses")], 1), atol=2e-3)
    # independently: Bayes' rule on the label-given shade normals; 0.5 in the bands; labels elsewhere
    shade = generated_model.hair_shade(out, hair_z)
    pb, pr = (generated_model.CELEBA_BASE_RATES[a] * norm.pdf(shade, *generated_model.SHADE[a])
              for a in ("Black_Hair", "Brown_Hair"))
    natural = (out[:, IDX["Black_Hair"]] + out[:, IDX["Brown_Hair"]] == 1) & ~in_hair
    assert np.allclose(post["Black_Hair"][natural], (pb / (pb + pr))[natural], atol=2e-3)
    assert (post["Black_Hair"][in_hair] == 0.5).all() and (post["Eyeglasses"][in_glasses] == 0.5).all()
    assert np.array_equal(post["Eyeglasses"][~in_glasses], out[~in_glasses, IDX["Eyeglasses"]])
    shades = [line.split()[1] for line in (base / "hair_shade.txt").read_text().splitlines()]
    assert {shades[i] for i in np.flatnonzero(in_hair)} == {f"{generated_model.BAND_SHADE:.4f}"}
    # other bands are other parameters; the same bands are no work
    assert generated_celeba.generate_celeba(banded, N, seed=0, progress=False, **BANDS) == banded
    with pytest.raises(ValueError, match=r"hair/glasses bands=\(0.3, 0.3\).*bands=\(0.1, 0.3\)"):
        generated_celeba.generate_celeba(banded, N, seed=0, progress=False, hair_band=0.1, glasses_band=0.3)
    with pytest.raises(ValueError, match="other parameters"):
        generated_celeba.generate_celeba(banded, N, seed=0, progress=False)


def test_a_profile_with_a_band_generates_and_uses_its_own_data(tmp_path):
    plain = get_profile("ci", data_root=str(tmp_path), generated_images=24)
    banded = get_profile("ci", data_root=str(tmp_path), generated_images=24, hair_noise_band=0.5)
    assert datasets.prepare_data(banded, progress=False) == tmp_path / "generated-n24-seed0-hairband0.5"
    gt = generated_celeba.read_ground_truth(tmp_path / "generated-n24-seed0-hairband0.5")
    assert gt["noise_bands"]["hair"]["fraction"] == 0.5 and gt["noise_bands"]["glasses"]["images"] == []
    assert datasets.prepare_data(plain, progress=False) == tmp_path / "generated-n24-seed0"
    assert "noise_bands" not in generated_celeba.read_ground_truth(tmp_path / "generated-n24-seed0")
    s = datasets.load_profile_split(banded, "train", progress=False)
    assert s.fingerprint != datasets.load_profile_split(plain, "train", progress=False).fingerprint


# ---------------------------------------------------------------------------- issue 18, item 2: concurrent generation

_RACER = """
import json, os, sys, time
from pathlib import Path
from lie_helpers.data import celeba, generated_celeba
real = generated_celeba._render_chunk
generated_celeba._render_chunk = lambda job: (time.sleep(2), real(job))[1]     # slow drawing: the two overlap
root, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
while not (root.parent / f"go-{me}").exists():
    time.sleep(0.05)
try:
    generated_celeba.generate_celeba(root, 60, 0, progress=False)
    target = root / "celeba"
    inode = target.stat().st_ino
    (root.parent / f"done-{me}").touch()
    waited = time.time()
    while not (root.parent / f"done-{other}").exists() and time.time() - waited < 120:
        time.sleep(0.1)
    celeba.load_split(root, "train", 16, verify_checksums=False, cache_dir=root.parent / f"cache-{me}", progress=False)
    print(json.dumps({"replaced": target.stat().st_ino != inode}))
except BaseException as err:
    (root.parent / f"done-{me}").touch()
    print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
"""


def test_concurrent_generation_never_replaces_a_finished_folder_under_a_reader(tmp_path):
    """The issue: `make study`'s two shards both generated the data; the second replaced the folder the first had
    finished and was reading ("Image … is missing. Re-download …"). Two processes call generate_celeba(root, 60, 0)
    0.5 s apart: one generates, the other waits for it and uses its folder."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    root = tmp_path / "data"
    procs = {me: subprocess.Popen([sys.executable, "-c", _RACER, str(root), me, other], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
             for me, other in (("a", "b"), ("b", "a"))}
    (tmp_path / "go-a").touch()
    time.sleep(0.5)
    (tmp_path / "go-b").touch()
    outcomes = {}
    for me, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outcomes[me] = json.loads(out.strip().splitlines()[-1])
    assert outcomes == {"a": {"replaced": False}, "b": {"replaced": False}}, outcomes
    assert not [p.name for p in root.iterdir() if p.name.startswith(".celeba.partial")]


def test_a_finished_folder_is_never_replaced_without_overwrite(gen, tmp_path, monkeypatch):
    """Even when the folder appears while this process draws (another generator finished first), it is used, not
    replaced; overwrite=True replaces it."""
    root = tmp_path / "data"
    real = generated_celeba._render_chunk

    def other_process_finishes_first(job):
        out = real(job)
        if not (root / "celeba").exists():
            shutil.copytree(gen / "celeba", root / "celeba")
            (root / "celeba" / "marker").touch()
        return out
    monkeypatch.setattr(generated_celeba, "_render_chunk", other_process_finishes_first)
    generated_celeba.generate_celeba(root, N, 0, progress=False)
    assert (root / "celeba" / "marker").exists()


def test_a_missing_image_of_generated_data_says_to_regenerate_even_when_the_folder_is_gone(copy, tmp_path, monkeypatch):
    """The issue: the shard whose folder was replaced was told to re-download the image from the official CelebA page."""
    real = celeba._decode

    def folder_removed_meanwhile(path, *args):
        shutil.rmtree(copy / "celeba", ignore_errors=True)
        return real(path, *args)
    monkeypatch.setattr(celeba, "_decode", folder_removed_meanwhile)
    with pytest.raises(FileNotFoundError, match="is missing") as err:
        celeba.load_split_tensors(copy, "test", 16, verify_checksums=False, cache_dir=tmp_path, progress=False,
                                  workers=1)
    assert "GENERATED" in str(err.value) and "official CelebA page" not in str(err.value)
