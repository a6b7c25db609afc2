"""Generated CelebA-format data: faces drawn from their attributes, with the ground truth.

:func:`generate_celeba` draws faces (PIL ImageDraw) whose visible features follow their
attributes and writes torchvision's CelebA layout (see :mod:`lie_helpers.celeba`), so the
real loading path is what runs; plus ``<root>/celeba/ground_truth.json``, the structure
real data lacks. Deterministic from the seed. Three steps: attributes
(:func:`sample_attributes`), drawing (:func:`render_face`), writing (:func:`generate_celeba`).

The generated data's ground truth (generator version 1)
-------------------------------------------------------
Attributes are drawn first (:func:`sample_attributes`, vectorised, no images needed), then
each face is drawn from its attribute row. Marginal rates follow CelebA's published
frequencies (:data:`CELEBA_BASE_RATES`); conditional probabilities are solved so that
each marginal stays at its CelebA rate in expectation.

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
* Noise bands (off by default; a dial for experiments, :func:`noise_bands`): a fraction
  `hair_band` of the black- and brown-haired faces is drawn in ONE shade, the one whose
  posterior is 0.5 (:data:`BAND_SHADE`), and labelled Black_Hair or Brown_Hair by a fair
  coin; a fraction `glasses_band` of all faces wears faint glasses (the glasses blended
  at 50% opacity over the face) labelled Eyeglasses by a fair coin. Both true posteriors
  are exactly 0.5; the glasses band is ambiguous without being exclusive. The bands come
  from their own random stream (nested: the images of a smaller fraction are among those
  of a larger one, with the same coins), so with both fractions 0 every file is byte-
  identical to data generated without them. ``ground_truth.json`` lists each band (its
  fraction, mechanism and images) and ``posterior.txt`` every image's true posterior of
  Black_Hair, Brown_Hair and Eyeglasses given what is drawn (:func:`true_posteriors`).
* Splits: the first 80.3% of files are train, the next 9.8% valid, the rest test
  (CelebA's 162770 / 19867 / 19962 proportions, contiguous as in CelebA).
* Identities: one identity per image. Landmarks are the drawn eye centres, nose tip and
  mouth corners; bbox is the drawn face's box in the aligned image (real CelebA's bbox
  refers to the in-the-wild images).
* Per-image variation not tied to attributes: background and clothes colours, skin
  tone, eye colour, shifts of up to 5 px and scale 0.94-1.06.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy.optimize import brentq
from tqdm.auto import tqdm

from . import storage
from .attributes import ATTRIBUTES, BASE_FOLDER, GROUND_TRUTH, HAIR_COLOURS, IMAGE_FOLDER

GENERATOR_VERSION = 1
WIDTH, HEIGHT = 178, 218
# CelebA's partition sizes: 162770 train, 19867 valid, 19962 test of 202599.
SPLIT_FRACTIONS = (162770 / 202599, 19867 / 202599, 19962 / 202599)

# Fraction of positive labels of each attribute over all 202,599 CelebA images.
CELEBA_BASE_RATES = {
    "5_o_Clock_Shadow": 0.111, "Arched_Eyebrows": 0.267, "Attractive": 0.513,
    "Bags_Under_Eyes": 0.205, "Bald": 0.022, "Bangs": 0.152, "Big_Lips": 0.241,
    "Big_Nose": 0.235, "Black_Hair": 0.239, "Blond_Hair": 0.148, "Blurry": 0.051,
    "Brown_Hair": 0.205, "Bushy_Eyebrows": 0.142, "Chubby": 0.058, "Double_Chin": 0.047,
    "Eyeglasses": 0.065, "Goatee": 0.063, "Gray_Hair": 0.042, "Heavy_Makeup": 0.387,
    "High_Cheekbones": 0.455, "Male": 0.417, "Mouth_Slightly_Open": 0.483,
    "Mustache": 0.042, "Narrow_Eyes": 0.115, "No_Beard": 0.835, "Oval_Face": 0.284,
    "Pale_Skin": 0.043, "Pointy_Nose": 0.277, "Receding_Hairline": 0.080,
    "Rosy_Cheeks": 0.066, "Sideburns": 0.057, "Smiling": 0.482, "Straight_Hair": 0.208,
    "Wavy_Hair": 0.320, "Wearing_Earrings": 0.189, "Wearing_Hat": 0.048,
    "Wearing_Lipstick": 0.472, "Wearing_Necklace": 0.123, "Wearing_Necktie": 0.073,
    "Young": 0.774,
}
assert tuple(CELEBA_BASE_RATES) == ATTRIBUTES

NOISE_ATTRIBUTES = ("Attractive", "Bags_Under_Eyes", "Oval_Face", "Pointy_Nose")
HIDDEN_CORRELATED = ("High_Cheekbones",)
VISIBLE_ATTRIBUTES = tuple(a for a in ATTRIBUTES if a not in NOISE_ATTRIBUTES + HIDDEN_CORRELATED)
EXCLUSIVE_GROUPS = (HAIR_COLOURS, ("Straight_Hair", "Wavy_Hair"))
# Hair shade on the dark-to-brown ramp: (mean, sd) of t in [0, 1] given the label.
SHADE = {"Black_Hair": (0.20, 0.12), "Brown_Hair": (0.56, 0.13)}
AMBIGUOUS_POSTERIOR = 0.8
# (a, b, sign, mechanism)
CORRELATED_PAIRS = (
    ("Male", "Goatee", +1, "beards only on men"),
    ("Male", "Mustache", +1, "beards only on men"),
    ("Male", "Sideburns", +1, "beards only on men"),
    ("Male", "5_o_Clock_Shadow", +1, "stubble only on beardless men"),
    ("Male", "No_Beard", -1, "40% of men have a beard"),
    ("Male", "Bald", +1, "baldness only in men"),
    ("Male", "Bushy_Eyebrows", +1, "P=0.25 for men"),
    ("Male", "Big_Nose", +1, "P=0.40 for men"),
    ("Male", "Wearing_Necktie", +1, "P=0.165 for men"),
    ("Male", "Wearing_Lipstick", -1, "lipstick only on women"),
    ("Male", "Heavy_Makeup", -1, "makeup only on women"),
    ("Male", "Arched_Eyebrows", -1, "P=0.40 for women"),
    ("Male", "Wearing_Earrings", -1, "P=0.30 for women"),
    ("Male", "Wearing_Necklace", -1, "P=0.20 for women"),
    ("Male", "Rosy_Cheeks", -1, "P=0.10 for women"),
    ("Male", "Blond_Hair", -1, "blond 3x likelier for women"),
    ("Male", "Wavy_Hair", -1, "P=0.45 for women"),
    ("Male", "Bangs", -1, "P=0.22 for women"),
    ("Heavy_Makeup", "Wearing_Lipstick", +1, "makeup only with lipstick"),
    ("No_Beard", "Goatee", -1, "goatee is a beard"),
    ("No_Beard", "Mustache", -1, "mustache is a beard"),
    ("No_Beard", "Sideburns", -1, "sideburns are a beard"),
    ("Young", "Gray_Hair", -1, "gray hair P=0.006 when young"),
    ("Young", "Receding_Hairline", -1, "P=0.25 when not young"),
    ("Young", "Chubby", -1, "P=0.15 when not young"),
    ("Young", "Eyeglasses", -1, "P=0.15 when not young"),
    ("Chubby", "Double_Chin", +1, "P=0.45 when chubby"),
    ("Smiling", "Mouth_Slightly_Open", +1, "P=0.70 when smiling"),
    ("Smiling", "High_Cheekbones", +1, "P=0.80 when smiling (High_Cheekbones is not drawn)"),
)
DRAWING = {
    "5_o_Clock_Shadow": "grey-blue tint on the jaw", "Arched_Eyebrows": "arched brows",
    "Bald": "no hair", "Bangs": "jagged fringe over the forehead", "Big_Lips": "thick lips",
    "Big_Nose": "large nose", "Black_Hair": "dark shade of the black-brown ramp",
    "Blond_Hair": "yellow hair", "Blurry": "Gaussian blur, radius 3",
    "Brown_Hair": "light shade of the black-brown ramp", "Bushy_Eyebrows": "thick brows",
    "Chubby": "wider face", "Double_Chin": "fold under the chin",
    "Eyeglasses": "dark frames", "Goatee": "chin patch", "Gray_Hair": "grey hair",
    "Heavy_Makeup": "coloured eyeshadow and eyeliner",
    "Male": "wide square jaw, short hair (women: long hair)",
    "Mouth_Slightly_Open": "dark open mouth", "Mustache": "bar above the lip",
    "Narrow_Eyes": "flat eyes", "No_Beard": "0: full jaw beard unless goatee/mustache/sideburns",
    "Pale_Skin": "very light skin", "Receding_Hairline": "bare temples",
    "Rosy_Cheeks": "pink cheeks", "Sideburns": "strips beside the ears",
    "Smiling": "upturned mouth", "Straight_Hair": "vertical strands",
    "Wavy_Hair": "scalloped hair edge", "Wearing_Earrings": "gold or silver dots at the ears",
    "Wearing_Hat": "hat over the top of the head", "Wearing_Lipstick": "red lips",
    "Wearing_Necklace": "chain of beads on the neck", "Wearing_Necktie": "collar and tie",
    "Young": "0: forehead lines, crow's feet, cheek folds",
}
assert set(DRAWING) == set(VISIBLE_ATTRIBUTES)

_IDX = {a: i for i, a in enumerate(ATTRIBUTES)}

# --------------------------------------------------------------------------------------
# Attributes of generated data
# --------------------------------------------------------------------------------------
def _solve(target: float, q: float, p_if: float) -> float:
    """P(a | not parent) that keeps P(a) = target when P(parent) = q and P(a | parent) = p_if."""
    p = (target - q * p_if) / (1.0 - q)
    assert -1e-9 <= p <= 1 + 1e-9, (target, q, p_if, p)
    return min(max(p, 0.0), 1.0)


def _model() -> dict:
    """The conditional probabilities of the attribute model (recorded in ground_truth.json)."""
    r = CELEBA_BASE_RATES
    m, y = r["Male"], r["Young"]
    nb = 1.0 - r["Bald"]                                  # non-bald (bald only in men)
    p = {"Male": m, "Young": y, "Bald|male": r["Bald"] / m}
    g_nb = r["Gray_Hair"] / nb
    p["Gray|young,nonbald"] = 0.006
    p["Gray|old,nonbald"] = _solve(g_nb, y, 0.006)
    r1 = nb - r["Gray_Hair"]
    m_r1 = (m - r["Bald"]) / nb
    b_r1 = r["Blond_Hair"] / r1
    p["Blond|male,nonbald,nongray"] = 0.3 * b_r1
    p["Blond|female,nonbald,nongray"] = _solve(b_r1, m_r1, 0.3 * b_r1)
    r2 = r1 - r["Blond_Hair"]
    p["Black|rest"] = r["Black_Hair"] / r2
    p["Brown|rest"] = r["Brown_Hair"] / r2
    f_nb = (1 - m) / nb
    p["Wavy|female,nonbald"] = 0.45
    p["Wavy|male,nonbald"] = _solve(r["Wavy_Hair"] / nb, f_nb, 0.45)
    p["Straight|nonbald,nonwavy"] = r["Straight_Hair"] / (nb - r["Wavy_Hair"])
    p["Bangs|female,nonbald"] = 0.22
    p["Bangs|male,nonbald"] = _solve(r["Bangs"] / nb, f_nb, 0.22)
    rec = r["Receding_Hairline"] / (nb - r["Bangs"])
    p["Receding|old,nonbald,nobangs"] = 0.25
    p["Receding|young,nonbald,nobangs"] = _solve(rec, 1 - y, 0.25)
    beard = 1 - r["No_Beard"]
    p["Beard|male"] = beard / m
    for a in ("Goatee", "Mustache", "Sideburns"):
        p[f"{a}|beard"] = r[a] / beard
    p["5_o_Clock_Shadow|male,nobeard"] = r["5_o_Clock_Shadow"] / (m - beard)
    p["Lipstick|female"] = r["Wearing_Lipstick"] / (1 - m)
    p["Heavy_Makeup|lipstick"] = r["Heavy_Makeup"] / r["Wearing_Lipstick"]
    for a, p_female in (("Arched_Eyebrows", 0.40), ("Wearing_Earrings", 0.30),
                        ("Wearing_Necklace", 0.20), ("Rosy_Cheeks", 0.10)):
        p[f"{a}|female"] = p_female
        p[f"{a}|male"] = _solve(r[a], 1 - m, p_female)
    for a, p_male in (("Bushy_Eyebrows", 0.25), ("Wearing_Necktie", 0.165), ("Big_Nose", 0.40)):
        p[f"{a}|male"] = p_male
        p[f"{a}|female"] = _solve(r[a], m, p_male)
    for a, p_old in (("Chubby", 0.15), ("Eyeglasses", 0.15)):
        p[f"{a}|old"] = p_old
        p[f"{a}|young"] = _solve(r[a], 1 - y, p_old)
    p["Double_Chin|chubby"] = 0.45
    p["Double_Chin|notchubby"] = _solve(r["Double_Chin"], r["Chubby"], 0.45)
    p["Mouth_Slightly_Open|smiling"] = 0.70
    p["Mouth_Slightly_Open|notsmiling"] = _solve(r["Mouth_Slightly_Open"], r["Smiling"], 0.70)
    p["High_Cheekbones|smiling"] = 0.80
    p["High_Cheekbones|notsmiling"] = _solve(r["High_Cheekbones"], r["Smiling"], 0.80)
    for a in ("Smiling", "Wearing_Hat", "Pale_Skin", "Blurry", "Narrow_Eyes", "Big_Lips") + NOISE_ATTRIBUTES:
        p[a] = r[a]
    return p


def sample_attributes(n: int, seed: int = 0):
    """Attributes of `n` generated faces, without drawing them.

    Returns (attributes, hair_z): attributes is an int8 array [n, 40] in {0, 1} in CelebA's
    order; hair_z a float array [n] of standard normals that set the hair shade of black-
    and brown-haired faces (see :func:`hair_shade`). Deterministic from `seed`.
    """
    p = _model()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xCE1EBA]))
    u = rng.random((n, 48))
    hair_z = rng.standard_normal(n)
    cols = iter(range(u.shape[1]))

    def draw(prob):
        return u[:, next(cols)] < prob

    a = np.zeros((n, 40), dtype=bool)

    def s(name, value):
        a[:, _IDX[name]] = value

    male = draw(p["Male"])
    young = draw(p["Young"])
    s("Male", male)
    s("Young", young)
    for name in NOISE_ATTRIBUTES + ("Smiling", "Wearing_Hat", "Pale_Skin", "Blurry", "Narrow_Eyes", "Big_Lips"):
        s(name, draw(p[name]))
    bald = male & draw(p["Bald|male"])
    s("Bald", bald)
    # hair colour: one categorical draw among non-bald faces
    uh = u[:, next(cols)]
    gray = ~bald & draw(np.where(young, p["Gray|young,nonbald"], p["Gray|old,nonbald"]))
    blond = ~bald & ~gray & draw(np.where(male, p["Blond|male,nonbald,nongray"],
                                          p["Blond|female,nonbald,nongray"]))
    rest = ~bald & ~gray & ~blond
    black = rest & (uh < p["Black|rest"])
    brown = rest & (uh >= p["Black|rest"]) & (uh < p["Black|rest"] + p["Brown|rest"])
    s("Gray_Hair", gray), s("Blond_Hair", blond), s("Black_Hair", black), s("Brown_Hair", brown)
    wavy = ~bald & draw(np.where(male, p["Wavy|male,nonbald"], p["Wavy|female,nonbald"]))
    straight = ~bald & ~wavy & draw(p["Straight|nonbald,nonwavy"])
    s("Wavy_Hair", wavy), s("Straight_Hair", straight)
    bangs = ~bald & draw(np.where(male, p["Bangs|male,nonbald"], p["Bangs|female,nonbald"]))
    s("Bangs", bangs)
    s("Receding_Hairline", ~bald & ~bangs & draw(np.where(young, p["Receding|young,nonbald,nobangs"],
                                                          p["Receding|old,nonbald,nobangs"])))
    beard = male & draw(p["Beard|male"])
    s("No_Beard", ~beard)
    for name in ("Goatee", "Mustache", "Sideburns"):
        s(name, beard & draw(p[f"{name}|beard"]))
    s("5_o_Clock_Shadow", male & ~beard & draw(p["5_o_Clock_Shadow|male,nobeard"]))
    lipstick = ~male & draw(p["Lipstick|female"])
    s("Wearing_Lipstick", lipstick)
    s("Heavy_Makeup", lipstick & draw(p["Heavy_Makeup|lipstick"]))
    for name in ("Arched_Eyebrows", "Wearing_Earrings", "Wearing_Necklace", "Rosy_Cheeks",
                 "Bushy_Eyebrows", "Wearing_Necktie", "Big_Nose"):
        s(name, draw(np.where(male, p[f"{name}|male"], p[f"{name}|female"])))
    chubby = draw(np.where(young, p["Chubby|young"], p["Chubby|old"]))
    s("Chubby", chubby)
    s("Double_Chin", draw(np.where(chubby, p["Double_Chin|chubby"], p["Double_Chin|notchubby"])))
    s("Eyeglasses", draw(np.where(young, p["Eyeglasses|young"], p["Eyeglasses|old"])))
    smiling = a[:, _IDX["Smiling"]]
    s("Mouth_Slightly_Open", draw(np.where(smiling, p["Mouth_Slightly_Open|smiling"],
                                           p["Mouth_Slightly_Open|notsmiling"])))
    s("High_Cheekbones", draw(np.where(smiling, p["High_Cheekbones|smiling"], p["High_Cheekbones|notsmiling"])))
    return a.astype(np.int8), hair_z


def hair_shade(attributes, hair_z):
    """Shade t in [0, 1] on the dark-to-brown ramp for each row; NaN where neither black nor brown."""
    attributes = np.asarray(attributes)
    hair_z = np.asarray(hair_z, dtype=float)
    t = np.full(hair_z.shape, np.nan)
    for name, (mean, sd) in SHADE.items():
        rows = attributes[..., _IDX[name]] == 1
        t = np.where(rows, np.clip(mean + sd * hair_z, 0.0, 1.0), t)
    return t


def _normal_pdf(x, mean, sd):
    return np.exp(-0.5 * ((x - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


def black_posterior(shade):
    """P(Black_Hair | shade, black or brown) under the generator's shade model and priors."""
    pb, pr = CELEBA_BASE_RATES["Black_Hair"], CELEBA_BASE_RATES["Brown_Hair"]
    lb = pb * _normal_pdf(np.asarray(shade, float), *SHADE["Black_Hair"])
    lr = pr * _normal_pdf(np.asarray(shade, float), *SHADE["Brown_Hair"])
    return lb / (lb + lr)


