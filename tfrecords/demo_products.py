"""The demo categories: how each builds one product (its shape, materials and print).

A builder takes the product's `Traits` and returns what `demo_render.render` draws:
a Lathe (round things), a Cuboid (boxes) or a Relief (shoes, bags...).
Lengths are in units of the product's height; a lathe's profile is its radius
from the bottom (0) to the top (1). The first three categories keep the names
tests and older datasets know.
"""

import numpy as np
from PIL import Image, ImageDraw

from tfrecords.demo_labels import (
    PATTERNS, TEXELS, Colour, paint_label, paint_pattern, small_print, vertical_text, with_gloss,
)
from tfrecords.demo_reliefs import backpack, bag, headphones, shoe
from tfrecords.demo_render import Cuboid, Lathe, mip_levels
from tfrecords.demo_traits import Traits

_HEIGHTS = np.linspace(0, 1, 96)
_METAL = (175, 175, 182)


def _profile(points: list[tuple[float, float]], smooth: int = 5) -> np.ndarray:
    """Radii at _HEIGHTS through (height, radius) points, rounded by a moving average of 2·smooth + 1."""
    heights, radii = zip(*points)
    profile = np.interp(_HEIGHTS, heights, radii)
    if not smooth:
        return profile
    padded = np.pad(profile, smooth, mode="edge")
    return np.convolve(padded, np.ones(2 * smooth + 1) / (2 * smooth + 1), mode="same")[smooth:-smooth]


def _wrap_texture(profile: np.ndarray, base: Colour, gloss: float) -> Image.Image:
    """A texture that goes once round the widest part of `profile`, filled with `base`."""
    columns = 2 * int(np.pi * float(profile.max()) * TEXELS)
    return Image.new("RGBA", (columns, TEXELS), with_gloss(base, gloss))


def _rows(texture: Image.Image, low: float, high: float) -> tuple[int, int, int, int]:
    """The box of `texture` between heights `low` and `high` (0 bottom, 1 top)."""
    return 0, int((1 - high) * TEXELS), texture.width, int((1 - low) * TEXELS)


def _band(texture: Image.Image, low: float, high: float, colour: Colour, gloss: float) -> None:
    """Paint heights `low` to `high` of a wrapped texture one colour: a cap, a lid, a rim."""
    ImageDraw.Draw(texture).rectangle(_rows(texture, low, high), fill=with_gloss(colour, gloss))


def bottle(t: Traits) -> Lathe:
    body, shoulder = t.uniform("body", 0.15, 0.25), t.uniform("shoulder", 0.42, 0.68)
    neck, neck_at = t.uniform("neck", 0.045, 0.08), min(0.86, shoulder + t.uniform("neck_length", 0.1, 0.22))
    cap = t.uniform("cap", 0.06, 0.12)
    profile = _profile([(0, body * 0.9), (0.03, body), (shoulder, body), (neck_at, neck), (1 - cap - 0.01, neck),
                        (1 - cap, neck * 1.25), (1, neck * 1.2)], 3)
    glass, cap_colour = t.colour("glass", (0.2, 0.9), (0.15, 0.75)), t.colour("cap", (0.0, 0.9), (0.1, 0.95))
    texture = _wrap_texture(profile, glass, 0.9)
    label = _rows(texture, t.uniform("label_low", 0.06, 0.2), shoulder - 0.03)
    paint_label(texture, label, t.print_design(), 0.15, wrap=True)
    _band(texture, 1 - cap, 1, cap_colour, 0.5)
    return Lathe(profile, mip_levels(texture), cap_colour, shininess=60)


def can(t: Traits) -> Lathe:
    radius = t.uniform("radius", 0.24, 0.34)
    profile = _profile([(0, radius * 0.86), (0.05, radius), (0.92, radius), (1, radius * 0.84)], 2)
    texture = _wrap_texture(profile, _METAL, 1.0)
    paint_label(texture, _rows(texture, 0.06, 0.92), t.print_design(), 0.6, wrap=True)
    return Lathe(profile, mip_levels(texture), _METAL, shininess=50)


def jar(t: Traits) -> Lathe:
    radius, lid = t.uniform("radius", 0.32, 0.46), t.uniform("lid", 0.12, 0.2)
    profile = _profile([(0, radius * 0.92), (0.04, radius), (0.86 - lid, radius), (0.96 - lid, radius * 0.86),
                        (1 - lid, radius * 0.9), (1, radius * 0.9)], 2)
    contents, lid_colour = t.colour("contents", (0.4, 1.0), (0.2, 0.8)), t.colour("lid", (0.0, 0.8), (0.2, 0.95))
    texture = _wrap_texture(profile, contents, 0.8)
    paint_label(texture, _rows(texture, t.uniform("label_low", 0.1, 0.25), 0.8 - lid), t.print_design(), 0.1, wrap=True)
    _band(texture, 1 - lid, 1, lid_colour, 0.6)
    return Lathe(profile, mip_levels(texture), lid_colour, shininess=50)


