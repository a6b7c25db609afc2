"""The attribute model of the generated data: base rates, the conditional probabilities, sampling,
hair shades and their posteriors, and the noise bands. No images, no files.

What these numbers mean for the data (the generator's ground truth) is told in
:mod:`lie_helpers.data.generated_celeba`'s docstring; ``ground_truth.json`` records them.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq

from .attributes import ATTRIBUTES, HAIR_COLOURS, INDEX

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


# --------------------------------------------------------------------------------------
# Attributes of generated data
# --------------------------------------------------------------------------------------
def _solve(target: float, q: float, p_if: float) -> float:
    """P(a | not parent) that keeps P(a) = target when P(parent) = q and P(a | parent) = p_if."""
    p = (target - q * p_if) / (1.0 - q)
    assert -1e-9 <= p <= 1 + 1e-9, (target, q, p_if, p)
    return min(max(p, 0.0), 1.0)


def conditional_probabilities() -> dict:
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
    p = conditional_probabilities()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xCE1EBA]))
    u = rng.random((n, 48))
    hair_z = rng.standard_normal(n)
    cols = iter(range(u.shape[1]))

    def draw(prob):
        return u[:, next(cols)] < prob

    a = np.zeros((n, 40), dtype=bool)

    def s(name, value):
        a[:, INDEX[name]] = value

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
    smiling = a[:, INDEX["Smiling"]]
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
        rows = attributes[..., INDEX[name]] == 1
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


def bayes_error() -> float:
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


def check_bands(hair_band, glasses_band) -> None:
    for name, f in (("hair_band", hair_band), ("glasses_band", glasses_band)):
        if not 0.0 <= f <= MAX_BAND:
            raise ValueError(f"{name} must be a fraction in [0, {MAX_BAND}], got {f!r}.")


def noise_bands(attributes, seed: int = 0, hair_band: float = 0.0, glasses_band: float = 0.0):
    """Apply the label-noise bands (:mod:`lie_helpers.data.generated_celeba`) to the attributes of :func:`sample_attributes`.

    Returns (attributes, in_hair_band, in_glasses_band): a relabelled copy and two boolean masks.
    round(hair_band × black-or-brown faces) of them get a fair-coin Black_Hair/Brown_Hair label,
    round(glasses_band × all faces) a fair-coin Eyeglasses label. Its own random streams (one per
    band) keep the other draws untouched and make the bands nested across fractions.
    """
    check_bands(hair_band, glasses_band)
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

    black_or_brown = np.flatnonzero((a[:, INDEX["Black_Hair"]] == 1) | (a[:, INDEX["Brown_Hair"]] == 1))
    in_hair, black = band(black_or_brown, hair_band, 0)
    a[in_hair, INDEX["Black_Hair"]] = black[in_hair]
    a[in_hair, INDEX["Brown_Hair"]] = ~black[in_hair]
    in_glasses, glasses = band(np.arange(n), glasses_band, 1)
    a[in_glasses, INDEX["Eyeglasses"]] = glasses[in_glasses]
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
    black_or_brown = (attributes[:, INDEX["Black_Hair"]] == 1) | (attributes[:, INDEX["Brown_Hair"]] == 1)
    black = np.where(black_or_brown, black_posterior(np.nan_to_num(shades)), 0.0)
    black[in_hair_band] = 0.5
    glasses = np.where(in_glasses_band, 0.5, attributes[:, INDEX["Eyeglasses"]].astype(float))
    return {"Black_Hair": black, "Brown_Hair": np.where(black_or_brown, 1.0 - black, 0.0), "Eyeglasses": glasses}
