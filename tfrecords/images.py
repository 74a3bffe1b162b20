"""Decide whether an image file can be trained on, and which way up it is, before its
bytes go into a shard.

Records keep the encoded bytes as they are (no re-encoding), so a file that
TensorFlow cannot decode must be caught here, or training would stop on it hours
later; and the EXIF orientation that phones and cameras write, which TensorFlow's
decoders ignore, is read here and stored beside the bytes (`preprocess.orient`
applies it).
"""

import io
import warnings
from dataclasses import dataclass

from PIL import Image

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ORIENTATION_TAG = 0x0112  # EXIF "Orientation", 1-8
# Preprocessing holds a canvas of the longer side x the model's input size, twice over
# while it is built (float32: ~350 MB at 65535 x 224), which the pixel limit does not
# bound: a 1 x 10^7 PNG is a few kB. 65535 is also JPEG's own limit.
MAX_SIDE = 65_535


@dataclass(frozen=True)
class ImageCheck:
    """What opening an image file tells: why it cannot be used (`reason`, None when it
    decodes cleanly) and its EXIF orientation (1-8; 1 when it has none)."""

    reason: str | None
    orientation: int = 1


def image_format(data: bytes) -> str | None:
    """`jpeg` or `png` from the file's first bytes (not its name), else None."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    return None


def check_image(data: bytes, max_pixels: int) -> ImageCheck:
    """Whether these image bytes can be used, and their orientation, from one opening.

    Decoding is the only way to find truncated or corrupt data. JPEGs are decoded
    at 1/8 scale (DCT scaling still reads every byte, at about a fifth of the cost).
    """
    if not data:
        return ImageCheck("empty file (0 bytes)")
    kind = image_format(data)
    if kind is None:
        return ImageCheck(f"not a JPEG or PNG (starts with {data[:8]!r})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    return ImageCheck(f"too large: {width}x{height} pixels is over the limit of {max_pixels}")
                if max(width, height) > MAX_SIDE:
                    return ImageCheck(f"too large: {width}x{height} pixels has a side over the limit of {MAX_SIDE}")
                if image.mode == "CMYK":
                    return ImageCheck("CMYK JPEG, which TensorFlow cannot decode; convert it to RGB")
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
                return ImageCheck(None, _orientation(image))
    except Image.DecompressionBombError:
        return ImageCheck(f"too large: over the limit of {max_pixels} pixels")
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return ImageCheck(f"cannot decode {kind}: {error}")


def orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of JPEG or PNG bytes, 1 when they have none or it cannot
    be read. A JPEG's is in its header (~0.02 ms); a PNG with no eXIf chunk before its
    pixels is decoded to look after them (~8 ms a megapixel)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _orientation(image)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return 1


def _orientation(image: Image.Image) -> int:
    """The tag as PIL's `ImageOps.exif_transpose` reads it (EXIF, else XMP); 1 when it is
    missing, out of range or unreadable."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # PIL's EXIF parser raises many types on a damaged block; the pixels may be fine
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1
