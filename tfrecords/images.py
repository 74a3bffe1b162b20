"""Decide whether an image file can be trained on, before its bytes go into a shard.

Records keep the encoded bytes as they are (no re-encoding), so a file that
TensorFlow cannot decode must be caught here, or training would stop on it hours
later. Each check returns the reason the image is unusable, or None.
"""

import io
import warnings

from PIL import Image

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def image_format(data: bytes) -> str | None:
    """`jpeg` or `png` from the file's first bytes (not its name), else None."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    return None


def unusable_reason(data: bytes, max_pixels: int) -> str | None:
    """Why these image bytes cannot be used, or None when they decode cleanly.

    Decoding is the only way to find truncated or corrupt data. JPEGs are decoded
    at 1/8 scale (DCT scaling still reads every byte, at about a fifth of the cost).
    """
    if not data:
        return "empty file (0 bytes)"
    kind = image_format(data)
    if kind is None:
        return f"not a JPEG or PNG (starts with {data[:8]!r})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    return f"too large: {width}x{height} pixels is over the limit of {max_pixels}"
                if image.mode == "CMYK":
                    return "CMYK JPEG, which TensorFlow cannot decode; convert it to RGB"
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
    except Image.DecompressionBombError:
        return f"too large: over the limit of {max_pixels} pixels"
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return f"cannot decode {kind}: {error}"
    return None
