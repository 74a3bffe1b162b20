"""The demo categories drawn as side views with a height map: shoe, bag, backpack, headphones.

Each builder draws the product's colours (albedo) and raised details (bumps) with
PIL on a SIDE x SIDE square, standing on the line y = 0.95·SIDE (coordinates in
SIDEs, y down); the body's height map is its blurred outline, rounded, so shading
makes it look stuffed and 3D. A `Relief` renders as demo_render's objects do: the
shaded drawing, mirrored for the other side, squashed and warped for the pose.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from tfrecords.demo_labels import LOGOS, Colour, paint_logo
from tfrecords.demo_render import Light, shade
from tfrecords.demo_traits import Traits

SIDE = 128  # pixels of a relief drawing; shots scale it
_GROUND = 0.95
_WHITE, _BLACK = (245, 245, 240), (30, 30, 32)
_SOLES = (_WHITE, _BLACK, (176, 120, 70))  # the last: gum rubber


@dataclass(frozen=True)
class Relief:
    albedo: np.ndarray  # [rows, columns, 4] RGB and coverage, cut to the object's outline
    normals: np.ndarray  # [rows, columns, 3] unit normals of the height map
    gloss: float
    shininess: float = 20.0

    @property
    def extent(self) -> float:
        return max(1.0, self.albedo.shape[1] / self.albedo.shape[0])

    def render(self, pixels: float, yaw: float, tilt: float, light: Light) -> tuple[np.ndarray, tuple[float, float]]:
        # A side view: turned far to the left (yaw < -0.5), the other side shows (mirrored); the
        # rest of the turn and the tilt become a squash and a keystone warp of the shaded drawing.
        albedo, normals = self.albedo, self.normals
        if yaw < -0.5:
            albedo, normals = albedo[:, ::-1], normals[:, ::-1] * np.array([-1, 1, 1], np.float32)
        colour = shade(albedo[..., :3], self.gloss, normals, light, self.shininess)
        rgba = np.clip(np.concatenate([colour, albedo[..., 3:]], -1), 0, 1)
        image = Image.fromarray((rgba * 255).astype(np.uint8), "RGBA")
        height = max(4.0, pixels)
        width = height * image.width / image.height * (0.7 + 0.3 * abs(np.cos(yaw)))
        lean = 0.12 * np.sin(2 * yaw) * height  # the nearer end looks taller
        drop = 0.25 * np.sin(tilt) * height  # seen from above, the top edge comes down
        rise = abs(lean) / 2
        target = np.array([(0, rise + lean / 2 + drop), (width, rise - lean / 2 + drop),
                           (width, rise + height - lean / 2), (0, rise + height + lean / 2)])
        source = np.array([(0, 0), (image.width, 0), (image.width, image.height), (0, image.height)], float)
        size = (int(width) + 2, int(height + 2 * rise) + 2)
        warped = image.transform(size, Image.PERSPECTIVE, _perspective_coefficients(target, source), Image.BILINEAR)
        return np.asarray(warped, np.float32) / 255, (width / 2, rise + height)


def _perspective_coefficients(target: np.ndarray, source: np.ndarray) -> list[float]:
    """PIL's 8 PERSPECTIVE coefficients mapping the `target` corners [4, 2] back onto `source`."""
    rows = []
    for (x, y), (u, v) in zip(target, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return list(np.linalg.solve(np.array(rows), source.reshape(-1)))


class _Sketch:
    """An albedo (RGBA) and a bump (L) drawing."""

    def __init__(self):
        self.albedo, self.bumps = Image.new("RGBA", (SIDE, SIDE), (0, 0, 0, 0)), Image.new("L", (SIDE, SIDE), 0)
        self.paint, self.raise_ = ImageDraw.Draw(self.albedo), ImageDraw.Draw(self.bumps)

    def polygon(self, points, colour: Colour, bump: int = 0) -> None:
        """Fill `points` with `colour`; `bump` > 0 also raises them (0-255)."""
        scaled = [(x * SIDE, y * SIDE) for x, y in points]
        self.paint.polygon(scaled, fill=(*colour, 255))
        if bump:
            self.raise_.polygon(scaled, fill=bump)

    def shape(self, kind: str, box, colour: Colour, bump: int = 0, **options) -> None:
        """`kind` is an ImageDraw method taking a box: ellipse, rounded_rectangle, arc, chord, rectangle."""
        scaled = [v * SIDE for v in box]
        getattr(self.paint, kind)(scaled, fill=(*colour, 255), **options)
        if bump:
            getattr(self.raise_, kind)(scaled, fill=bump, **options)

    def logo(self, centre, size: float, shape: str, colour: Colour, inner: Colour) -> None:
        paint_logo(self.paint, (centre[0] * SIDE, centre[1] * SIDE), size * SIDE, shape, colour, inner, 1.0)

    def relief(self, rng: np.random.Generator, gloss: float, depth: float, grain: float) -> Relief:
        """Shade-ready, cut to the outline: normals of the blurred outline (`depth` SIDEs
        high) plus the bumps; the albedo roughened by `grain` (leather, fabric)."""
        coverage = self.albedo.getchannel("A")
        outline = np.asarray(coverage.filter(ImageFilter.GaussianBlur(SIDE * 0.05)), np.float32) / 255
        bumps = np.asarray(self.bumps.filter(ImageFilter.GaussianBlur(1.2)), np.float32) / 255
        height = (np.sqrt(outline) * depth + bumps * 0.02) * SIDE
        slope_rows, slope_columns = np.gradient(height)
        normals = np.stack([-slope_columns, slope_rows, np.ones_like(height)], -1)
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
        coarse = Image.fromarray(rng.random((SIDE // 4, SIDE // 4), dtype=np.float32), "F")
        coarse = coarse.resize((SIDE, SIDE), Image.BILINEAR)
        texture = 1 + grain * (np.asarray(coarse) - 0.5 + rng.random((SIDE, SIDE), dtype=np.float32) - 0.5)
        albedo = np.asarray(self.albedo, np.float32) / 255
        albedo[..., :3] *= texture[..., None]
        left, top, right, bottom = coverage.getbbox()
        cut = (slice(top, bottom), slice(left, right))
        return Relief(np.clip(albedo[cut], 0, 1), normals[cut].astype(np.float32), gloss)


def _own_logo(t: Traits) -> str:
    return LOGOS[int(t.own.integers(len(LOGOS)))]


def _darker(colour: Colour, factor: float) -> Colour:
    return tuple(int(c * factor) for c in colour)


def shoe(t: Traits) -> Relief:
    sole, collar, toe = t.uniform("sole", 0.05, 0.1), t.uniform("collar", 0.2, 0.48), t.uniform("toe", 0.11, 0.17)
    top = _GROUND - sole  # where the upper meets the sole
    upper, accent = t.colour("upper", (0.0, 0.9), (0.15, 0.95)), t.colour("accent", (0.4, 1.0), (0.3, 1.0))
    sketch = _Sketch()
    sketch.polygon([(0.1, top), (0.07, top - collar * 0.6), (0.12, top - collar), (0.3, top - collar * 0.92),
                    (0.45, top - collar * 0.78), (0.62, top - toe * 1.35), (0.84, top - toe), (0.95, top - toe * 0.35),
                    (0.95, top)], upper)
    sketch.shape("ellipse", (0.76, top - toe * 1.05, 0.97, top + 0.01), upper)  # the toe box
    sketch.polygon([(0.42, top - collar * 0.8), (0.37, top - collar * 1.05), (0.45, top - collar * 1.06),
                    (0.51, top - collar * 0.72)], upper, bump=60)  # the tongue
    sole_colour = t.pick("sole_colour", _SOLES)
    sketch.shape("rounded_rectangle", (0.05, top, 0.97, _GROUND), sole_colour, bump=160, radius=int(sole * SIDE / 2))
    sketch.shape("rectangle", (0.05, top + sole * 0.35, 0.97, top + sole * 0.5), accent)
    heel = [(0.07, top - collar * 0.6), (0.12, top - collar), (0.2, top - collar * 0.96), (0.14, top - collar * 0.5)]
    sketch.polygon(heel, accent)
    mark, colour = t.own.integers(4), t.own_colour()
    if mark == 0:  # a swoosh
        swoosh = [(0.28, top - 0.02), (0.82, top - toe * 1.3), (0.5, top - 0.06), (0.33, top - 0.05)]
        sketch.polygon(swoosh, colour, bump=90)
    elif mark == 1:  # three stripes
        for x in (0.38, 0.44, 0.5):
            low, high = top - 0.01, top - collar * 0.7
            sketch.polygon([(x, low), (x + 0.035, low), (x + 0.1, high), (x + 0.065, high)], colour, bump=90)
    elif mark == 2:  # a toe cap and a heel patch
        sketch.shape("ellipse", (0.78, top - toe * 0.95, 0.97, top + 0.01), colour, bump=60)
        sketch.shape("rectangle", (0.08, top - collar * 0.4, 0.2, top), colour)
    else:
        sketch.logo((0.3, top - collar * 0.45), 0.12, _own_logo(t), colour, accent)
    laces = t.pick("laces", (_WHITE, _BLACK, upper))
    for step in range(5):
        x, y = 0.44 + step * 0.04, top - collar * 0.78 + step * (collar * 0.78 - toe * 1.35) / 4.5
        sketch.shape("ellipse", (x - 0.02, y - 0.008, x + 0.02, y + 0.012), laces, bump=255)
    return sketch.relief(t.own, gloss=t.uniform("gloss", 0.05, 0.5), depth=0.18, grain=0.12)


def bag(t: Traits) -> Relief:
    top, width, flare = t.uniform("top", 0.4, 0.55), t.uniform("width", 0.45, 0.65), t.uniform("flare", 1.0, 1.3)
    leather, trim = t.colour("leather", (0.2, 0.9), (0.15, 0.85)), t.colour("trim", (0.0, 0.8), (0.1, 0.9))
    left, right, bottom = 0.5 - width / 2, 0.5 + width / 2, min(0.9, width * flare)
    sketch = _Sketch()
    handle = t.uniform("handle", 0.15, 0.3)
    sketch.shape("arc", (0.5 - width * 0.3, top - handle, 0.5 + width * 0.3, top + handle), trim, bump=200,
                 start=180, end=360, width=int(SIDE * 0.04))
    base = _GROUND - 0.04
    sketch.polygon([(left, top), (right, top), (0.5 + bottom / 2, base), (0.5 - bottom / 2, base)], leather)
    sketch.shape("rounded_rectangle", (0.5 - bottom / 2, _GROUND - 0.1, 0.5 + bottom / 2, _GROUND), leather,
                 radius=int(SIDE * 0.05))
    pattern = t.pick("pattern", ("plain", "quilted", "monogram", "band"))
    if pattern == "quilted":  # diagonal stitching, kept inside the bag's outline
        seams = Image.new("L", (SIDE, SIDE), 0)
        for x in np.arange(-0.6, 0.6, 0.09):
            for y0, y1 in ((top, _GROUND), (_GROUND, top)):
                ImageDraw.Draw(seams).line([((0.5 + x) * SIDE, y0 * SIDE), ((0.9 + x) * SIDE, y1 * SIDE)], fill=255)
        inside = ImageChops.multiply(seams, sketch.albedo.getchannel("A"))
        sketch.albedo.paste((*_darker(leather, 0.7), 255), (0, 0), inside)
    elif pattern == "monogram":
        for y in np.arange(top + 0.06, _GROUND - 0.04, 0.09):
            for x in np.arange(left + 0.05, right, 0.09):
                sketch.logo((x, y), 0.04, "diamond", _darker(leather, 0.7), leather)
    elif pattern == "band":
        sketch.shape("rectangle", (0.5 - bottom / 2, _GROUND - 0.2, 0.5 + bottom / 2, _GROUND - 0.14), trim)
    flap = t.pick("flap", ("v", "round", "none"))
    if flap == "v":
        sketch.polygon([(left, top), (right, top), (0.5, top + (_GROUND - top) * 0.5)], trim, bump=120)
    elif flap == "round":
        sketch.shape("chord", (left, top - 0.15, right, top + (_GROUND - top) * 0.45), trim, bump=120, start=0, end=180)
    clasp = (0.5, top + (_GROUND - top) * (0.45 if flap != "none" else 0.3))
    metal = t.pick("metal", ((212, 175, 55), (192, 192, 200)))  # gold or silver
    sketch.logo(clasp, 0.09, _own_logo(t), metal, t.own_colour())
    return sketch.relief(t.own, gloss=t.uniform("gloss", 0.1, 0.6), depth=0.12, grain=0.1)


def backpack(t: Traits) -> Relief:
    width, pocket = t.uniform("width", 0.5, 0.68), t.uniform("pocket", 0.3, 0.45)
    fabric, panel = t.colour("fabric", (0.2, 0.95), (0.15, 0.9)), t.colour("panel", (0.2, 0.95), (0.15, 0.9))
    left, right, rounding = 0.5 - width / 2, 0.5 + width / 2, int(SIDE * width * 0.35)
    sketch = _Sketch()
    sketch.shape("arc", (0.42, 0.04, 0.58, 0.2), _BLACK, bump=200, start=180, end=360, width=int(SIDE * 0.025))
    sketch.shape("rounded_rectangle", (left, 0.12, right, _GROUND), fabric, radius=rounding)
    if t.pick("two_tone", (True, False)):
        sketch.shape("rounded_rectangle", (left, 0.12, right, 0.32), panel, radius=rounding)
    pocket_top = _GROUND - pocket
    sketch.shape("rounded_rectangle", (left + 0.06, pocket_top, right - 0.06, _GROUND - 0.05), panel, bump=150,
                 radius=int(SIDE * 0.06))
    zipper = t.own_colour()
    sketch.shape("arc", (left + 0.04, 0.16, right - 0.04, 0.5), zipper, start=200, end=340, width=2)
    sketch.shape("rectangle", (left + 0.08, pocket_top + 0.03, right - 0.08, pocket_top + 0.045), zipper)
    sketch.logo((0.5, pocket_top + pocket * 0.5), 0.1, _own_logo(t), t.own_colour(), t.own_colour())
    return sketch.relief(t.own, gloss=t.uniform("gloss", 0.0, 0.3), depth=0.15, grain=0.18)


def headphones(t: Traits) -> Relief:
    spread, cup = t.uniform("spread", 0.28, 0.36), t.uniform("cup", 0.18, 0.26)
    shell, band = t.colour("shell", (0.0, 0.9), (0.1, 0.95)), t.colour("band", (0.0, 0.9), (0.1, 0.9))
    sketch = _Sketch()
    sketch.shape("arc", (0.5 - spread, 0.08, 0.5 + spread, 0.5 + spread * 1.2), band, bump=150, start=180, end=360,
                 width=int(SIDE * 0.06))
    for x in (0.5 - spread, 0.5 + spread):
        sketch.shape("rectangle", (x - 0.02, 0.42, x + 0.02, 0.58), (170, 170, 175), bump=100)  # the sliders
        sketch.shape("ellipse", (x - cup * 0.55, _GROUND - cup * 1.5, x + cup * 0.55, _GROUND), shell)
        cushion = (x - cup * 0.35, _GROUND - cup * 1.25, x + cup * 0.35, _GROUND - cup * 0.25)
        sketch.shape("ellipse", cushion, _darker(shell, 0.8), bump=90)
    accent, logo = t.own_colour(), _own_logo(t)
    for x in (0.5 - spread, 0.5 + spread):
        sketch.logo((x, _GROUND - cup * 0.75), cup * 0.5, logo, accent, shell)
    return sketch.relief(t.own, gloss=t.uniform("gloss", 0.2, 0.8), depth=0.1, grain=0.04)