def _bayes_error() -> float:
    """Error of the best classifier of black vs brown from the (unclipped) shade."""
    pb, pr = CELEBA_BASE_RATES["Black_Hair"], CELEBA_BASE_RATES["Brown_Hair"]
    t = np.linspace(-1.0, 2.0, 30001)
    lb = pb * _normal_pdf(t, *SHADE["Black_Hair"])
    lr = pr * _normal_pdf(t, *SHADE["Brown_Hair"])
    return float(np.minimum(lb, lr).sum() * (t[1] - t[0]) / (pb + pr))


# --------------------------------------------------------------------------------------
# Noise bands: ambiguity dialled in, with a known posterior of 0.5
# --------------------------------------------------------------------------------------
# The shade between the two label means where P(Black_Hair | shade) = 0.5: band faces drawn
# there have posterior 0.5 whether they come from the band or from the tails (about 0.383).
BAND_SHADE = float(brentq(lambda t: black_posterior(t) - 0.5, SHADE["Black_Hair"][0], SHADE["Brown_Hair"][0]))
MAX_BAND = 0.9


def _check_bands(hair_band, glasses_band) -> None:
    for name, f in (("hair_band", hair_band), ("glasses_band", glasses_band)):
        if not 0.0 <= f <= MAX_BAND:
            raise ValueError(f"{name} must be a fraction in [0, {MAX_BAND}], got {f!r}.")


