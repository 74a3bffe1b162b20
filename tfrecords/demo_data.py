"""`pvs demo-data`: a generated product-photo dataset, so everything runs offline.

Each product is a shape of its category (the shape family) with its own
proportions, two colours and a surface pattern. Each shot of it changes the
background, position, scale, rotation and lighting, and some shots are not
square, so the same product must be recognised across shots as in eProduct.
Written as `OUT/<category>/<product_id>/<shot>.jpg` (every fourth shot a PNG),
which `pvs ingest` reads as a folder source. Same options, same files.
"""

import colorsys
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from tfrecords.files import write_bytes_atomic

CATEGORIES = ("bottle", "box", "can", "lamp", "ring", "star", "tag", "vase")
PATTERNS = ("solid", "stripes", "dots", "checks", "band")
SPRITE = 128  # side of the product drawing before it is scaled into a shot


@dataclass(frozen=True)
class DemoOptions:
    products: int = 60
    shots: int = 6  # images per product
    categories: int = 5  # at most len(CATEGORIES)
    image_size: int = 96  # pixels of the longer side of each shot
    seed: int = 0


@dataclass(frozen=True)
class _Product:
    category: str
    aspect: float
    colour: tuple[int, int, int]
    accent: tuple[int, int, int]
    pattern: str
    period: int


def write_demo_data(out_dir: str | Path, options: DemoOptions = DemoOptions()) -> int:
    """Write the dataset into `out_dir`; returns the number of images written."""
    if not 1 <= options.categories <= len(CATEGORIES):
        raise ValueError(f"categories must be between 1 and {len(CATEGORIES)}, got {options.categories}")
    if options.products < 1 or options.shots < 1 or options.image_size < 16:
        raise ValueError("products and shots must be >= 1 and image_size >= 16")
    rng = np.random.default_rng(options.seed)
    out = Path(out_dir)
    written = 0
    for number in range(options.products):
        product = _random_product(rng, CATEGORIES[number % options.categories])
        sprite = _draw_sprite(product)
        for shot in range(options.shots):
            image = _shoot(sprite, rng, options.image_size)
            kind = "png" if shot % 4 == 3 else "jpg"
            buffer = io.BytesIO()
            image.save(buffer, format="PNG" if kind == "png" else "JPEG", quality=90)
            write_bytes_atomic(out / product.category / f"p{number:04d}" / f"shot{shot:02d}.{kind}", buffer.getvalue())
            written += 1
    return written


def _colour(rng: np.random.Generator, value: tuple[float, float]) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.5, 1.0), rng.uniform(*value))
    return int(red * 255), int(green * 255), int(blue * 255)


