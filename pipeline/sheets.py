"""Contact sheets: rows of captioned, outlined thumbnails, drawn with Pillow into one PNG.

`pvs search --sheet` draws one row per query: the query, a gap, then its results, each
outlined green (the query's product), red (another product) or grey (the query's
product is unknown). Every cell has the same size, so a sheet of R rows of C cells is
`sheet_size(R, C)` pixels.
"""

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from tfrecords.files import write_bytes_atomic

THUMBNAIL = 112  # pixels, the longer side of each image
OUTLINE = 4  # pixels of the coloured frame
CAPTION = 30  # pixels under each image: two lines
GAP = 12  # pixels between the query and its results
CELL_WIDTH = THUMBNAIL + 2 * OUTLINE + 4
CELL_HEIGHT = THUMBNAIL + 2 * OUTLINE + CAPTION + 4
COLOURS = {"query": (31, 119, 180), "match": (44, 160, 44), "other": (214, 39, 40), "unknown": (160, 160, 160)}
BACKGROUND = (255, 255, 255)
THUMBNAIL_FILL = (238, 238, 238)


@dataclass
class Cell:
    """One thumbnail: the image's encoded bytes, two caption lines, and its outline
    (a key of COLOURS: query, match, other or unknown)."""

    image: bytes
    caption: tuple[str, str]
    outline: str


def sheet_size(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) in pixels of a sheet of `rows` rows of `columns` cells, the first
    cell of each row (the query) set apart by GAP."""
    return columns * CELL_WIDTH + GAP, rows * CELL_HEIGHT


def write_sheet(out: str | Path, rows: list[list[Cell]]) -> Path:
    """Draw `rows` (each a query cell then its result cells) into a PNG at `out`, atomically."""
    columns = max(len(row) for row in rows)
    sheet = Image.new("RGB", sheet_size(len(rows), columns), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for row_number, row in enumerate(rows):
        for column, cell in enumerate(row):
            left = column * CELL_WIDTH + (GAP if column else 0) + 2
            _draw_cell(sheet, draw, font, cell, left, row_number * CELL_HEIGHT + 2)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    write_bytes_atomic(out, buffer.getvalue())
    return Path(out)


def _draw_cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, font, cell: Cell, left: int, top: int) -> None:
    frame = THUMBNAIL + 2 * OUTLINE
    draw.rectangle([left, top, left + frame - 1, top + frame - 1], fill=COLOURS[cell.outline])
    draw.rectangle([left + OUTLINE, top + OUTLINE, left + OUTLINE + THUMBNAIL - 1, top + OUTLINE + THUMBNAIL - 1],
                   fill=THUMBNAIL_FILL)
    with Image.open(io.BytesIO(cell.image)) as image:
        thumbnail = ImageOps.contain(ImageOps.exif_transpose(image).convert("RGB"), (THUMBNAIL, THUMBNAIL))
    sheet.paste(thumbnail, (left + OUTLINE + (THUMBNAIL - thumbnail.width) // 2,
                            top + OUTLINE + (THUMBNAIL - thumbnail.height) // 2))
    for number, line in enumerate(cell.caption):
        draw.text((left + 1, top + frame + 2 + 13 * number), _fitted(line, font, frame), fill=(0, 0, 0), font=font)


def _fitted(text: str, font, width: int) -> str:
    """`text`, cut at the start with '…' until it fits `width` pixels (ids end with what tells them apart)."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength("…" + text) > width:
        text = text[1:]
    return "…" + text