def noise_bands(attributes, seed: int = 0, hair_band: float = 0.0, glasses_band: float = 0.0):
    """Apply the label-noise bands (module docstring) to the attributes of :func:`sample_attributes`.

    Returns (attributes, in_hair_band, in_glasses_band): a relabelled copy and two boolean masks.
    round(hair_band × black-or-brown faces) of them get a fair-coin Black_Hair/Brown_Hair label,
    round(glasses_band × all faces) a fair-coin Eyeglasses label. Its own random streams (one per
    band) keep the other draws untouched and make the bands nested across fractions.
    """
    _check_bands(hair_band, glasses_band)
    a = np.array(attributes, dtype=np.int8, copy=True)
    n = len(a)

    def band(candidates, fraction, stream):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xBA4D, stream]))
        order = rng.permutation(candidates)
        coins = rng.random(len(candidates)) < 0.5
        k = int(round(fraction * len(candidates)))
        mask = np.zeros(n, dtype=bool)
        mask[order[:k]] = True
        heads = np.zeros(n, dtype=bool)
        heads[order[:k]] = coins[:k]
        return mask, heads

    black_or_brown = np.flatnonzero((a[:, _IDX["Black_Hair"]] == 1) | (a[:, _IDX["Brown_Hair"]] == 1))
    in_hair, black = band(black_or_brown, hair_band, 0)
    a[in_hair, _IDX["Black_Hair"]] = black[in_hair]
    a[in_hair, _IDX["Brown_Hair"]] = ~black[in_hair]
    in_glasses, glasses = band(np.arange(n), glasses_band, 1)
    a[in_glasses, _IDX["Eyeglasses"]] = glasses[in_glasses]
    return a, in_hair, in_glasses


