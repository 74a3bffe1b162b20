"""Find the images of a source: a CSV file or an image folder.

A CSV has the columns `path` and `product_id`, optionally `category` and `split`;
paths are relative to the CSV's folder or absolute. A folder is either
`SRC/<product_id>/<image>` or `SRC/<category>/<product_id>/<image>`, told apart
by depth. Only the listing happens here: images are opened by the writer.
"""

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from tfrecords.errors import SourceError
from tfrecords.splits import SPLIT_ALIASES

REQUIRED_COLUMNS = ("path", "product_id")
OPTIONAL_COLUMNS = ("category", "split")


@dataclass(frozen=True)
class SourceImage:
    """One image named by the source.

    `image_id` is the path as the source names it (relative to the source root,
    POSIX separators), used as the image's id in records and submissions.
    `row` is the CSV line number for messages (None for folders).
    """

    path: Path
    image_id: str
    product: str
    category: str | None = None
    split: str | None = None
    row: int | None = None

    @property
    def where(self) -> str:
        return f"row {self.row}" if self.row is not None else self.image_id


def scan_source(source: str | Path) -> list[SourceImage]:
    """List the images of a CSV file or an image folder, sorted by image id."""
    source = Path(source)
    if not source.exists():
        raise SourceError(f"{source}: no such file or folder; give a CSV file or an image folder")
    images = _scan_csv(source) if source.is_file() else _scan_folder(source)
    if not images:
        raise SourceError(f"{source}: the source names no images")
    _check_consistent_products(images, source)
    return sorted(images, key=lambda image: image.image_id)


def check_outside_source(source: str | Path, folder: str | Path, role: str = "output folder") -> None:
    """Raise SourceError when `folder` (where something will be written; `role` names it in
    the message) is the image folder `source` or inside it: a later scan of the source
    would list what is written there as images (shards at SRC/data/... as product `data`).
    Both paths are resolved first (symlinks, `..`). A CSV source names its images itself,
    so a folder beside or below it is fine."""
    source_path, folder_path = Path(source).resolve(), Path(folder).resolve()
    if not source_path.is_dir():
        return
    if folder_path == source_path:
        raise SourceError(f"{folder}: the {role} is the source folder itself; give a folder outside {source}")
    if source_path in folder_path.parents:
        raise SourceError(
            f"{folder}: the {role} is inside the source folder {source}, so a later ingestion of {source} "
            f"would take the files written there for images; give a folder outside {source}"
        )


def _scan_csv(csv_path: Path) -> list[SourceImage]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [name.strip() for name in (reader.fieldnames or [])]
            missing = [name for name in REQUIRED_COLUMNS if name not in columns]
            if missing:
                raise SourceError(
                    f"{csv_path}: missing column(s) {', '.join(missing)}; found "
                    f"{', '.join(columns) or 'no header'}. Needed: path, product_id "
                    f"(optional: category, split)"
                )
            reader.fieldnames = columns
            rows = list(enumerate(reader, start=2))
    except UnicodeDecodeError as error:
        raise SourceError(
            f"{csv_path}: not UTF-8 text (byte {error.start}); save the CSV as UTF-8"
        ) from None
    images, seen = [], {}
    for row_number, row in rows:
        image = _csv_row_image(csv_path, row_number, row)
        file = _file_identity(image.path)
        if file in seen:
            first = seen[file]
            spelled = "" if image.image_id == first.image_id else f" as {image.image_id!r} (the same file)"
            raise SourceError(
                f"{csv_path}: row {row_number} repeats the image {first.image_id!r} of row {first.row}{spelled}; "
                "each image may be listed once: delete one of the two rows"
            )
        seen[file] = image
        images.append(image)
    return images


def _file_identity(path: Path) -> tuple:
    """What tells two rows name one file however they spell it (relative and absolute,
    `sub/../a.jpg`, a symlink, a hard link): its device and inode, one stat (~3 us; a
    realpath costs ~40 us, an lstat per path component). For a missing file, which the
    writer lists as skipped, its absolute, normalised path."""
    try:
        status = os.stat(path)
    except OSError:
        return ("missing", os.path.normpath(os.path.abspath(path)))
    return (status.st_dev, status.st_ino)


def _csv_row_image(csv_path: Path, row_number: int, row: dict) -> SourceImage:
    values = {key: (row.get(key) or "").strip() for key in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}
    for key in REQUIRED_COLUMNS:
        if not values[key]:
            raise SourceError(f"{csv_path}: row {row_number} has an empty {key!r}")
    split = values["split"].lower() or None
    if split is not None and split not in SPLIT_ALIASES:
        raise SourceError(
            f"{csv_path}: row {row_number} has split {values['split']!r}; use one of "
            f"{', '.join(SPLIT_ALIASES)} (or leave the column out to split by product)"
        )
    given = Path(values["path"])
    return SourceImage(
        path=given if given.is_absolute() else (csv_path.parent / given),
        image_id=given.as_posix(),
        product=values["product_id"],
        category=values["category"] or None,
        split=split,
        row=row_number,
    )


def _scan_folder(root: Path) -> list[SourceImage]:
    files = [
        path
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    depths = {len(path.relative_to(root).parts) for path in files}
    if not files:
        return []
    undecodable = [relative for relative in (path.relative_to(root) for path in files) if not _is_utf8(str(relative))]
    if undecodable:
        shown = ", ".join(os.fsencode(path).decode("ascii", "backslashreplace") for path in undecodable[:3])
        raise SourceError(
            f"{root}: {len(undecodable)} file name(s) are not UTF-8 ({shown}); image ids are UTF-8 text in "
            f"records and submissions: rename them, e.g. `convmv -r -f latin1 -t utf-8 --notest {root}`"
        )
    if not depths <= {2, 3} or len(depths) > 1:
        examples = {depth: next(p for p in files if len(p.relative_to(root).parts) == depth) for depth in depths}
        listing = "; ".join(f"{p.relative_to(root)}" for p in examples.values())
        raise SourceError(
            f"{root}: images must all be at SRC/<product_id>/<image> or all at "
            f"SRC/<category>/<product_id>/<image>; found files at several depths: {listing}"
        )
    with_category = depths == {3}
    images = []
    for path in files:
        parts = path.relative_to(root).parts
        images.append(
            SourceImage(
                path=path,
                image_id=Path(*parts).as_posix(),
                product=parts[-2],
                category=parts[0] if with_category else None,
            )
        )
    return images


def _is_utf8(name: str) -> bool:
    """False for a name Python decoded with surrogate escapes (its bytes are not UTF-8)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_consistent_products(images: list[SourceImage], source: Path) -> None:
    """A product belongs to one category; categories are given for all images or none."""
    with_category = [image for image in images if image.category is not None]
    if with_category and len(with_category) != len(images):
        first = next(image for image in images if image.category is None)
        raise SourceError(f"{source}: {first.where} has no category while others have one")
    category_of: dict[str, SourceImage] = {}
    for image in images:
        first = category_of.setdefault(image.product, image)
        if first.category != image.category:
            raise SourceError(
                f"{source}: product {image.product!r} is in category {first.category!r} "
                f"({first.where}) and {image.category!r} ({image.where}); a product has one category"
            )
