"""The printed surfaces of the demo products: labels, box faces and glaze patterns (PIL).

Textures are RGBA images whose alpha is the surface's gloss (255: glass, 0: matte
paper), 128 texels to one product height. What is printed is a `Print`: the details
that tell two products of one category apart (brand name, logo, layout, colours).
"""

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Colour = tuple[int, int, int]
LAYOUTS = ("bands", "stripes", "split", "frame", "wave", "disc", "plain")
LOGOS = ("circle", "ring", "diamond", "star", "triangle", "hexagon", "chevron", "leaf", "sun", "square")
PATTERNS = ("rings", "dots", "zigzag", "waves", "checks", "glaze")
TEXELS = 128  # texels per product height


@dataclass(frozen=True)
class Print:
    paper: Colour  # the label's background
    ink: Colour  # text
    accent: Colour  # the layout's shapes
    second: Colour  # a second accent (bands, the logo's inner shape)
    layout: str  # one of LAYOUTS
    band: float  # where the layout's shapes sit, 0 (top) to 1 (bottom)
    logo: str  # one of LOGOS
    logo_colour: Colour
    brand: str  # the name printed large
    brand_size: float  # letter height, share of the label's height
    details: int  # seed of the small print and the barcode


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(4, size))


def with_gloss(colour: Colour, gloss: float) -> tuple[int, int, int, int]:
    return (*colour, int(gloss * 255))


def paint_label(image: Image.Image, box: tuple[float, float, float, float], design: Print, gloss: float,
                wrap: bool) -> None:
    """Print `design` into `box` (left, top, right, bottom) of the texture `image`.
    `wrap`: the label goes round a cylinder, its front at the box's centre and its
    back (barcode, small print) at the box's two ends."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    draw = ImageDraw.Draw(image)
    draw.rectangle(box, fill=with_gloss(design.paper, gloss))
    _layout(draw, box, design, gloss)
    front = (left + width / 2, top + height * (0.42 if design.band > 0.5 else 0.58))
    face = min(width / (2 if wrap else 1), height)
    logo_size = face * 0.22
    logo_at = (front[0], front[1] - height * 0.22 if design.band > 0.5 else front[1] + height * 0.22)
    paint_logo(draw, logo_at, logo_size, design.logo, design.logo_colour, design.second, gloss)
    letters = max(5, int(height * design.brand_size))
    font = _font(min(letters, int(face * 1.6 / max(len(design.brand), 1))))
    draw.text(front, design.brand, fill=with_gloss(design.ink, gloss), font=font, anchor="mm")
    rng = np.random.default_rng(design.details)
    lines_at = bottom - height * 0.18 if design.band <= 0.5 else top + height * 0.1
    claims = (front[0] - face * 0.3, lines_at, front[0] + face * 0.3, lines_at + height * 0.08)
    small_print(draw, claims, design.ink, gloss, rng)
    if wrap and width > 40:
        back = (left + width * 0.04, top + height * 0.15, left + width * 0.2, bottom - height * 0.15)
        small_print(draw, back, design.ink, gloss, rng)
        code = (right - width * 0.16, top + height * 0.45, right - width * 0.05, bottom - height * 0.12)
        barcode(draw, code, gloss, rng)


def _layout(draw: ImageDraw.ImageDraw, box, design: Print, gloss: float) -> None:
    """The layout's big shapes: what a category's products share when their layout is the same."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    level = top + height * design.band
    accent, second = with_gloss(design.accent, gloss), with_gloss(design.second, gloss)
    if design.layout == "bands":
        draw.rectangle((left, level - height * 0.12, right, level + height * 0.12), fill=accent)
        draw.rectangle((left, level + height * 0.14, right, level + height * 0.19), fill=second)
    elif design.layout == "stripes":
        step = max(4, int(height * 0.12))
        for x in range(int(left - height), int(right), 2 * step):
            slant = height * 0.5
            draw.polygon([(x, bottom), (x + step, bottom), (x + step + slant, level), (x + slant, level)], fill=accent)
    elif design.layout == "split":
        rise = height * 0.2
        draw.polygon([(left, bottom), (right, bottom), (right, level - rise), (left, level + rise)], fill=accent)
    elif design.layout == "frame":
        margin = max(2, int(min(width, height) * 0.06))
        draw.rectangle(box, outline=accent, width=margin)
        draw.rectangle((left, level - margin, right, level + margin), fill=second)
    elif design.layout == "wave":
        xs = np.linspace(left, right, 48)
        ys = level + np.sin((xs - left) / max(width, 1) * 4 * np.pi) * height * 0.06
        draw.polygon([*zip(xs, ys), (right, bottom), (left, bottom)], fill=accent)
    elif design.layout == "disc":
        radius = min(width, height) * 0.42
        centre = (left + width / 2, level)
        draw.ellipse((centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius), fill=accent)