def drawn_shades(attributes, hair_z, in_hair_band):
    """The shade each face is drawn with: :func:`hair_shade`, and :data:`BAND_SHADE` in the hair band."""
    return np.where(in_hair_band, BAND_SHADE, hair_shade(attributes, hair_z))


def true_posteriors(attributes, shades, in_hair_band, in_glasses_band) -> dict:
    """P(attribute | what is drawn) for Black_Hair, Brown_Hair and Eyeglasses, arrays [n].

    Black/brown faces: the shade's posterior (exactly 0.5 in the band); other hair colours
    and bald faces are drawn apart, so 0. Eyeglasses: 0.5 in the glasses band, else the label
    (glasses are drawn exactly when labelled).
    """
    attributes = np.asarray(attributes)
    black_or_brown = (attributes[:, _IDX["Black_Hair"]] == 1) | (attributes[:, _IDX["Brown_Hair"]] == 1)
    black = np.where(black_or_brown, black_posterior(np.nan_to_num(shades)), 0.0)
    black[in_hair_band] = 0.5
    glasses = np.where(in_glasses_band, 0.5, attributes[:, _IDX["Eyeglasses"]].astype(float))
    return {"Black_Hair": black, "Brown_Hair": np.where(black_or_brown, 1.0 - black, 0.0), "Eyeglasses": glasses}


