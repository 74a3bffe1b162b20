"""One photo of a product: where it stands, what is around it, the light and the camera.

What changes from shot to shot, as between real photos of one product: the pose
(yaw, tilt), scale and position (sometimes cut by the frame), the backdrop (a
studio sweep, or a wall and a textured table, a textured surface, a room out of
focus), other objects behind it or in front of it, the light's direction, strength
and colour, white balance, saturation, focus, sensor noise (and, when saved, JPEG
quality). `clutter` in [0, 1] is the share of shots with a cluttered scene.
Canvases are float32 [height, width, 3] in [0, 1].
"""

import numpy as np
from PIL import Image, ImageFilter

from tfrecords.demo_backdrops import backdrop, scene_backdrop
from tfrecords.demo_render import Cuboid, Lathe, Light

_FRUIT = ((0.8, 0.1, 0.1), (0.95, 0.55, 0.1), (0.5, 0.75, 0.15), (0.95, 0.85, 0.2))
_HEIGHTS = np.linspace(0, 1, 48)
_BALL = np.sqrt(np.clip(_HEIGHTS * (1 - _HEIGHTS), 1e-4, None))  # a lathe's profile: a sphere
_BOTTLE = np.interp(_HEIGHTS, [0, 0.6, 0.75, 1], [0.2, 0.2, 0.07, 0.07])


def photograph(thing, rng: np.random.Generator, size: int, clutter: float) -> np.ndarray:
    """A shot of `thing`, uint8 [height, width, 3], its longer side `size` pixels."""
    width, height = _frame(rng, size)
    light = _light(rng)
    yaw, tilt = float(np.clip(rng.normal(0, 0.55), -1.2, 1.2)), float(rng.uniform(0.05, 0.45))
    partial = rng.random() < 0.12
    fraction = rng.uniform(0.9, 1.3) if partial else rng.uniform(0.5, 0.9)
    layer, foot = thing.render(fraction * min(width, height) / thing.extent, yaw, tilt, light)
    left = _place(rng, width, layer.shape[1], partial)
    top = _place(rng, height, layer.shape[0], partial)
    ground = top + foot[1]
    cluttered = rng.random() < clutter
    if cluttered:
        horizon = ground - rng.uniform(0.15, 0.6) * layer.shape[0]
        canvas = scene_backdrop(rng, width, height, horizon)
        for _ in range(int(rng.integers(0, 4))):
            _add_object(canvas, rng, light, (horizon, ground), min(width, height) * rng.uniform(0.2, 0.5))
        if rng.random() < 0.6:  # the backdrop out of focus behind a sharp product
            canvas = _blurred(canvas, rng.uniform(0.5, 2.5) * size / 128)
    else:
        canvas = backdrop(rng, width, height)
    darkness = rng.uniform(0.25, 0.5)
    _shadow(canvas, left + foot[0], ground, layer.shape[1] * 0.45, max(2.0, layer.shape[0] * 0.06), darkness)
    _paste(canvas, layer, left, top)
    if cluttered and rng.random() < 0.4:  # something in front hides part of the product
        side = rng.uniform(-0.2, 0.1) if rng.random() < 0.5 else rng.uniform(0.9, 1.2)  # at its left or right edge
        feet = (ground, max(ground, height) + 0.3 * layer.shape[0])
        _add_object(canvas, rng, light, feet, min(width, height) * rng.uniform(0.25, 0.5), left + layer.shape[1] * side)
    return _develop(canvas, rng, size)


def _frame(rng, size: int) -> tuple[int, int]:
    """(width, height): square, landscape 4:3 or portrait 3:4."""
    short = max(8, int(size * 0.75))
    return [(size, size), (size, size), (size, short), (short, size)][int(rng.integers(4))]


def _light(rng) -> Light:
    """A key light from a random side, mostly from above and in front."""
    azimuth, spread = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.85)
    direction = np.array([np.cos(azimuth) * spread, 0.35 + np.sin(azimuth) * spread * 0.6, rng.uniform(0.5, 1.0)])
    ambient, strength = float(rng.uniform(0.2, 0.5)), float(rng.uniform(0.55, 1.0))
    return Light(direction / np.linalg.norm(direction), ambient, strength)


def _place(rng, frame: int, length: int, partial: bool) -> int:
    """The layer's first pixel along one axis: inside the frame when it fits, else cut by it."""
    if partial:
        return int(rng.uniform(-0.35 * length, frame - 0.65 * length))
    slack = frame - length
    return int(rng.uniform(min(0, slack), max(0, slack) + 1))


