"""Backdrops of the demo photos: studio sweeps, and walls over textured tables.

Every function returns a float32 canvas [height, width, 3] in [0, 1]; textures are
numpy sums of sines and smooth noise (PIL-resized random grids), about 1 ms at 128 px.
"""

import colorsys

import numpy as np
from PIL import Image

_WOODS = ((0.72, 0.53, 0.35), (0.45, 0.29, 0.18), (0.85, 0.8, 0.72), (0.55, 0.5, 0.45), (0.62, 0.4, 0.25))


def backdrop(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A studio sweep: mostly white, grey or a pale tint, sometimes a strong colour, lit unevenly."""
    bold = rng.random() < 0.25
    if bold:
        colour = _hsv(rng.random(), rng.uniform(0.3, 0.8), rng.uniform(0.35, 0.9))
    else:
        colour = _hsv(rng.random(), rng.uniform(0, 0.15), rng.uniform(0.7, 1.0))
    rows, columns = _grid(width, height)
    spot_x, spot_y = rng.uniform(0.2, 0.8) * width, rng.uniform(-0.2, 0.6) * height
    falloff = ((columns - spot_x) ** 2 + (rows - spot_y) ** 2) / (width**2 + height**2)
    light = 1.05 - rng.uniform(0.2, 0.7) * falloff - rng.uniform(-0.1, 0.15) * rows / height
    return np.clip(colour * light[..., None] + rng.normal(0, 0.006, (height, width, 1)).astype(np.float32), 0, 1)


def scene_backdrop(rng: np.random.Generator, width: int, height: int, horizon: float) -> np.ndarray:
    """A wall above row `horizon` and a textured table below it, or one surface filling the frame."""
    surface = [_wood, _marble, _fabric, _concrete, _tiles][int(rng.integers(5))](rng, width, height)
    if rng.random() < 0.25:
        return surface
    wall = [_painted, _stripes, _tiles, _bricks, _bokeh][int(rng.integers(5))](rng, width, height)
    rows = np.arange(height, dtype=np.float32)[:, None, None]
    tilt = rng.uniform(-0.1, 0.1) * (np.arange(width, dtype=np.float32) - width / 2)[None, :, None]
    below = np.clip(rows - horizon - tilt + 0.5, 0, 1)
    canvas = wall * (1 - below) + surface * below
    edge = np.exp(-(((rows - horizon - tilt) / 1.5) ** 2))  # the table's back edge catches the light
    return np.clip(canvas + 0.12 * edge, 0, 1)


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), np.float32)


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    return rows, columns


def _noise(rng, width: int, height: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1], [height, width], with about `cells` blobs across."""
    coarse = Image.fromarray(rng.random((cells + 1, cells + 1), dtype=np.float32), "F")
    return np.asarray(coarse.resize((width, height), Image.BICUBIC), np.float32)


def _wood(rng, width: int, height: int) -> np.ndarray:
    """Planks with grain: rings warped by noise, streaks along the grain, dark seams."""
    rows, columns = _grid(width, height)
    horizontal = rng.random() < 0.7
    across = rows if horizontal else columns
    plank = max(6.0, rng.uniform(0.15, 0.4) * height)
    warp = _noise(rng, width, height, 3) * rng.uniform(4, 10)
    rings = 0.5 + 0.5 * np.sin(across * rng.uniform(0.3, 0.9) + warp + np.floor(across / plank) * 2.1)
    fibres = rng.random((height, 6) if horizontal else (6, width), dtype=np.float32)  # long along the grain
    streaks = np.asarray(Image.fromarray(fibres, "F").resize((width, height), Image.BILINEAR), np.float32)
    seams = np.where((across % plank) < 1.2, 0.6, 1.0)
    tone = 0.8 + 0.12 * rings + 0.1 * streaks
    colour = np.array(_WOODS[int(rng.integers(len(_WOODS)))], np.float32)
    return np.clip(colour * (tone * seams)[..., None], 0, 1)


def _marble(rng, width: int, height: int) -> np.ndarray:
    rows, columns = _grid(width, height)
    turbulence = _noise(rng, width, height, 4) * 6 + _noise(rng, width, height, 10) * 1.5
    across = (columns * rng.uniform(0.5, 1) + rows * rng.uniform(0.3, 1)) * rng.uniform(0.02, 0.06)
    veins = np.abs(np.sin(across + turbulence)) ** 0.3
    if rng.random() < 0.7:  # white marble, else black
        base = _hsv(rng.random(), rng.uniform(0, 0.08), rng.uniform(0.8, 0.97))
    else:
        base = _hsv(rng.random(), 0.05, rng.uniform(0.15, 0.3))
    return np.clip(base * (0.75 + 0.25 * veins)[..., None], 0, 1)


def _fabric(rng, width: int, height: int) -> np.ndarray:
    rows, columns = _grid(width, height)
    period = rng.uniform(1.5, 3.5)
    weave = 0.5 + 0.5 * np.sin(columns * np.pi / period) * np.sin(rows * np.pi / period)
    folds = _noise(rng, width, height, 3)
    colour = _hsv(rng.random(), rng.uniform(0.1, 0.7), rng.uniform(0.3, 0.9))
    return np.clip(colour * (0.75 + 0.1 * weave + 0.25 * folds)[..., None], 0, 1)


def _concrete(rng, width: int, height: int) -> np.ndarray:
    speckles = rng.random((height, width), dtype=np.float32)
    grain = _noise(rng, width, height, 3) * 0.5 + _noise(rng, width, height, 16) * 0.3 + speckles * 0.2
    colour = _hsv(rng.uniform(0.05, 0.15), rng.uniform(0, 0.12), rng.uniform(0.4, 0.75))
    return np.clip(colour * (0.7 + 0.45 * grain)[..., None], 0, 1)


def _tiles(rng, width: int, height: int) -> np.ndarray:
    rows, columns = _grid(width, height)
    side = max(5.0, rng.uniform(0.1, 0.3) * max(width, height))
    grout = ((rows % side) < 1.3) | ((columns % side) < 1.3)
    shade = 0.9 + 0.1 * np.sin(np.floor(rows / side) * 12.9898 + np.floor(columns / side) * 78.233) ** 2
    colour = _hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.5, 0.95))
    tiles = colour * shade[..., None]
    return np.where(grout[..., None], np.float32(0.85) * np.array([0.9, 0.9, 0.88], np.float32), tiles)


