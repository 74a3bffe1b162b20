"""One file's bytes in two splits: refused before ingestion writes anything.

A copy in train and in test is an image the model was trained on; a query with a copy
in its index finds it at distance 0. Both inflate the scores. Copies inside one split
are accepted and not looked for: in train they weigh an image twice, in an index they
are one more item to rank.

Files are narrowed down as duplicate finders do (fdupes): grouped by size, then by the
sha256 of their first 16 KiB, then by the sha256 of their whole content, each step only
over the groups that still hold files of two splits. Most files are only stat'ed; a
file is read whole only when its size and its first 16 KiB equal those of a file in
another split, which, for photos, means a copy.
"""

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tfrecords.errors import SourceError
from tfrecords.files import sha256_file
from tfrecords.sources import SourceImage

HEAD_BYTES = 16 * 1024  # past a JPEG's or PNG's headers, into the pixels' own data
_BATCH = 256  # files per thread task: a task per file would cost more than a stat

Member = tuple[SourceImage, str]  # an image and its split


def check_no_copies_across_splits(
    images: list[SourceImage], splits: list[str], workers: int, source: str | Path
) -> None:
    """Raise SourceError naming two files of different splits with the same bytes (and how
    many more such groups there are). Files are read in `workers` threads. Missing and
    unreadable files are left out: the shard writer lists them as skipped."""
    groups = [list(zip(images, splits))]
    for key in (_size, _head_digest, sha256_file):
        groups = _regroup_across_splits(groups, key, workers)
    if groups:
        (first, first_split), (other, other_split) = _pair_across_splits(groups[0])
        more = f" ({len(groups) - 1} more such group(s))" if len(groups) > 1 else ""
        raise SourceError(
            f"{source}: {_named(first, first_split)} and {_named(other, other_split)} are the same file, byte for "
            f"byte{more}; a copy in two splits lets evaluation find an image the model trained on, or a query its "
            "own copy: delete one of the two, or put both in one product and split"
        )


def _regroup_across_splits(
    groups: list[list[Member]], key: Callable[[Path], object], workers: int
) -> list[list[Member]]:
    """Each group split by `key` of its files; only the parts holding two splits are kept."""
    members = [member for group in groups for member in group]
    batches = [members[start:start + _BATCH] for start in range(0, len(members), _BATCH)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="copies") as pool:
        keys = [value for batch in pool.map(lambda batch: [_or_none(key, image.path) for image, _ in batch], batches)
                for value in batch]
    group_of = [number for number, group in enumerate(groups) for _ in group]
    parts: dict[tuple, list[Member]] = defaultdict(list)
    for member, number, value in zip(members, group_of, keys):
        if value is not None:
            parts[(number, value)].append(member)
    return [part for part in parts.values() if len({split for _, split in part}) > 1]


def _or_none(key: Callable[[Path], object], path: Path) -> object:
    try:
        return key(path)
    except OSError:
        return None


def _size(path: Path) -> int:
    return os.stat(path).st_size


def _head_digest(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(HEAD_BYTES)).digest()


def _pair_across_splits(group: list[Member]) -> tuple[Member, Member]:
    first = group[0]
    return first, next(member for member in group if member[1] != first[1])


def _named(image: SourceImage, split: str) -> str:
    """`'p1/a.jpg' (row 3, train)`, or `'p1/a.jpg' (train)` for an image of a folder."""
    row = f"row {image.row}, " if image.row is not None else ""
    return f"{image.image_id!r} ({row}{split})"
