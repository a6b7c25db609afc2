"""Drawing one generated face from its attribute row: :func:`render_face` (PIL ImageDraw).

What each visible attribute draws is :data:`DRAWING` (recorded in ``ground_truth.json``); the
ground truth of the generated data is told in :mod:`lie_helpers.data.generated_celeba`.
A face is drawn back to front, one short function per part (hair behind the head, neck, head,
beard, hair on top, age, eyes, glasses, nose, mouth, hat, earrings), in design coordinates that a
:class:`Canvas` places in the image; :class:`Draws` names the per-image random draws.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .attributes import ATTRIBUTES, INDEX
from .generated_model import VISIBLE_ATTRIBUTES, hair_shade

WIDTH, HEIGHT = 178, 218
CX, TOP = 89, 58               # the face's centre line and the top of the head, in design coordinates
CENTRE = (89.0, 115.0)         # the point that the per-image scale keeps in place
DARK_RAMP = ((12, 10, 9), (150, 100, 58))   # black and brown hair: colours at shade t = 0 and t = 1
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


def _lerp(c0, c1, t):
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(c0, c1))


def _scale(c, f):
    return tuple(max(0, min(255, int(round(v * f)))) for v in c)


# --------------------------------------------------------------------------------------
# What every part of the drawing reads
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Draws:
    """The per-image random draws of one face, uniform in [0, 1), in the order the seed's stream gives them
    (``rng.random(24)``; the last six are spare). Drawn up front, so changing an attribute never changes them."""
    scale: float              # face size, 0.94-1.06
    shift_x: float            # shift of up to 5 px each way
    shift_y: float
    background: float         # position on the dark-to-light background ramp
    background_red: float     # red and blue tints of the background
    background_blue: float
    skin: float               # skin tone
    hair: float               # tone on the blond, grey or red ramp (black/brown hair: the shade instead)
    clothes: float            # clothes colour, and its green channel
    clothes_green: float
    tie: float                # red to blue
    beads: float              # necklace: gold or silver
    iris: float               # one of four eye colours
    eyeshadow: float          # one of three
    frame: float              # glasses frame: one of three colours
    hat: float                # hat colour, and its green channel
    hat_green: float
    earrings: float           # gold or silver

    @classmethod
    def from_seed(cls, seed) -> Draws:
        u = np.random.default_rng(np.random.SeedSequence(seed)).random(24)
        return cls(*u[:len(fields(cls))])


class Canvas:
    """The image being drawn and its per-image placement. Parts are drawn in design coordinates (a
    178x218 face centred on x = CX); `P` maps a point to the image (scaled about CENTRE, shifted), `B` a
    box (x0, y0, x1, y1), `W` a line width."""

    def __init__(self, background, draws: Draws):
        self.image = Image.new("RGB", (WIDTH, HEIGHT), background)
        self.draw = ImageDraw.Draw(self.image)
        self.s = 0.94 + 0.12 * draws.scale
        self.dx, self.dy = 10 * draws.shift_x - 5, 10 * draws.shift_y - 5

    def P(self, x, y):
        cx0, cy0 = CENTRE
        return (cx0 + self.s * (x - cx0) + self.dx, cy0 + self.s * (y - cy0) + self.dy)

    def B(self, x0, y0, x1, y1):
        return [*self.P(x0, y0), *self.P(x1, y1)]

    def W(self, w):
        return max(1, int(round(w * self.s)))

    def replace(self, image) -> None:
        """Continue drawing on `image` (a blend or a filter of the current one)."""
        self.image = image
        self.draw = ImageDraw.Draw(image)


@dataclass(frozen=True)
class Face:
    """One face's attributes (`on`), geometry and colours."""
    on: dict                  # attribute name -> bool
    draws: Draws
    fw: int                   # half the face's width
    chin: int
    skin: tuple
    shade_skin: tuple         # skin in shadow: neck, ears, lines
    hair: tuple
    hair_dark: tuple          # strands and waves
    beard: tuple              # the hair's colour, dark grey on a bald head

    @property
    def male(self) -> bool:
        return self.on["Male"]

    @property
    def has_hair(self) -> bool:
        return not self.on["Bald"]