def read_true_posteriors(root) -> tuple[list[str], dict]:
    """(file names, :func:`true_posteriors`) of the generated data in `root`/celeba/, from its records
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


# --------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------
def _lerp(c0, c1, t):
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(c0, c1))


def _scale(c, f):
    return tuple(max(0, min(255, int(round(v * f)))) for v in c)


def _hair_colour(row, hair_z, u, shade=None):
    if row[_IDX["Black_Hair"]] or row[_IDX["Brown_Hair"]]:
        t = float(hair_shade(row, hair_z)) if shade is None else float(shade)
        return _lerp((12, 10, 9), (150, 100, 58), t)
    if row[_IDX["Blond_Hair"]]:
        return _lerp((196, 160, 86), (242, 218, 140), u)
    if row[_IDX["Gray_Hair"]]:
        return _lerp((140, 140, 142), (215, 215, 212), u)
    return _lerp((128, 40, 22), (205, 92, 40), u)           # no hair colour label: red / auburn


def render_face(attributes, hair_z: float = 0.0, seed=0, *, shade: float | None = None,
                faint_glasses: bool = False):
    """Draw one 178x218 face for an attribute row (40 values in {0, 1}).

    Returns (image, landmarks, bbox): a PIL RGB image, the 10 landmark coordinates
    (eyes, nose tip, mouth corners) and the face box (x, y, width, height). Only the
    visible attributes change the drawing; `seed` (an int or a sequence of ints) sets the
    per-image variation (colours, shift, scale), drawn up front so that changing one
    attribute changes only what that attribute draws. The noise bands' faces: `shade` overrides the
    black/brown shade set by `hair_z`; `faint_glasses` draws glasses at 50% opacity whatever the
    Eyeglasses label (halfway, pixel by pixel, between the face without and with glasses).
    """
    row = np.asarray(attributes).astype(bool)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    u = rng.random(24)
    on = {a: bool(row[i]) for i, a in enumerate(ATTRIBUTES)}

    s = 0.94 + 0.12 * u[0]
    dx, dy = 10 * u[1] - 5, 10 * u[2] - 5
    cx0, cy0 = 89.0, 115.0

    def P(x, y):
        return (cx0 + s * (x - cx0) + dx, cy0 + s * (y - cy0) + dy)

    def B(x0, y0, x1, y1):
        return [*P(x0, y0), *P(x1, y1)]

    def W(w):
        return max(1, int(round(w * s)))

    bg = _lerp((70, 80, 90), (225, 220, 210), u[3])
    bg = (min(255, int(bg[0] * (0.8 + 0.4 * u[4]))), bg[1], min(255, int(bg[2] * (0.8 + 0.4 * u[5]))))
    img = Image.new("RGB", (WIDTH, HEIGHT), bg)
    d = ImageDraw.Draw(img)

    male = on["Male"]
    cx = 89
    fw = (45 if male else 40) + (7 if on["Chubby"] else 0)
    top, chin = 58, (186 if male else 182)
    if on["Pale_Skin"]:
        skin = _lerp((246, 228, 220), (255, 240, 233), u[6])
    else:
        skin = _lerp((112, 74, 52), (232, 192, 160), u[6] ** 0.7)
    shade_skin = _scale(skin, 0.78)
    hair = _hair_colour(row, hair_z, u[7], shade)
    hair_dark = _scale(hair, 0.72)
    has_hair = not on["Bald"]
    clothes = _lerp((30, 40, 60), (200, 60, 60), u[8])
    clothes = (clothes[0], int(60 + 150 * u[9]), clothes[2])

    # hair behind the head
    if has_hair:
        if male:
            d.ellipse(B(cx - fw - 6, top - 14, cx + fw + 6, top + 72), fill=hair)
        else:
            d.ellipse(B(cx - fw - 15, top - 18, cx + fw + 15, top + 92), fill=hair)
            d.rectangle(B(cx - fw - 15, top + 40, cx + fw + 15, 204), fill=hair)
        if on["Wavy_Hair"]:
            ys = range(top + 20, 200 if not male else top + 60, 12)
            xs = (cx - fw - (15 if not male else 6), cx + fw + (15 if not male else 6))
            for y in ys:
                for x in xs:
                    d.ellipse(B(x - 7, y - 7, x + 7, y + 7), fill=hair_dark)
        if on["Straight_Hair"] and not male:
            for x in (cx - fw - 10, cx - fw - 4, cx + fw + 4, cx + fw + 10):
                d.line([P(x, top + 30), P(x, 198)], fill=hair_dark, width=W(2))

    # shoulders, neck, neck accessories
    d.ellipse(B(cx - 88, 196, cx + 88, 300), fill=clothes)
    d.rectangle(B(cx - 18, 160, cx + 18, 205), fill=shade_skin)
    if on["Wearing_Necktie"]:
        d.polygon([P(cx - 22, 197), P(cx, 212), P(cx - 6, 218)], fill=(245, 245, 245))
        d.polygon([P(cx + 22, 197), P(cx, 212), P(cx + 6, 218)], fill=(245, 245, 245))
        tie = _lerp((150, 20, 30), (20, 40, 140), u[10])
        d.polygon([P(cx - 5, 203), P(cx + 5, 203), P(cx + 8, 225), P(cx - 8, 225)], fill=tie)
    if on["Wearing_Necklace"]:
        bead = (235, 200, 60) if u[11] < 0.5 else (225, 225, 235)
        for k in range(9):
            ang = math.pi * (0.15 + 0.7 * k / 8)
            x, y = cx + 19 * math.cos(ang), 186 + 14 * math.sin(ang)
            d.ellipse(B(x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=bead)

    # ears, face
    d.ellipse(B(cx - fw - 7, 108, cx - fw + 7, 140), fill=shade_skin)
    d.ellipse(B(cx + fw - 7, 108, cx + fw + 7, 140), fill=shade_skin)
    d.ellipse(B(cx - fw, top, cx + fw, chin), fill=skin)
    if male:
        d.rounded_rectangle(B(cx - fw + 2, 118, cx + fw - 2, chin), radius=W(24), fill=skin)

    # beard family
    beard_colour = hair if has_hair else (72, 66, 60)
    if on["5_o_Clock_Shadow"]:
        d.chord(B(cx - fw + 3, 112, cx + fw - 3, chin), 0, 180, fill=_lerp(skin, (70, 80, 95), 0.35))
    specific = on["Goatee"] or on["Mustache"] or on["Sideburns"]
    if not on["No_Beard"] and not specific:
        d.chord(B(cx - fw, 110, cx + fw, chin + 3), 0, 180, fill=beard_colour)
    if on["Sideburns"]:
        d.rectangle(B(cx - fw + 1, 100, cx - fw + 9, 142), fill=beard_colour)
        d.rectangle(B(cx + fw - 9, 100, cx + fw - 1, 142), fill=beard_colour)
    if on["Goatee"]:
        d.ellipse(B(cx - 13, 160, cx + 13, chin + 2), fill=beard_colour)

    # hair on top of the head, hairline, fringe
    if has_hair:
        d.chord(B(cx - fw - 2, top - 12, cx + fw + 2, top + 62), 180, 360, fill=hair)
        if on["Straight_Hair"]:
            for x in range(cx - 28, cx + 29, 8):
                d.line([P(x, top - 6), P(x, top + 22)], fill=hair_dark, width=W(2))
        if on["Receding_Hairline"]:
            d.ellipse(B(cx - fw + 6, top + 4, cx - fw + 32, top + 36), fill=skin)
            d.ellipse(B(cx + fw - 32, top + 4, cx + fw - 6, top + 36), fill=skin)
        if on["Bangs"]:
            pts = [P(cx - fw + 4, top + 22)]
            n = 7
            for k in range(n + 1):
                x = cx - fw + 6 + (2 * fw - 12) * k / n
                pts.append(P(x, 94 if k % 2 == 0 else 86))
            pts.append(P(cx + fw - 4, top + 22))
            d.polygon(pts, fill=hair)
    # age
    if not on["Young"]:
        for y in (76, 83):
            d.line([P(cx - 18, y), P(cx + 18, y)], fill=shade_skin, width=W(2))
        for sx in (-1, 1):
            x = cx + sx * 32
            d.line([P(x, 110), P(x + sx * 7, 106)], fill=shade_skin, width=W(2))
            d.line([P(x, 114), P(x + sx * 7, 117)], fill=shade_skin, width=W(2))
            d.line([P(cx + sx * 11, 138), P(cx + sx * 20, 160)], fill=shade_skin, width=W(2))

    # eyebrows, eyes, glasses
    brow = _scale(hair, 0.6) if has_hair else (60, 50, 45)
    bw = W(6 if on["Bushy_Eyebrows"] else 3)
    iris = [(70, 45, 25), (60, 100, 160), (70, 120, 70), (35, 30, 30)][int(u[12] * 4)]
    eh = 2.6 if on["Narrow_Eyes"] else 5.0
    eyes = []
    for sx in (-1, 1):
        ex, ey = cx + sx * 19, 112
        eyes.append(P(ex, ey))
        if on["Arched_Eyebrows"]:
            d.arc(B(ex - 12, 96, ex + 12, 112), 200, 340, fill=brow, width=bw)
        else:
            d.line([P(ex - 12, 101), P(ex + 12, 100)], fill=brow, width=bw)
        if on["Heavy_Makeup"]:
            shadow = [(120, 60, 140), (60, 90, 170), (150, 100, 60)][int(u[13] * 3)]
            d.ellipse(B(ex - 11, ey - 10, ex + 11, ey + 1), fill=shadow)
        d.ellipse(B(ex - 9, ey - eh, ex + 9, ey + eh), fill=(245, 245, 240),
                  outline=(20, 20, 20) if on["Heavy_Makeup"] else None, width=W(2))
        r = min(4.0, eh)
        d.ellipse(B(ex - r, ey - r, ex + r, ey + r), fill=iris)
        if on["Rosy_Cheeks"]:
            d.ellipse(B(ex - 9 + sx * 6, 128, ex + 9 + sx * 6, 143), fill=_lerp(skin, (235, 110, 130), 0.55))
    if on["Eyeglasses"] or faint_glasses:
        without = img.copy() if faint_glasses else None
        frame = [(20, 20, 20), (90, 60, 30), (130, 130, 140)][int(u[14] * 3)]
        for sx in (-1, 1):
            ex = cx + sx * 19
            d.rounded_rectangle(B(ex - 14, 102, ex + 14, 122), radius=W(5), outline=frame, width=W(3))
            d.line([P(ex + sx * 14, 108), P(cx + sx * fw, 112)], fill=frame, width=W(2))
        d.line([P(cx - 5, 110), P(cx + 5, 110)], fill=frame, width=W(3))
        if faint_glasses:
            img = Image.blend(without, img, 0.5)
            d = ImageDraw.Draw(img)

    # nose
    nose_tip = (cx, 140 if on["Big_Nose"] else 136)
    if on["Big_Nose"]:
        d.polygon([P(cx, 115), P(cx - 10, 141), P(cx + 10, 141)], fill=_scale(skin, 0.9), outline=shade_skin)
    else:
        d.line([P(cx, 120), P(cx - 4, 136), P(cx + 4, 136)], fill=shade_skin, width=W(2))

    # mustache, mouth
    if on["Mustache"]:
        d.ellipse(B(cx - 18, 142, cx + 18, 150), fill=beard_colour)
    lips = (200, 25, 45) if on["Wearing_Lipstick"] else _scale((skin[0], int(skin[1] * 0.7), int(skin[2] * 0.7)), 0.85)
    lw = W(6 if on["Big_Lips"] else 3)
    half = 18 if on["Smiling"] else 14
    if on["Smiling"] and on["Mouth_Slightly_Open"]:
        d.chord(B(cx - 18, 143, cx + 18, 167), 0, 180, fill=(70, 20, 25), outline=lips, width=lw)
        d.rectangle(B(cx - 12, 155, cx + 12, 158), fill=(240, 240, 235))
    elif on["Smiling"]:
        d.arc(B(cx - 18, 138, cx + 18, 160), 20, 160, fill=lips, width=lw)
    elif on["Mouth_Slightly_Open"]:
        d.ellipse(B(cx - 11, 148, cx + 11, 161), fill=(70, 20, 25), outline=lips, width=max(1, lw // 2 + 1))
    else:
        d.line([P(cx - 14, 154), P(cx + 14, 154)], fill=lips, width=lw)
    if on["Double_Chin"]:
        d.arc(B(cx - 24, chin - 12, cx + 24, chin + 8), 25, 155, fill=shade_skin, width=W(2))

    # hat, earrings
    if on["Wearing_Hat"]:
        hat = _lerp((30, 30, 40), (190, 150, 90), u[15])
        hat = (hat[0], min(255, int(hat[1] * (0.6 + 0.6 * u[16]))), hat[2])
        d.rounded_rectangle(B(cx - fw - 4, top - 32, cx + fw + 4, top + 22), radius=W(12), fill=hat)
        d.rectangle(B(cx - fw - 20, top + 16, cx + fw + 20, top + 26), fill=_scale(hat, 0.8))
    if on["Wearing_Earrings"]:
        metal = (230, 190, 50) if u[17] < 0.6 else (215, 215, 225)
        for sx in (-1, 1):
            x = cx + sx * (fw + 1)
            d.ellipse(B(x - 4, 139, x + 4, 147), fill=metal)

    if on["Blurry"]:
        img = img.filter(ImageFilter.GaussianBlur(3))

    mouth = [P(cx - half, 154), P(cx + half, 154)]
    points = [eyes[0], eyes[1], P(*nose_tip), mouth[0], mouth[1]]
    landmarks = [int(round(v)) for pt in points for v in pt]
    x0, y0 = P(cx - fw, top)
    x1, y1 = P(cx + fw, chin)
    bbox = [int(round(x0)), int(round(y0)), int(round(x1 - x0)), int(round(y1 - y0))]
    return img, landmarks, bbox


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


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------
def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, valid, test) counts for `n` images in CelebA's proportions."""
    n_train = int(round(n * SPLIT_FRACTIONS[0]))
    n_valid = int(round(n * SPLIT_FRACTIONS[1]))
    return n_train, n_valid, n - n_train - n_valid


