"""Drawing one product in one pose: the 3D-ish renderers behind `pvs demo-data`.

Three kinds of object cover the categories:
  Lathe: a solid of revolution (bottle, can, jar, mug...) with a label texture that
         wraps around it; turning it (yaw) shows another part of the label.
  Cuboid: a box in perspective (box, carton, book) with a texture per face; yaw
          decides which side faces show.
  Relief (demo_reliefs.py): a side-view drawing with a height map (shoe, bag...).
Each has `extent`, the larger of its width and height in units of its height, and
`render(pixels, yaw, tilt, light)`: the object turned by `yaw` and seen from `tilt`
radians above, one height `pixels` long on screen, as an RGBA layer (float32
[height, width, 4] in [0, 1]) and the layer's foot, the (x, y) pixel where the
object stands on the ground. Coordinates in the camera frame: x right, y up, z
towards the camera.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw


@dataclass(frozen=True)
class Light:
    direction: np.ndarray  # [3] unit vector towards the light
    ambient: float  # share of light that reaches every surface
    strength: float  # multiplies the direct (diffuse and specular) light


@dataclass(frozen=True)
class Lathe:
    profile: np.ndarray  # [n] radius at heights linspace(0, 1, n)
    texture: list[np.ndarray]  # mip levels, each [rows, columns, 4]: RGB and gloss; row 0 is the top
    top: tuple[int, int, int]  # RGB (0-255) of the top: a lid, a cap, or the rim of an open top
    open_top: bool = False  # a mug or a lamp shade: the dark inside shows through the top
    handle: float = 0.0  # how far a mug's handle stands out, 0 for none
    shininess: float = 40.0

    @property
    def extent(self) -> float:
        return max(1.0, 2 * float(self.profile.max()) + 2 * self.handle)

    def render(self, pixels: float, yaw: float, tilt: float, light: Light) -> tuple[np.ndarray, tuple[float, float]]:
        return _lathe(self, pixels, yaw, tilt, light)


@dataclass(frozen=True)
class Cuboid:
    width: float
    depth: float
    faces: dict  # "front", "side", "left", "top" (and "roof" with a gable) -> mip levels as in Lathe
    gable: float = 0.0  # height of a milk carton's roof above the box, 0 for a flat top
    shininess: float = 12.0

    @property
    def extent(self) -> float:
        return max(1.0 + self.gable, float(np.hypot(self.width, self.depth)))

    def render(self, pixels: float, yaw: float, tilt: float, light: Light) -> tuple[np.ndarray, tuple[float, float]]:
        return _cuboid(self, pixels, yaw, tilt, light)


def shade(albedo: np.ndarray, gloss, normals: np.ndarray, light: Light, shininess: float) -> np.ndarray:
    """Lambert diffuse plus Blinn specular: albedo [..., 3], gloss scalar or [...], normals [..., 3]."""
    direct = np.maximum(normals @ light.direction.astype(np.float32), 0)
    half = light.direction + np.array([0, 0, 1.0])
    facing = np.maximum(normals @ (half / np.linalg.norm(half)).astype(np.float32), 0)
    specular = np.asarray(gloss, np.float32) * facing**shininess * light.strength
    diffuse = light.ambient + light.strength * direct
    return albedo * diffuse[..., None] + specular[..., None]


def sample(texture: list[np.ndarray], rows: np.ndarray, columns: np.ndarray, texels_per_pixel: float) -> np.ndarray:
    """Texture values at fractional (rows, columns) in [0, 1), from the mip level whose
    texels are about one screen pixel each (finer levels would shimmer)."""
    level = texture[min(len(texture) - 1, max(0, int(np.log2(max(texels_per_pixel, 1.0)))))]
    height, width = level.shape[:2]
    return level[np.clip((rows * height).astype(np.int32), 0, height - 1), (columns * width).astype(np.int32) % width]


def mip_levels(image: Image.Image, levels: int = 3) -> list[np.ndarray]:
    """An RGBA PIL texture as float32 arrays, full size then halved `levels - 1` times."""
    result = [np.asarray(image, np.float32) / 255]
    for _ in range(levels - 1):
        image = image.reduce(2)
        result.append(np.asarray(image, np.float32) / 255)
    return result


def _lathe(thing: Lathe, pixels: float, yaw: float, tilt: float, light: Light):
    sin_t, cos_t = np.sin(tilt), np.cos(tilt)
    heights = np.linspace(0, 1, len(thing.profile))
    r_max = float(thing.profile.max())
    half_width = r_max + 1.3 * thing.handle
    top, bottom = cos_t + r_max * sin_t, -r_max * sin_t
    width, height = int(2 * half_width * pixels) + 3, int((top - bottom) * pixels) + 3
    x = ((np.arange(width, dtype=np.float32) + 0.5 - width / 2) / pixels)[None, :]
    y = (top + 1 / pixels - (np.arange(height, dtype=np.float32) + 0.5) / pixels)[:, None]
    # Which height h of the surface a pixel sees: the front of a circle at h appears
    # r(h)·cos(θ)·sin(tilt) lower than its centre; three fixed-point steps converge.
    h = np.broadcast_to(y / cos_t, (height, width))
    for _ in range(3):
        radius = np.interp(h, heights, thing.profile)
        across = np.sqrt(np.clip(1 - (x / radius) ** 2, 0, 1))
        h = (y + radius * across * sin_t) / cos_t
    radius = np.interp(h, heights, thing.profile)
    sideways = np.clip(x / radius, -1, 1)
    across = np.sqrt(1 - sideways**2)
    inside = np.clip(np.minimum(radius - np.abs(x), np.minimum(h, 1 - h) * cos_t) * pixels + 0.5, 0, 1)
    slope = np.interp(h, heights, np.gradient(thing.profile, heights))
    normals = _tilted(np.stack([sideways, -slope, across], -1), sin_t, cos_t)
    columns = (np.arcsin(sideways) + yaw) / (2 * np.pi) + 0.5
    texels = thing.texture[0].shape[1] / (2 * np.pi * r_max * pixels)
    surface = sample(thing.texture, 1 - h, columns, texels)
    colour = shade(surface[..., :3], surface[..., 3], normals, light, thing.shininess)
    layer = np.concatenate([colour, inside[..., None]], -1)
    # The top disc covers only the rows within its half-height of the rim's centre line.
    band = np.flatnonzero(np.abs(y[:, 0] - cos_t) <= float(thing.profile[-1]) * sin_t + 1 / pixels)
    if len(band):
        rows = slice(band[0], band[-1] + 1)
        layer[rows] = _over(layer[rows], _lathe_top(thing, x, y[rows], pixels, sin_t, cos_t, light))
    if thing.handle:
        layer = _with_handle(thing, layer, pixels, yaw, sin_t, cos_t, top, light)
    return layer, (width / 2, (top + 1 / pixels) * pixels)


def _lathe_top(thing: Lathe, x, y, pixels, sin_t, cos_t, light):
    """The top disc (a lid, or an open rim with the dark inside) as an RGBA layer."""
    radius = float(thing.profile[-1])
    squash = max(radius * sin_t, 1e-3)
    reach = (x / radius) ** 2 + ((y - cos_t) / squash) ** 2
    cover = np.clip((1 - reach) * radius * pixels * 0.5 + 0.5, 0, 1) * (sin_t > 0.02)
    up = _tilted(np.array([[0.0, 1.0, 0.0]], np.float32), sin_t, cos_t)
    lit = shade(np.array(thing.top, np.float32) / 255, 0.3, up, light, 30.0)[0]
    colour = np.broadcast_to(lit, reach.shape + (3,))
    if thing.open_top:
        depth = np.clip((0.8 - reach) * 4, 0, 1)[..., None]  # the inside, dark below the rim
        colour = colour * (1 - 0.75 * depth) * np.clip(0.6 + (y - cos_t) / squash * 0.4, 0.2, 1)[..., None]
    return np.concatenate([colour, cover[..., None]], -1)


def _with_handle(thing: Lathe, layer, pixels, yaw, sin_t, cos_t, top, light):
    """A mug's handle, fixed at a quarter turn of the label: behind the body or in front of it."""
    angle = np.pi / 2 - yaw
    radial = np.array([np.sin(angle), 0.0, np.cos(angle)])
    centre = layer.shape[1] / 2
    points = []
    for t in np.linspace(-np.pi / 2, np.pi / 2, 20):
        out = float(thing.profile[len(thing.profile) // 2]) + thing.handle * np.cos(t)
        h = 0.52 + 0.28 * np.sin(t)
        row = (top + 1 / pixels - h * cos_t + radial[2] * out * sin_t) * pixels  # nearer the camera: lower
        points.append((centre + radial[0] * out * pixels, row))
    mask = Image.new("L", (layer.shape[1], layer.shape[0]), 0)
    ImageDraw.Draw(mask).line(points, fill=255, width=max(1, int(thing.handle * 0.55 * pixels)), joint="curve")
    normal = _tilted(radial[None].astype(np.float32), sin_t, cos_t)
    lit = shade(np.array(thing.top, np.float32) / 255, 0.4, normal, light, 30.0)[0]
    cover = np.asarray(mask, np.float32)[..., None] / 255
    handle = np.concatenate([np.broadcast_to(lit, layer.shape[:2] + (3,)), cover], -1)
    return _over(layer, handle) if radial[2] > 0 else _over(handle, layer)


def _tilted(normals: np.ndarray, sin_t: float, cos_t: float) -> np.ndarray:
    """Object-frame normals [..., 3] as the camera sees them from `tilt` above."""
    nx, ny, nz = normals[..., 0], normals[..., 1], normals[..., 2]
    up, towards = ny * cos_t - nz * sin_t, ny * sin_t + nz * cos_t
    length = np.sqrt(nx * nx + up * up + towards * towards)  # not np.linalg.norm: slow over an axis of 3
    return np.stack([nx / length, up / length, towards / length], -1)


def _over(below: np.ndarray, above: np.ndarray) -> np.ndarray:
    """`above` composited over `below`, both RGBA [h, w, 4] with straight (not premultiplied) colour."""
    a, b = above[..., 3:], below[..., 3:]
    alpha = a + b * (1 - a)
    colour = (above[..., :3] * a + below[..., :3] * b * (1 - a)) / np.maximum(alpha, 1e-6)
    return np.concatenate([colour, alpha], -1)


def _cuboid(thing: Cuboid, pixels: float, yaw: float, tilt: float, light: Light):
    # Drawn at twice the size and averaged down: the faces' edges would be jagged otherwise.
    scale = 2 * pixels
    focal = 5.0  # camera distance in heights: mild perspective, as with a normal lens
    w, d, g = thing.width / 2, thing.depth / 2, thing.gable
    turn = _rotation(yaw, tilt)
    faces = [  # (origin, u edge, v edge, texture, shape) in the object frame
        ((-w, 0, d), (2 * w, 0, 0), (0, 1, 0), "front", None),
        ((w, 0, d), (0, 0, -2 * d), (0, 1, 0), "side", None),
        ((-w, 0, -d), (0, 0, 2 * d), (0, 1, 0), "left", None),
        ((w, 0, -d), (-2 * w, 0, 0), (0, 1, 0), "side", None),
    ]
    if g:
        faces += [
            ((-w, 1, d), (2 * w, 0, 0), (0, g, -d), "roof", None),
            ((w, 1, -d), (-2 * w, 0, 0), (0, g, d), "roof", None),
            ((w, 1, d), (0, 0, -2 * d), (0, g, d), "top", "gable"),
            ((-w, 1, -d), (0, 0, 2 * d), (0, g, -d), "top", "gable"),
        ]
    else:
        faces.append(((-w, 1, d), (2 * w, 0, 0), (0, 0, -2 * d), "top", None))
    corners = np.array([[sx * w, sy, sz * d] for sx in (-1, 1) for sy in (0, 1 + g) for sz in (-1, 1)])
    screen = _project(corners @ turn.T, focal)
    low, high = screen.min(0), screen.max(0)
    width, height = int((high[0] - low[0]) * scale) + 4, int((high[1] - low[1]) * scale) + 4
    width, height = width + width % 2, height + height % 2
    origin = np.array([low[0] * scale - 2, high[1] * scale + 2])  # pixel (0, 0) in scaled units, y up

    def to_pixels(points):
        return np.stack([points[:, 0] * scale - origin[0], origin[1] - points[:, 1] * scale], -1)

    layer = np.zeros((height, width, 4), np.float32)
    for start, u_edge, v_edge, name, shape in faces:
        start, u_edge, v_edge = (np.array(v, float) for v in (start, u_edge, v_edge))
        (ux, uy, uz), (vx, vy, vz) = u_edge, v_edge
        normal = turn @ np.array([uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx])  # u x v; np.cross is slow
        centre = turn @ (start + (u_edge + v_edge) / 2)
        if normal @ (np.array([0, 0, focal]) - centre) <= 1e-6:
            continue  # facing away from the camera
        corners = np.array([start, start + u_edge, start + u_edge + v_edge, start + v_edge])
        quad = to_pixels(_project(corners @ turn.T, focal))
        left, top = np.maximum(quad.min(0).astype(int), 0)
        right, bottom = np.minimum(quad.max(0).astype(int) + 1, (width, height))
        if left >= right or top >= bottom:
            continue
        columns, rows = np.meshgrid(np.arange(left, right, dtype=np.float32), np.arange(top, bottom, dtype=np.float32))
        u, v = _unit_square_of(quad, columns + 0.5, rows + 0.5)
        inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
        if shape == "gable":
            inside &= v <= 1 - np.abs(2 * u - 1)
        if not inside.any():
            continue
        texture = thing.faces[name]
        span = np.linalg.norm(quad[1] - quad[0]) + 1e-6
        surface = sample(texture, 1 - v[inside], u[inside], texture[0].shape[1] / span)
        facing = (normal / np.linalg.norm(normal))[None].astype(np.float32)
        colour = shade(surface[:, :3], surface[:, 3], facing, light, thing.shininess)
        layer[top:bottom, left:right][inside] = np.concatenate([colour, np.ones((len(colour), 1), np.float32)], -1)
    small = (layer[0::2, 0::2] + layer[1::2, 0::2] + layer[0::2, 1::2] + layer[1::2, 1::2]) * np.float32(0.25)
    foot = to_pixels(_project((np.array([[0.0, 0.0, 0.0]]) @ turn.T), focal))[0] / 2
    return small, (float(foot[0]), float(foot[1]))


def _rotation(yaw: float, tilt: float) -> np.ndarray:
    """Turn by `yaw` about the vertical axis, then lean towards the camera by `tilt`."""
    cy, sy, ct, st = np.cos(yaw), np.sin(yaw), np.cos(tilt), np.sin(tilt)
    turn = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    lean = np.array([[1, 0, 0], [0, ct, -st], [0, st, ct]])
    return lean @ turn


def _project(points: np.ndarray, focal: float) -> np.ndarray:
    """Camera-frame points [n, 3] onto the screen [n, 2], camera on the z axis at `focal`."""
    return points[:, :2] * (focal / (focal - points[:, 2:3]))


def _unit_square_of(quad: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) of pixels (x, y) under the homography taking the unit square's corners
    (0,0), (1,0), (1,1), (0,1) onto `quad` [4, 2] (Heckbert's closed form)."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = quad
    dx1, dx2, dx3 = x1 - x2, x3 - x2, x0 - x1 + x2 - x3
    dy1, dy2, dy3 = y1 - y2, y3 - y2, y0 - y1 + y2 - y3
    den = dx1 * dy2 - dx2 * dy1
    if abs(den) < 1e-9:
        return np.full_like(x, -1), np.full_like(y, -1)
    g, h = (dx3 * dy2 - dx2 * dy3) / den, (dx1 * dy3 - dx3 * dy1) / den
    forward = np.array([[x1 - x0 + g * x1, x3 - x0 + h * x3, x0], [y1 - y0 + g * y1, y3 - y0 + h * y3, y0], [g, h, 1]])
    back = np.linalg.inv(forward).astype(np.float32)
    w = back[2, 0] * x + back[2, 1] * y + back[2, 2]
    return (back[0, 0] * x + back[0, 1] * y + back[0, 2]) / w, (back[1, 0] * x + back[1, 1] * y + back[1, 2]) / w