def _hair_colour(row, hair_z, u, shade=None):
    if row[INDEX["Black_Hair"]] or row[INDEX["Brown_Hair"]]:
        t = float(hair_shade(row, hair_z)) if shade is None else float(shade)
        return _lerp(*DARK_RAMP, t)
    if row[INDEX["Blond_Hair"]]:
        return _lerp((196, 160, 86), (242, 218, 140), u)
    if row[INDEX["Gray_Hair"]]:
        return _lerp((140, 140, 142), (215, 215, 212), u)
    return _lerp((128, 40, 22), (205, 92, 40), u)           # no hair colour label: red / auburn


def _face(row, hair_z, draws: Draws, shade) -> Face:
    on = {a: bool(row[i]) for i, a in enumerate(ATTRIBUTES)}
    if on["Pale_Skin"]:
        skin = _lerp((246, 228, 220), (255, 240, 233), draws.skin)
    else:
        skin = _lerp((112, 74, 52), (232, 192, 160), draws.skin ** 0.7)
    hair = _hair_colour(row, hair_z, draws.hair, shade)
    return Face(on=on, draws=draws, fw=(45 if on["Male"] else 40) + (7 if on["Chubby"] else 0),
                chin=186 if on["Male"] else 182, skin=skin, shade_skin=_scale(skin, 0.78), hair=hair,
                hair_dark=_scale(hair, 0.72), beard=hair if not on["Bald"] else (72, 66, 60))


def _background(draws: Draws):
    bg = _lerp((70, 80, 90), (225, 220, 210), draws.background)
    return (min(255, int(bg[0] * (0.8 + 0.4 * draws.background_red))), bg[1],
            min(255, int(bg[2] * (0.8 + 0.4 * draws.background_blue))))


# --------------------------------------------------------------------------------------
# The parts, back to front
# --------------------------------------------------------------------------------------
def _hair_behind(c: Canvas, f: Face) -> None:
    """Hair behind the head: short for men, to the shoulders for women; waves, straight strands."""
    d, B, P, cx, fw, top = c.draw, c.B, c.P, CX, f.fw, TOP
    if f.male:
        d.ellipse(B(cx - fw - 6, top - 14, cx + fw + 6, top + 72), fill=f.hair)
    else:
        d.ellipse(B(cx - fw - 15, top - 18, cx + fw + 15, top + 92), fill=f.hair)
        d.rectangle(B(cx - fw - 15, top + 40, cx + fw + 15, 204), fill=f.hair)
    if f.on["Wavy_Hair"]:
        ys = range(top + 20, 200 if not f.male else top + 60, 12)
        xs = (cx - fw - (15 if not f.male else 6), cx + fw + (15 if not f.male else 6))
        for y in ys:
            for x in xs:
                d.ellipse(B(x - 7, y - 7, x + 7, y + 7), fill=f.hair_dark)
    if f.on["Straight_Hair"] and not f.male:
        for x in (cx - fw - 10, cx - fw - 4, cx + fw + 4, cx + fw + 10):
            d.line([P(x, top + 30), P(x, 198)], fill=f.hair_dark, width=c.W(2))