def mug(t: Traits) -> Lathe:
    radius = t.uniform("radius", 0.3, 0.42)
    profile = _profile([(0, radius * t.uniform("taper", 0.82, 1.0)), (1, radius)], 1)
    design = t.print_design()
    texture = _wrap_texture(profile, design.paper, 0.6)  # the print on glazed ceramic of the paper's colour
    paint_label(texture, _rows(texture, 0.12, 0.88), design, 0.6, wrap=True)
    handle = t.uniform("handle", 0.15, 0.22)
    return Lathe(profile, mip_levels(texture), design.paper, open_top=True, handle=handle, shininess=45)


def vase(t: Traits) -> Lathe:
    base, belly = t.uniform("base", 0.12, 0.24), t.uniform("belly", 0.22, 0.38)
    belly_at = t.uniform("belly_at", 0.25, 0.55)
    neck, neck_at = t.uniform("neck", 0.07, 0.14), t.uniform("neck_at", 0.72, 0.88)
    profile = _profile([(0, base), (belly_at, belly), (neck_at, neck), (1, neck * t.uniform("lip", 1.1, 1.6))], 8)
    design = t.print_design("glaze")
    texture = _wrap_texture(profile, design.paper, 0.7)
    paint_pattern(texture, (0, 0, texture.width, TEXELS), design, t.pick("pattern", PATTERNS), 0.7)
    return Lathe(profile, mip_levels(texture), design.paper, open_top=True, shininess=35)


def spray(t: Traits) -> Lathe:
    radius, shoulder = t.uniform("radius", 0.12, 0.17), t.uniform("shoulder", 0.68, 0.8)
    profile = _profile([(0, radius * 0.9), (0.03, radius), (shoulder, radius), (shoulder + 0.06, radius * 0.7),
                        (shoulder + 0.07, radius * 0.85), (1, radius * 0.8)], 2)
    cap_colour = t.colour("cap", (0.0, 0.9), (0.2, 0.95))
    texture = _wrap_texture(profile, _METAL, 1.0)
    paint_label(texture, _rows(texture, 0.04, shoulder - 0.01), t.print_design(), 0.5, wrap=True)
    _band(texture, shoulder + 0.07, 1, cap_colour, 0.5)
    return Lathe(profile, mip_levels(texture), cap_colour, shininess=55)


def lamp(t: Traits) -> Lathe:
    base, stem = t.uniform("base", 0.16, 0.26), t.uniform("stem", 0.02, 0.04)
    shade_at = t.uniform("shade_at", 0.42, 0.6)
    bottom, top = t.uniform("shade", 0.28, 0.4), t.uniform("shade_top", 0.5, 0.85)
    profile = _profile([(0, base), (0.04, base * 0.9), (0.06, stem), (shade_at - 0.01, stem), (shade_at, bottom),
                        (1, bottom * top)], 0)
    metal, design = t.colour("metal", (0.0, 0.6), (0.25, 0.9)), t.print_design("shade")
    texture = _wrap_texture(profile, metal, 0.9)
    paint_pattern(texture, _rows(texture, shade_at, 1), design, t.pick("pattern", PATTERNS), 0.05)
    return Lathe(profile, mip_levels(texture), design.paper, open_top=True, shininess=30)


def cup(t: Traits) -> Lathe:
    """A takeaway cup: a flared paper cup with a sleeve and a domed lid."""
    bottom, lid = t.uniform("bottom", 0.18, 0.24), t.uniform("lid", 0.08, 0.13)
    top = bottom * t.uniform("flare", 1.2, 1.45)
    profile = _profile([(0, bottom), (1 - lid, top), (1 - lid + 0.01, top * 1.05), (1 - lid + 0.03, top * 1.05),
                        (1 - lid * 0.4, top * 0.9), (1, top * 0.8)], 1)
    design, lid_colour = t.print_design(), t.colour("lid", (0.0, 0.5), (0.1, 0.98))
    texture = _wrap_texture(profile, design.paper, 0.15)
    sleeve = _rows(texture, t.uniform("sleeve_low", 0.15, 0.3), t.uniform("sleeve_high", 0.55, 0.75))
    paint_label(texture, sleeve, design, 0.1, wrap=True)
    _band(texture, 1 - lid, 1, lid_colour, 0.4)
    return Lathe(profile, mip_levels(texture), lid_colour, shininess=30)


