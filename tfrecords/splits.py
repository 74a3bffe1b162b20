"""Which split each image goes to, decided by product so a product never straddles.

Splits are `train`, `val_query`, `val_index`, `test_query` and `test_index`: as in
the eProduct benchmark, a query set is searched against an index set. Without a
`split` column, each product goes to `train`, `val` or `test` by a stable hash of
its id (so adding images or reordering the source moves nothing), and inside `val`
and `test` one image per product (the one with the smallest hash of its id) is the
query while the others go to the index. A product with a single image in an
automatic eval split has no query; its image joins the index as a distractor.
"""

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tfrecords.errors import SourceError

if TYPE_CHECKING:
    from tfrecords.sources import SourceImage

SPLITS = ("train", "val_query", "val_index", "test_query", "test_index")
EVAL_GROUPS = ("val", "test")
# What a CSV's `split` column may say: a final split, or an eval group to be divided.
SPLIT_ALIASES = SPLITS + EVAL_GROUPS


@dataclass(frozen=True)
class SplitPlan:
    """Each image's split, in source order, plus the products used as distractors."""

    splits: list[str]
    distractor_products: list[str]


def stable_fraction(seed: int, key: str) -> float:
    """A number in [0, 1) that depends only on `seed` and `key` (sha256 based)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def group_of(split: str) -> str:
    """`val_query` -> `val`; `train` -> `train`."""
    return split.split("_")[0]


def assign_splits(
    images: "list[SourceImage]", val_fraction: float, test_fraction: float, seed: int
) -> SplitPlan:
    """Give every image its split (see the module docstring for the rules)."""
    given = [image.split for image in images]
    if all(split is None for split in given):
        groups = {image.product: _hash_group(image.product, val_fraction, test_fraction, seed) for image in images}
        explicit = False
    elif any(split is None for split in given):
        first = next(image for image in images if image.split is None)
        raise SourceError(f"{first.where}: no split, while other rows have one; give every row a split or none")
    else:
        groups = _given_groups(images)
        explicit = True
    by_product: dict[str, list[int]] = defaultdict(list)
    for position, image in enumerate(images):
        by_product[image.product].append(position)
    splits: list[str] = [image.split or "" for image in images]
    distractors = []
    for product, positions in sorted(by_product.items()):
        group = groups[product]
        undivided = [p for p in positions if images[p].split in (None, *EVAL_GROUPS)]
        if group == "train":
            for position in undivided:
                splits[position] = "train"
            continue
        if not undivided:  # every image already says query or index
            continue
        if len(undivided) == 1 and explicit:
            image = images[undivided[0]]
            raise SourceError(
                f"{image.where}: product {product!r} has one image in split {group!r}, so it cannot "
                f"be both a query and an index item; give it more images, move it to train, or "
                f"mark it {group}_index to keep it as a distractor"
            )
        if len(undivided) == 1:
            distractors.append(product)
            splits[undivided[0]] = f"{group}_index"
            continue
        query = min(undivided, key=lambda p: stable_fraction(seed, images[p].image_id))
        for position in undivided:
            splits[position] = f"{group}_query" if position == query else f"{group}_index"
    return SplitPlan(splits=splits, distractor_products=distractors)


def _hash_group(product: str, val_fraction: float, test_fraction: float, seed: int) -> str:
    fraction = stable_fraction(seed, product)
    if fraction < test_fraction:
        return "test"
    if fraction < test_fraction + val_fraction:
        return "val"
    return "train"


def _given_groups(images: "list[SourceImage]") -> dict[str, str]:
    """The group of each product from the CSV; a product in two groups is an error."""
    first_seen: dict[str, "SourceImage"] = {}
    for image in images:
        first = first_seen.setdefault(image.product, image)
        if group_of(first.split) != group_of(image.split):
            raise SourceError(
                f"product {image.product!r} is in {group_of(first.split)!r} ({first.where}) and in "
                f"{group_of(image.split)!r} ({image.where}); a product must stay in one split, or "
                f"evaluation would search for images the model was trained on: give all its rows one split"
            )
    return {product: group_of(image.split) for product, image in first_seen.items()}
