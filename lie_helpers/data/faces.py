"""Drawing one generated face from its attribute row: :func:`render_face` (PIL ImageDraw).

What each visible attribute draws is :data:`DRAWING` (recorded in ``ground_truth.json``); the
ground truth of the generated data is told in :mod:`lie_helpers.data.generated_celeba`.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .attributes import ATTRIBUTES, INDEX
from .generated_model import VISIBLE_ATTRIBUTES, hair_shade

WIDTH, HEIGHT = 178, 218
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


def _hair_colour(row, hair_z, u, shade=None):
    if row[INDEX["Black_Hair"]] or row[INDEX["Brown_Hair"]]:
        t = float(hair_shade(row, hair_z)) if shade is None else float(shade)
        return _lerp(*DARK_RAMP, t)
    if row[INDEX["Blond_Hair"]]:
        return _lerp((196, 160, 86), (242, 218, 140), u)
    if row[INDEX["Gray_Hair"]]:
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