def _background_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A studio or room backdrop: greys and pale tints, sometimes a strong colour."""
    saturation = rng.uniform(0.0, 0.25) if rng.uniform() < 0.8 else rng.uniform(0.4, 0.9)
    red, green, blue = colorsys.hsv_to_rgb(rng.uniform(), saturation, rng.uniform(0.35, 1.0))
    return int(red * 255), int(green * 255), int(blue * 255)


def _random_product(rng: np.random.Generator, category: str) -> _Product:
    return _Product(
        category=category,
        aspect=float(rng.uniform(0.55, 1.0)),
        colour=_colour(rng, (0.35, 1.0)),
        accent=_colour(rng, (0.1, 1.0)),
        pattern=PATTERNS[int(rng.integers(len(PATTERNS)))],
        period=int(rng.integers(8, 24)),
    )


def _shape_mask(product: _Product) -> Image.Image:
    """The category's silhouette, scaled by the product's aspect ratio (L mode)."""
    mask = Image.new("L", (SPRITE, SPRITE), 0)
    draw = ImageDraw.Draw(mask)
    s, half = SPRITE, SPRITE // 2
    width = int(s * 0.9 * product.aspect)
    left, right = half - width // 2, half + width // 2
    shapes = {
        "bottle": lambda: (draw.rectangle([left, s * 0.35, right, s * 0.95], 255), draw.rectangle([half - s * 0.08, s * 0.05, half + s * 0.08, s * 0.4], 255)),
        "box": lambda: draw.rectangle([left, s * 0.2, right, s * 0.85], 255),
        "can": lambda: (draw.rectangle([left, s * 0.15, right, s * 0.85], 255), draw.ellipse([left, s * 0.05, right, s * 0.25], 255), draw.ellipse([left, s * 0.75, right, s * 0.95], 255)),
        "lamp": lambda: (draw.polygon([(half - s * 0.1, s * 0.05), (half + s * 0.1, s * 0.05), (right, s * 0.5), (left, s * 0.5)], 255), draw.rectangle([half - s * 0.04, s * 0.5, half + s * 0.04, s * 0.9], 255), draw.rectangle([left, s * 0.88, right, s * 0.95], 255)),
        "ring": lambda: (draw.ellipse([left, s * 0.1, right, s * 0.9], 255), draw.ellipse([left + width * 0.3, s * 0.35, right - width * 0.3, s * 0.65], 0)),
        "star": lambda: draw.polygon(_star_points(half, half, s * 0.45 * max(product.aspect, 0.7), s * 0.2), 255),
        "tag": lambda: (draw.polygon([(left, s * 0.3), (right - s * 0.15, s * 0.3), (right, half), (right - s * 0.15, s * 0.7), (left, s * 0.7)], 255), draw.ellipse([right - s * 0.2, half - 5, right - s * 0.1, half + 5], 0)),
        "vase": lambda: (draw.ellipse([left, s * 0.3, right, s * 0.95], 255), draw.rectangle([half - width * 0.2, s * 0.05, half + width * 0.2, s * 0.5], 255)),
    }
    shapes[product.category]()
    return mask


def _star_points(cx: float, cy: float, outer: float, inner: float) -> list[tuple[float, float]]:
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, outer, inner)
    return [(cx + r * np.cos(a), cy - r * np.sin(a)) for a, r in zip(angles, radii)]


def _draw_sprite(product: _Product) -> Image.Image:
    """The product in RGBA on a transparent square: silhouette filled with its pattern."""
    y, x = np.mgrid[0:SPRITE, 0:SPRITE]
    period = product.period
    accent_where = {
        "solid": np.zeros_like(x, dtype=bool),
        "stripes": (x // (period // 2)) % 2 == 0,
        "dots": ((x % period - period / 2) ** 2 + (y % period - period / 2) ** 2) < (period / 3.5) ** 2,
        "checks": ((x // period) + (y // period)) % 2 == 0,
        "band": np.abs(y - SPRITE * 0.55) < period * 0.8,
    }[product.pattern]
    pixels = np.where(accent_where[..., None], product.accent, product.colour).astype(np.uint8)
    sprite = Image.fromarray(pixels, "RGB").convert("RGBA")
    sprite.putalpha(_shape_mask(product))
    return sprite


def _shoot(sprite: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """One photo of a product: new background, pose, scale and lighting."""
    width = size
    height = int(size * rng.choice([1.0, 1.0, 0.75, 1.25]))
    top, bottom = np.array(_background_colour(rng)), np.array(_background_colour(rng))
    ramp = np.linspace(0, 1, height)[:, None, None]
    background = top * (1 - ramp) + bottom * ramp + rng.normal(0, 6, (height, width, 3))
    canvas = Image.fromarray(np.clip(np.broadcast_to(background, (height, width, 3)), 0, 255).astype(np.uint8), "RGB")
    posed = sprite.rotate(float(rng.uniform(-30, 30)), resample=Image.BILINEAR, expand=True)
    side = max(8, int(min(width, height) * rng.uniform(0.6, 0.95)))
    posed = posed.resize((side, side), Image.BILINEAR)
    left = int(rng.integers(0, max(1, width - side + 1)))
    upper = int(rng.integers(0, max(1, height - side + 1)))
    canvas.paste(posed, (left, upper), posed)
    lit = ImageEnhance.Brightness(canvas).enhance(float(rng.uniform(0.7, 1.3)))
    return ImageEnhance.Color(lit).enhance(float(rng.uniform(0.8, 1.2)))