def tube(t: Traits) -> Lathe:
    """A squeeze tube standing on its cap."""
    cap, width = t.uniform("cap", 0.09, 0.13), t.uniform("width", 0.15, 0.21)
    cap_height = t.uniform("cap_height", 0.1, 0.16)
    profile = _profile([(0, cap), (cap_height, cap), (cap_height + 0.01, cap * 1.05), (0.95, width),
                        (1, width * 0.95)], 1)
    design, cap_colour = t.print_design(), t.colour("cap", (0.0, 0.9), (0.1, 0.95))
    texture = _wrap_texture(profile, design.paper, 0.4)
    paint_label(texture, _rows(texture, cap_height + 0.02, 0.97), design, 0.4, wrap=True)
    _band(texture, 0, cap_height + 0.01, cap_colour, 0.5)
    return Lathe(profile, mip_levels(texture), design.paper, shininess=35)


def _face(width: float, height: float, colour: Colour, gloss: float) -> Image.Image:
    """A box face's texture, `width` x `height` product heights, filled with `colour`."""
    return Image.new("RGBA", (max(4, int(width * TEXELS)), max(4, int(height * TEXELS))), with_gloss(colour, gloss))


def _faces(**textures: Image.Image) -> dict[str, list[np.ndarray]]:
    return {name: mip_levels(texture) for name, texture in textures.items()}


def box(t: Traits) -> Cuboid:
    width, depth = t.uniform("width", 0.55, 0.85), t.uniform("depth", 0.15, 0.35)
    design = t.print_design()
    front, side, top = (_face(w, h, design.paper, 0.25) for w, h in ((width, 1), (depth, 1), (width, depth)))
    paint_label(front, (0, 0, front.width, front.height), design, 0.25, wrap=False)
    draw = ImageDraw.Draw(side)  # the side: a colour band over the small print
    draw.rectangle((0, side.height * 0.1, side.width, side.height * 0.3), fill=with_gloss(design.accent, 0.25))
    print_area = (3, side.height * 0.45, side.width - 3, side.height * 0.9)
    small_print(draw, print_area, design.ink, 0.25, np.random.default_rng(design.details))
    return Cuboid(width, depth, _faces(front=front, side=side, left=side, top=top))


def carton(t: Traits) -> Cuboid:
    """A milk carton: a square box with a gable roof."""
    width, gable = t.uniform("width", 0.42, 0.55), t.uniform("gable", 0.16, 0.24)
    design = t.print_design()
    front, top = _face(width, 1, design.paper, 0.3), _face(width, gable, design.paper, 0.3)
    roof = _face(width, np.hypot(gable, width / 2), design.accent, 0.3)
    paint_label(front, (0, 0, front.width, front.height), design, 0.3, wrap=False)
    print_area = (4, roof.height * 0.3, roof.width - 4, roof.height * 0.7)
    small_print(ImageDraw.Draw(roof), print_area, design.paper, 0.3, np.random.default_rng(design.details))
    return Cuboid(width, width, _faces(front=front, side=front, left=front, top=top, roof=roof), gable=gable)


def book(t: Traits) -> Cuboid:
    """A book standing up: cover in front, spine on the left, page edges on the right and on top."""
    width, depth = t.uniform("width", 0.62, 0.78), t.uniform("thickness", 0.08, 0.18)
    design = t.print_design("cover")
    cover, pages = _face(width, 1, design.paper, 0.3), _face(depth, 1, (236, 230, 215), 0.0)
    paint_label(cover, (0, 0, cover.width, cover.height), design, 0.3, wrap=False)
    spine = _face(depth, 1, design.accent if design.layout in ("bands", "frame") else design.paper, 0.3)
    spine.paste(with_gloss(design.ink, 0.3), (0, 0), vertical_text(design.brand, spine.size))
    lines = ImageDraw.Draw(pages)
    for x in range(0, pages.width, 2):
        lines.line([(x, 0), (x, pages.height)], fill=(214, 208, 192, 0))
    top = pages.rotate(90, expand=True).resize((cover.width, pages.width))
    return Cuboid(width, depth, _faces(front=cover, side=pages, left=spine, top=top))


BUILDERS = {
    "bottle": bottle, "box": box, "can": can, "shoe": shoe, "mug": mug, "bag": bag, "jar": jar, "carton": carton,
    "vase": vase, "book": book, "spray": spray, "backpack": backpack, "lamp": lamp, "cup": cup, "tube": tube,
    "headphones": headphones,
}
CATEGORIES = tuple(BUILDERS)  # in the order `DemoOptions.categories` takes them