def _neck(c: Canvas, f: Face) -> None:
    """Shoulders, neck, necktie, necklace."""
    d, B, P, cx = c.draw, c.B, c.P, CX
    clothes = _lerp((30, 40, 60), (200, 60, 60), f.draws.clothes)
    clothes = (clothes[0], int(60 + 150 * f.draws.clothes_green), clothes[2])
    d.ellipse(B(cx - 88, 196, cx + 88, 300), fill=clothes)
    d.rectangle(B(cx - 18, 160, cx + 18, 205), fill=f.shade_skin)
    if f.on["Wearing_Necktie"]:
        d.polygon([P(cx - 22, 197), P(cx, 212), P(cx - 6, 218)], fill=(245, 245, 245))
        d.polygon([P(cx + 22, 197), P(cx, 212), P(cx + 6, 218)], fill=(245, 245, 245))
        tie = _lerp((150, 20, 30), (20, 40, 140), f.draws.tie)
        d.polygon([P(cx - 5, 203), P(cx + 5, 203), P(cx + 8, 225), P(cx - 8, 225)], fill=tie)
    if f.on["Wearing_Necklace"]:
        bead = (235, 200, 60) if f.draws.beads < 0.5 else (225, 225, 235)
        for k in range(9):
            ang = math.pi * (0.15 + 0.7 * k / 8)
            x, y = cx + 19 * math.cos(ang), 186 + 14 * math.sin(ang)
            d.ellipse(B(x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=bead)


def _head(c: Canvas, f: Face) -> None:
    """Ears and face (a man's with a square jaw)."""
    d, B, cx, fw = c.draw, c.B, CX, f.fw
    d.ellipse(B(cx - fw - 7, 108, cx - fw + 7, 140), fill=f.shade_skin)
    d.ellipse(B(cx + fw - 7, 108, cx + fw + 7, 140), fill=f.shade_skin)
    d.ellipse(B(cx - fw, TOP, cx + fw, f.chin), fill=f.skin)
    if f.male:
        d.rounded_rectangle(B(cx - fw + 2, 118, cx + fw - 2, f.chin), radius=c.W(24), fill=f.skin)


def _beard(c: Canvas, f: Face) -> None:
    """Stubble, full beard (no goatee, mustache or sideburns), sideburns, goatee."""
    d, B, cx, fw, chin = c.draw, c.B, CX, f.fw, f.chin
    if f.on["5_o_Clock_Shadow"]:
        d.chord(B(cx - fw + 3, 112, cx + fw - 3, chin), 0, 180, fill=_lerp(f.skin, (70, 80, 95), 0.35))
    specific = f.on["Goatee"] or f.on["Mustache"] or f.on["Sideburns"]
    if not f.on["No_Beard"] and not specific:
        d.chord(B(cx - fw, 110, cx + fw, chin + 3), 0, 180, fill=f.beard)
    if f.on["Sideburns"]:
        d.rectangle(B(cx - fw + 1, 100, cx - fw + 9, 142), fill=f.beard)
        d.rectangle(B(cx + fw - 9, 100, cx + fw - 1, 142), fill=f.beard)
    if f.on["Goatee"]:
        d.ellipse(B(cx - 13, 160, cx + 13, chin + 2), fill=f.beard)


def _hair_on_top(c: Canvas, f: Face) -> None:
    """Hair on top of the head, straight strands, receding hairline, fringe."""
    d, B, P, cx, fw, top = c.draw, c.B, c.P, CX, f.fw, TOP
    d.chord(B(cx - fw - 2, top - 12, cx + fw + 2, top + 62), 180, 360, fill=f.hair)
    if f.on["Straight_Hair"]:
        for x in range(cx - 28, cx + 29, 8):
            d.line([P(x, top - 6), P(x, top + 22)], fill=f.hair_dark, width=c.W(2))
    if f.on["Receding_Hairline"]:
        d.ellipse(B(cx - fw + 6, top + 4, cx - fw + 32, top + 36), fill=f.skin)
        d.ellipse(B(cx + fw - 32, top + 4, cx + fw - 6, top + 36), fill=f.skin)
    if f.on["Bangs"]:
        pts = [P(cx - fw + 4, top + 22)]
        n = 7
        for k in range(n + 1):
            x = cx - fw + 6 + (2 * fw - 12) * k / n
            pts.append(P(x, 94 if k % 2 == 0 else 86))
        pts.append(P(cx + fw - 4, top + 22))
        d.polygon(pts, fill=f.hair)


def _age(c: Canvas, f: Face) -> None:
    """Forehead lines, crow's feet and cheek folds."""
    d, P, cx, width = c.draw, c.P, CX, c.W(2)
    for y in (76, 83):
        d.line([P(cx - 18, y), P(cx + 18, y)], fill=f.shade_skin, width=width)
    for sx in (-1, 1):
        x = cx + sx * 32
        d.line([P(x, 110), P(x + sx * 7, 106)], fill=f.shade_skin, width=width)
        d.line([P(x, 114), P(x + sx * 7, 117)], fill=f.shade_skin, width=width)
        d.line([P(cx + sx * 11, 138), P(cx + sx * 20, 160)], fill=f.shade_skin, width=width)


def _eyes(c: Canvas, f: Face) -> list:
    """Each side: brow, eyeshadow, eye, iris, rosy cheek. Returns the eye centres in the image."""
    d, B, P, on = c.draw, c.B, c.P, f.on
    brow = _scale(f.hair, 0.6) if f.has_hair else (60, 50, 45)
    bw = c.W(6 if on["Bushy_Eyebrows"] else 3)
    iris = [(70, 45, 25), (60, 100, 160), (70, 120, 70), (35, 30, 30)][int(f.draws.iris * 4)]
    eh = 2.6 if on["Narrow_Eyes"] else 5.0
    eyes = []
    for sx in (-1, 1):
        ex, ey = CX + sx * 19, 112
        eyes.append(P(ex, ey))
        if on["Arched_Eyebrows"]:
            d.arc(B(ex - 12, 96, ex + 12, 112), 200, 340, fill=brow, width=bw)
        else:
            d.line([P(ex - 12, 101), P(ex + 12, 100)], fill=brow, width=bw)
        if on["Heavy_Makeup"]:
            shadow = [(120, 60, 140), (60, 90, 170), (150, 100, 60)][int(f.draws.eyeshadow * 3)]
            d.ellipse(B(ex - 11, ey - 10, ex + 11, ey + 1), fill=shadow)
        d.ellipse(B(ex - 9, ey - eh, ex + 9, ey + eh), fill=(245, 245, 240),
                  outline=(20, 20, 20) if on["Heavy_Makeup"] else None, width=c.W(2))
        r = min(4.0, eh)
        d.ellipse(B(ex - r, ey - r, ex + r, ey + r), fill=iris)
        if on["Rosy_Cheeks"]:
            d.ellipse(B(ex - 9 + sx * 6, 128, ex + 9 + sx * 6, 143), fill=_lerp(f.skin, (235, 110, 130), 0.55))
    return eyes


def _glasses(c: Canvas, f: Face, faint: bool) -> None:
    """Frames; `faint`: blended at 50% over the face without them."""
    without = c.image.copy() if faint else None
    d, B, P, cx = c.draw, c.B, c.P, CX
    frame = [(20, 20, 20), (90, 60, 30), (130, 130, 140)][int(f.draws.frame * 3)]
    for sx in (-1, 1):
        ex = cx + sx * 19
        d.rounded_rectangle(B(ex - 14, 102, ex + 14, 122), radius=c.W(5), outline=frame, width=c.W(3))
        d.line([P(ex + sx * 14, 108), P(cx + sx * f.fw, 112)], fill=frame, width=c.W(2))
    d.line([P(cx - 5, 110), P(cx + 5, 110)], fill=frame, width=c.W(3))
    if faint:
        c.replace(Image.blend(without, c.image, 0.5))


def _nose(c: Canvas, f: Face):
    """Returns the nose tip in design coordinates."""
    d, P, cx = c.draw, c.P, CX
    if f.on["Big_Nose"]:
        d.polygon([P(cx, 115), P(cx - 10, 141), P(cx + 10, 141)], fill=_scale(f.skin, 0.9), outline=f.shade_skin)
        return (cx, 140)
    d.line([P(cx, 120), P(cx - 4, 136), P(cx + 4, 136)], fill=f.shade_skin, width=c.W(2))
    return (cx, 136)


def _mouth(c: Canvas, f: Face) -> int:
    """Mustache, mouth (smiling, open, lips, lipstick), double chin. Returns the mouth's half width."""
    d, B, P, cx, on, skin = c.draw, c.B, c.P, CX, f.on, f.skin
    if on["Mustache"]:
        d.ellipse(B(cx - 18, 142, cx + 18, 150), fill=f.beard)
    lips = (200, 25, 45) if on["Wearing_Lipstick"] else _scale((skin[0], int(skin[1] * 0.7), int(skin[2] * 0.7)), 0.85)
    lw = c.W(6 if on["Big_Lips"] else 3)
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
        d.arc(B(cx - 24, f.chin - 12, cx + 24, f.chin + 8), 25, 155, fill=f.shade_skin, width=c.W(2))
    return 18 if on["Smiling"] else 14


def _hat(c: Canvas, f: Face) -> None:
    d, B, cx, fw, top = c.draw, c.B, CX, f.fw, TOP
    hat = _lerp((30, 30, 40), (190, 150, 90), f.draws.hat)
    hat = (hat[0], min(255, int(hat[1] * (0.6 + 0.6 * f.draws.hat_green))), hat[2])
    d.rounded_rectangle(B(cx - fw - 4, top - 32, cx + fw + 4, top + 22), radius=c.W(12), fill=hat)
    d.rectangle(B(cx - fw - 20, top + 16, cx + fw + 20, top + 26), fill=_scale(hat, 0.8))


def _earrings(c: Canvas, f: Face) -> None:
    metal = (230, 190, 50) if f.draws.earrings < 0.6 else (215, 215, 225)
    for sx in (-1, 1):
        x = CX + sx * (f.fw + 1)
        c.draw.ellipse(c.B(x - 4, 139, x + 4, 147), fill=metal)


def _landmarks_and_box(c: Canvas, f: Face, eyes, nose_tip, half: int):
    """CelebA's 10 landmark coordinates (eyes, nose tip, mouth corners) and the face box (x, y, w, h)."""
    P = c.P
    mouth = [P(CX - half, 154), P(CX + half, 154)]
    points = [eyes[0], eyes[1], P(*nose_tip), mouth[0], mouth[1]]
    landmarks = [int(round(v)) for pt in points for v in pt]
    x0, y0 = P(CX - f.fw, TOP)
    x1, y1 = P(CX + f.fw, f.chin)
    return landmarks, [int(round(x0)), int(round(y0)), int(round(x1 - x0)), int(round(y1 - y0))]


# --------------------------------------------------------------------------------------
# One face
# --------------------------------------------------------------------------------------
def render_face(attributes, hair_z: float = 0.0, seed=0, *, shade: float | None = None,
                faint_glasses: bool = False):
    """Draw one 178x218 face for an attribute row (40 values in {0, 1}).

    Returns (image, landmarks, bbox): a PIL RGB image, the 10 landmark coordinates
    (eyes, nose tip, mouth corners) and the face box (x, y, width, height). Only the
    visible attributes change the drawing; `seed` (an int or a sequence of ints) sets the
    per-image variation (colours, shift, scale: :class:`Draws`), drawn up front so that changing one
    attribute changes only what that attribute draws. The noise bands' faces: `shade` overrides the
    black/brown shade set by `hair_z`; `faint_glasses` draws glasses at 50% opacity whatever the
    Eyeglasses label (halfway, pixel by pixel, between the face without and with glasses).
    """
    row = np.asarray(attributes).astype(bool)
    draws = Draws.from_seed(seed)
    f = _face(row, hair_z, draws, shade)
    c = Canvas(_background(draws), draws)
    if f.has_hair:
        _hair_behind(c, f)
    _neck(c, f)
    _head(c, f)
    _beard(c, f)
    if f.has_hair:
        _hair_on_top(c, f)
    if not f.on["Young"]:
        _age(c, f)
    eyes = _eyes(c, f)
    if f.on["Eyeglasses"] or faint_glasses:
        _glasses(c, f, faint_glasses)
    nose_tip = _nose(c, f)
    half = _mouth(c, f)
    if f.on["Wearing_Hat"]:
        _hat(c, f)
    if f.on["Wearing_Earrings"]:
        _earrings(c, f)
    if f.on["Blurry"]:
        c.replace(c.image.filter(ImageFilter.GaussianBlur(3)))
    landmarks, bbox = _landmarks_and_box(c, f, eyes, nose_tip, half)
    return c.image, landmarks, bbox