def _painted(rng, width: int, height: int) -> np.ndarray:
    colour = _hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.4, 0.95))
    light = 0.85 + 0.2 * _noise(rng, width, height, 2)
    return np.clip(colour * light[..., None], 0, 1)


def _stripes(rng, width: int, height: int) -> np.ndarray:
    """Striped wallpaper."""
    columns = np.arange(width, dtype=np.float32)
    period = rng.uniform(0.08, 0.25) * width
    stripe = (columns % period) < period * rng.uniform(0.3, 0.6)
    first, second = (_hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.5, 0.95)) for _ in range(2))
    return np.broadcast_to(np.where(stripe[:, None], first, second)[None], (height, width, 3)).copy()


def _bricks(rng, width: int, height: int) -> np.ndarray:
    rows, columns = _grid(width, height)
    course = max(4.0, rng.uniform(0.05, 0.12) * height)
    shifted = columns + (np.floor(rows / course) % 2) * course * 1.25
    mortar = ((rows % course) < 1.2) | ((shifted % (2.5 * course)) < 1.2)
    tone = 0.85 + 0.15 * np.sin(np.floor(rows / course) * 7.1 + np.floor(shifted / (2.5 * course)) * 3.7) ** 2
    if rng.random() < 0.7:  # red brick, else painted white
        colour = _hsv(rng.uniform(0.0, 0.08), rng.uniform(0.3, 0.7), rng.uniform(0.4, 0.8))
    else:
        colour = _hsv(0, 0, rng.uniform(0.8, 0.95))
    return np.where(mortar[..., None], np.float32(0.75), colour * tone[..., None])


def _bokeh(rng, width: int, height: int) -> np.ndarray:
    """A room out of focus: a dim gradient with soft discs of light."""
    rows, columns = _grid(width, height)
    canvas = _hsv(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.15, 0.5)) * (0.8 + 0.4 * rows / height)[..., None]
    for _ in range(int(rng.integers(4, 12))):
        x, y, radius = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.04, 0.15) * width
        near = (slice(int(max(0, y - radius)), int(min(height, y + radius + 1))),
                slice(int(max(0, x - radius)), int(min(width, x + radius + 1))))
        disc = np.clip((radius - np.sqrt((columns[near] - x) ** 2 + (rows[near] - y) ** 2)) / (radius * 0.3), 0, 1)
        canvas[near] += disc[..., None] * _hsv(rng.uniform(0.05, 0.6), rng.uniform(0, 0.6), 1.0) * rng.uniform(0.2, 0.5)
    return np.clip(canvas, 0, 1)
