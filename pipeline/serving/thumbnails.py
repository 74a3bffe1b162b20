"""JPEG thumbnails of catalog images, by image id, for the search page's grid.

An id is looked up in a dict of the index's own image ids, never joined to a path: an id
the index does not hold (`../../etc/passwd` included) is simply not found. The image is
read from its record in the index's ingested shard (`CatalogIndex.image_bytes`), turned
upright by its EXIF orientation and shrunk to `size` pixels on its longest side.
"""

import functools
import io

from PIL import Image, ImageOps

from pipeline.catalog.index import CatalogIndex

CACHED = 512  # thumbnails kept: ~10 KB each at 256 px, ~5 MB in all
QUALITY = 85


class Thumbnails:
    """`thumbnails.jpeg(image_id)`: the JPEG bytes, or None for an id the index does not hold."""

    def __init__(self, index: CatalogIndex, size: int):
        self.index = index
        self.size = size
        self.rows = {image_id.decode(): row for row, image_id in enumerate(index.image_ids)}
        # Thread-safe; two threads missing the same id at once both draw it (harmless).
        self._drawn = functools.lru_cache(maxsize=CACHED)(self._draw)

    def jpeg(self, image_id: str) -> bytes | None:
        row = self.rows.get(image_id)
        return None if row is None else self._drawn(row)

    def _draw(self, row: int) -> bytes:
        with Image.open(io.BytesIO(self.index.image_bytes(row))) as image:
            upright = ImageOps.exif_transpose(image)
            upright.thumbnail((self.size, self.size))
            buffer = io.BytesIO()
            upright.convert("RGB").save(buffer, format="JPEG", quality=QUALITY)
        return buffer.getvalue()