def _add_object(canvas, rng, light: Light, feet: tuple[float, float], pixels: float, at: float | None = None) -> None:
    """A plain object (fruit, cup, bottle, box, book) standing between rows `feet`,
    centred on column `at` (random when None)."""
    kind = int(rng.integers(5))
    colour = tuple(rng.uniform(0.1, 0.95, 3)) if kind else _FRUIT[int(rng.integers(len(_FRUIT)))]
    texture = [np.array([[[*colour, rng.uniform(0.1, 0.9)]]], np.float32)]
    rim = tuple(int(c * 255) for c in colour)
    if kind == 0:  # fruit or a ball
        thing = Lathe(_BALL, texture, rim, shininess=20)
        pixels *= 0.5
    elif kind == 1:  # a cup
        thing = Lathe(np.full(len(_HEIGHTS), rng.uniform(0.18, 0.4)), texture, rim, open_top=True, shininess=30)
    elif kind == 2:
        thing = Lathe(_BOTTLE, texture, rim, shininess=30)
    else:  # a box or a book lying flat
        faces = dict.fromkeys(("front", "side", "left", "top"), texture)
        thing = Cuboid(rng.uniform(0.6, 2.0), rng.uniform(0.3, 1.0), faces)
    yaw, tilt = float(rng.uniform(-1, 1)), float(rng.uniform(0.1, 0.4))
    layer, foot = thing.render(pixels / thing.extent, yaw, tilt, light)
    ground = rng.uniform(*feet)
    centre = rng.uniform(0, canvas.shape[1]) if at is None else at
    _shadow(canvas, centre, ground, layer.shape[1] * 0.45, max(2.0, layer.shape[0] * 0.05), 0.3)
    _paste(canvas, layer, int(centre - foot[0]), int(ground - foot[1]))


def _shadow(canvas, x: float, y: float, across: float, high: float, strength: float) -> None:
    """Darken a soft ellipse centred at (x, y): where an object meets the surface it stands on."""
    height, width = canvas.shape[:2]
    top, bottom = max(0, int(y - 2 * high)), min(height, int(y + 2 * high) + 1)
    left, right = max(0, int(x - 1.5 * across)), min(width, int(x + 1.5 * across) + 1)
    if top >= bottom or left >= right:
        return
    rows = ((np.arange(top, bottom, dtype=np.float32) - y) / high)[:, None]
    columns = ((np.arange(left, right, dtype=np.float32) - x) / across)[None, :]
    canvas[top:bottom, left:right] *= (1 - strength * np.exp(-(rows**2) - columns**2))[..., None]


def _paste(canvas, layer: np.ndarray, left: int, top: int) -> None:
    """Alpha-blend the RGBA `layer` onto `canvas` with its corner at (left, top), cut by the frame."""
    height, width = canvas.shape[:2]
    x0, y0, x1, y1 = max(0, left), max(0, top), min(width, left + layer.shape[1]), min(height, top + layer.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    part = layer[y0 - top : y1 - top, x0 - left : x1 - left]
    alpha = part[..., 3:]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - alpha) + part[..., :3] * alpha


def _blurred(canvas: np.ndarray, radius: float) -> np.ndarray:
    image = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(radius))
    return np.asarray(image, np.float32) / 255


def _develop(canvas: np.ndarray, rng, size: int) -> np.ndarray:
    """The camera: exposure, white balance (warm to cool), saturation, noise, contrast, focus."""
    warmth = rng.uniform(-1, 1)
    tint = np.array([1 + 0.14 * warmth, 1.0, 1 - 0.18 * warmth]) * rng.uniform(0.97, 1.03, 3)
    balance = tint * rng.uniform(0.8, 1.15)  # and exposure
    saturation = rng.uniform(0.7, 1.25)
    mixing = saturation * np.eye(3) + (1 - saturation) / 3  # towards each pixel's grey
    image = (canvas.reshape(-1, 3) @ (mixing @ np.diag(balance)).T.astype(np.float32)).reshape(canvas.shape)
    noise = rng.uniform(0.0, 0.04)  # standard deviation of the sensor noise
    if noise > 0.01:  # uniform, not Gaussian: a quarter of the cost, and alike to the eye
        image += (rng.random(image.shape, dtype=np.float32) - 0.5) * np.float32(noise * 12**0.5)
    curve = (255 * np.linspace(0, 1, 256) ** rng.uniform(0.8, 1.25) + 0.5).astype(np.uint8)  # contrast (gamma)
    photo = Image.fromarray(curve[(np.clip(image, 0, 1) * 255).astype(np.uint8)])
    if rng.random() < 0.35:  # out of focus or shaken; a box blur is a lens's disc, roughly
        photo = photo.filter(ImageFilter.BoxBlur(rng.uniform(0.4, 1.2) * size / 128))
    return np.asarray(photo)