def paint_logo(draw: ImageDraw.ImageDraw, centre, size: float, shape: str, colour: Colour, inner: Colour,
               gloss: float) -> None:
    """A logo of `size` pixels across centred on `centre`: a shape of LOGOS in `colour`,
    most with a smaller inner mark in `inner`."""
    x, y, r = centre[0], centre[1], size / 2
    fill = with_gloss(colour, gloss)
    angles = {"diamond": 4, "triangle": 3, "hexagon": 6, "square": 4}
    if shape in ("circle", "ring", "sun"):
        if shape == "sun":
            for angle in np.linspace(0, 2 * np.pi, 12, endpoint=False):
                ray = (x + 1.3 * r * np.cos(angle), y + 1.3 * r * np.sin(angle))
                draw.line([(x, y), ray], fill=fill, width=max(1, int(r / 5)))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        if shape == "ring":
            draw.ellipse((x - r * 0.6, y - r * 0.6, x + r * 0.6, y + r * 0.6), fill=with_gloss(inner, gloss))
    elif shape in angles:
        turn = np.pi / 4 if shape == "square" else -np.pi / 2
        corners = np.linspace(0, 2 * np.pi, angles[shape], endpoint=False) + turn
        points = [(x + r * np.cos(a), y + r * np.sin(a)) for a in corners]
        draw.polygon(points, fill=fill)
    elif shape == "star":
        a = np.arange(10) * np.pi / 5 - np.pi / 2
        radius = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        draw.polygon(list(zip(x + radius * np.cos(a), y + radius * np.sin(a))), fill=fill)
    elif shape == "chevron":
        arrow = [(-1, -0.5), (0, 0.3), (1, -0.5), (1, 0.1), (0, 1), (-1, 0.1)]
        draw.polygon([(x + r * dx, y + r * dy) for dx, dy in arrow], fill=fill)
    elif shape == "leaf":
        draw.ellipse((x - r, y - r * 0.45, x + r * 0.2, y + r * 0.45), fill=fill)
        draw.ellipse((x - r * 0.2, y - r * 0.45, x + r, y + r * 0.45), fill=with_gloss(inner, gloss))
    if shape not in ("ring", "leaf", "sun"):
        dot = r * 0.3
        draw.ellipse((x - dot, y - dot, x + dot, y + dot), fill=with_gloss(inner, gloss))


def small_print(draw: ImageDraw.ImageDraw, box, ink: Colour, gloss: float, rng: np.random.Generator) -> None:
    """Rows of word-like marks filling `box`: ingredients, claims, addresses."""
    left, top, right, bottom = box
    row = max(2.0, min(5.0, (bottom - top) / 2))
    y = top
    while y + row <= bottom + 0.5:
        x = left
        while x < right:
            word = float(rng.uniform(2, 7)) * row * 0.8
            draw.rectangle((x, y, min(right, x + word), y + row * 0.6), fill=with_gloss(ink, gloss))
            x += word + row * 0.7
        y += row * 1.5


def barcode(draw: ImageDraw.ImageDraw, box, gloss: float, rng: np.random.Generator) -> None:
    """A white patch with black bars of random widths."""
    left, top, right, bottom = box
    draw.rectangle(box, fill=(250, 250, 250, int(gloss * 255)))
    x, bar = int(left) + 1, int(rng.integers(1, 4))
    while x + bar < right - 1 and top + 1 < bottom - 2:
        draw.rectangle((x, top + 1, x + bar - 1, bottom - 2), fill=(20, 20, 20, int(gloss * 255)))
        x, bar = x + bar + int(rng.integers(1, 4)), int(rng.integers(1, 4))


def paint_pattern(image: Image.Image, box, design: Print, pattern: str, gloss: float) -> None:
    """A glazed decoration over `box` (vases, lamp shades): the pattern in the design's colours."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    draw = ImageDraw.Draw(image)
    draw.rectangle(box, fill=with_gloss(design.paper, gloss))
    accent, second = with_gloss(design.accent, gloss), with_gloss(design.second, gloss)
    step = max(4, int(height * (0.08 + 0.1 * design.band)))
    if pattern == "rings":
        for y in range(int(top + step / 2), int(bottom), 2 * step):
            draw.rectangle((left, y, right, y + step * 0.6), fill=accent)
    elif pattern == "dots":
        for row, y in enumerate(range(int(top + step / 2), int(bottom), step)):
            for x in np.arange(left + (row % 2) * step / 2, right, step):
                draw.ellipse((x - step * 0.25, y - step * 0.25, x + step * 0.25, y + step * 0.25), fill=accent)
    elif pattern in ("zigzag", "waves"):
        xs = np.linspace(left, right, 64)
        for y in range(int(top + step), int(bottom), 2 * step):
            along = (xs - left) / step
            wiggle = np.abs(along % 2 - 1) if pattern == "zigzag" else 0.5 + 0.5 * np.sin(along * np.pi)
            draw.line(list(zip(xs, y + wiggle * step)), fill=accent, width=max(1, step // 3))
    elif pattern == "checks":
        for row, y in enumerate(range(int(top), int(bottom), step)):
            for x in range(int(left + (row % 2) * step), int(right), 2 * step):
                draw.rectangle((x, y, x + step - 1, y + step - 1), fill=accent)
    else:  # glaze: a dipped look, darker lower part with a drip line
        xs = np.linspace(left, right, 48)
        drip = top + height * design.band + np.abs(np.sin((xs - left) / max(width, 1) * 9 * np.pi)) * height * 0.08
        draw.polygon([*zip(xs, drip), (right, bottom), (left, bottom)], fill=accent)
    motif = min(width / 3, height) * 0.3
    centre = (left + width / 2, top + height * (1 - design.band) * 0.8 + height * 0.1)
    paint_logo(draw, centre, motif, design.logo, design.second, design.logo_colour, gloss)
    if pattern in ("rings", "glaze"):
        draw.rectangle((left, top + height * 0.05, right, top + height * 0.05 + step * 0.3), fill=second)


def vertical_text(text: str, size: tuple[int, int]) -> Image.Image:
    """A mask (L) of `text` running up a strip of `size` (width, height): a book's spine."""
    strip = Image.new("L", (size[1], size[0]), 0)
    font = _font(int(min(size[0] * 0.6, size[1] / max(len(text), 1) * 1.4)))
    ImageDraw.Draw(strip).text((size[1] / 2, size[0] / 2), text, fill=255, font=font, anchor="mm")
    return strip.rotate(90, expand=True)