def _phi(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    sx, sy = x.std(), y.std()
    if sx == 0 or sy == 0:
        return 0.0
    return float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy))


def _ground_truth(attrs, hair_z, n, seed, names, quality: int = 90, bands=None) -> dict:
    """The ground_truth.json record; `bands` = (hair_band, glasses_band, in_hair_band, in_glasses_band)
    when a noise band is on (the record then lists them; without, it is the same as before bands existed)."""
    in_hair = np.zeros(n, bool) if bands is None else bands[2]
    in_glasses = np.zeros(n, bool) if bands is None else bands[3]
    black = attrs[:, _IDX["Black_Hair"]] == 1
    brown = attrs[:, _IDX["Brown_Hair"]] == 1
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
            "colour_ramp": {"t=0": [12, 10, 9], "t=1": [150, 100, 58]},
            "shade_given_label": {k: {"mean": m, "sd": sd, "clipped_to": [0, 1]} for k, (m, sd) in SHADE.items()},
            "bayes_error": round(_bayes_error(), 4),
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
        "conditional_probabilities": {k: round(v, 6) for k, v in _model().items()},
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_partials(root: Path) -> None:
    for p in root.glob(f".{BASE_FOLDER}.partial-*"):
        try:
            pid = int(p.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def generate_celeba(root, n_images: int = 4000, seed: int = 0, *, overwrite: bool = False,
                    progress: bool = True, workers: int = 1, quality: int = 90,
                    hair_band: float = 0.0, glasses_band: float = 0.0) -> Path:
    """Write generated CelebA-format data to `root`/celeba/ and return `root`.

    `hair_band`, `glasses_band`: the noise bands' fractions (:func:`noise_bands`; 0 leaves every
    file as without them). Deterministic from (`n_images`, `seed`, `quality`, the bands): the same
    arguments give byte-identical files
    (with the same Pillow/libjpeg). Generation happens in a hidden sibling folder
    ``root/.celeba.partial-<pid>-<token>`` renamed to ``root/celeba`` at the end, so an
    interrupted run never looks complete (its leftovers are removed by the next run). If
    ``root/celeba`` already holds generated data with the same parameters and generator
    version, it is returned without work; other contents raise ValueError unless
    `overwrite` (which only ever replaces generated data, never real CelebA). `workers` > 1
    draws in that many processes (same bytes as one).
    """
    root = Path(root)
    n_images, seed = int(n_images), int(seed)
    bands = (float(hair_band), float(glasses_band))
    if n_images < 3:
        raise ValueError(f"n_images must be at least 3 (one per split), got {n_images}.")
    _check_bands(*bands)
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
    root.mkdir(parents=True, exist_ok=True)
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
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                for out in pool.map(_render_chunk, jobs):
                    results.extend(out)
                    bar.update(len(out))
        else:
            for job in jobs:
                out = _render_chunk(job)
                results.extend(out)
                bar.update(len(out))
        bar.close()
        shades = drawn_shades(attrs, hair_z, in_hair)
        _write_text_files(tmp, names, attrs, shades, results, split_sizes(n_images))
        banded = bands != (0.0, 0.0)
        if banded:
            _write_posteriors(tmp, names, true_posteriors(attrs, shades, in_hair, in_glasses))
        # Written last; the folder only becomes visible through the rename below.
        gt = _ground_truth(attrs, hair_z, n_images, seed, names, quality, (*bands, in_hair, in_glasses) if banded else None)
        (tmp / GROUND_TRUTH).write_text(json.dumps(gt, indent=2) + "\n")
        if target.exists():      # overwrite=True on generated data (checked above)
            trash = root / f".{BASE_FOLDER}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}-old"
            os.rename(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            gt = _read_ground_truth(root)         # another process finished the same folder first
            if gt is not None and _params_match(gt, n_images, seed, quality, bands):
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


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
