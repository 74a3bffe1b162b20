"""Split rules: by product, stable, one query per eval product, and explicit splits checked."""

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tfrecords.errors import SourceError
from tfrecords.sources import SourceImage
from tfrecords.splits import assign_splits, group_of


def make_images(products: int, per_product: int, split: str | None = None) -> list[SourceImage]:
    return [
        SourceImage(path=Path(f"p{p}/{i}.jpg"), image_id=f"p{p}/{i}.jpg", product=f"p{p}", split=split, row=None)
        for p in range(products)
        for i in range(per_product)
    ]


def splits_by_product(images, splits) -> dict[str, set[str]]:
    groups = defaultdict(set)
    for image, split in zip(images, splits):
        groups[image.product].add(split)
    return groups


def test_a_product_never_straddles_train_val_and_test():
    images = make_images(300, 4)
    plan = assign_splits(images, val_fraction=0.1, test_fraction=0.1, seed=0)
    for product, splits in splits_by_product(images, plan.splits).items():
        assert len({group_of(s) for s in splits}) == 1, (product, splits)


def test_each_eval_product_has_one_query_and_the_rest_in_the_index():
    images = make_images(300, 4)
    plan = assign_splits(images, 0.1, 0.1, seed=0)
    for product, _ in splits_by_product(images, plan.splits).items():
        mine = [s for image, s in zip(images, plan.splits) if image.product == product]
        if mine[0] != "train":
            group = group_of(mine[0])
            assert Counter(mine) == {f"{group}_query": 1, f"{group}_index": 3}


def test_fractions_are_followed_by_product_count():
    images = make_images(2000, 1)
    plan = assign_splits(images, val_fraction=0.15, test_fraction=0.05, seed=3)
    groups = Counter(group_of(s) for s in plan.splits)
    assert abs(groups["val"] / 2000 - 0.15) < 0.03
    assert abs(groups["test"] / 2000 - 0.05) < 0.02


def test_splits_do_not_move_when_images_are_added_or_reordered():
    images = make_images(200, 3)
    before = dict(zip((i.image_id for i in images), assign_splits(images, 0.2, 0.2, seed=1).splits))
    grown = list(reversed(images)) + make_images(260, 3)[600:]
    after = dict(zip((i.image_id for i in grown), assign_splits(grown, 0.2, 0.2, seed=1).splits))
    assert {k: after[k] for k in before} == before


def test_the_seed_changes_the_split():
    images = make_images(200, 2)
    assert assign_splits(images, 0.2, 0.2, seed=1).splits != assign_splits(images, 0.2, 0.2, seed=2).splits


def test_single_image_eval_products_become_index_distractors():
    images = make_images(400, 1)
    plan = assign_splits(images, 0.2, 0.2, seed=0)
    assert set(plan.splits) == {"train", "val_index", "test_index"}
    eval_products = {i.product for i, s in zip(images, plan.splits) if s != "train"}
    assert set(plan.distractor_products) == eval_products


def test_explicit_splits_are_kept_and_val_is_divided():
    images = make_images(3, 3, split="val") + [
        SourceImage(path=Path("q.jpg"), image_id="q.jpg", product="x", split="test_query"),
        SourceImage(path=Path("i.jpg"), image_id="i.jpg", product="x", split="test_index"),
        SourceImage(path=Path("t.jpg"), image_id="t.jpg", product="y", split="train"),
    ]
    plan = assign_splits(images, 0.5, 0.4, seed=0)
    assert plan.splits[-3:] == ["test_query", "test_index", "train"]
    assert Counter(plan.splits[:9]) == {"val_query": 3, "val_index": 6}


def test_explicit_single_image_eval_product_is_an_error():
    images = make_images(1, 1, split="test")
    with pytest.raises(SourceError, match="product 'p0' has one image in split 'test'"):
        assign_splits(images, 0.1, 0.1, seed=0)


def test_explicit_product_in_train_and_val_is_an_error():
    images = [
        SourceImage(path=Path("a.jpg"), image_id="a.jpg", product="p", split="train", row=2),
        SourceImage(path=Path("b.jpg"), image_id="b.jpg", product="p", split="val", row=3),
    ]
    with pytest.raises(SourceError, match="product 'p' is in 'train' \\(row 2\\) and in 'val' \\(row 3\\)"):
        assign_splits(images, 0.1, 0.1, seed=0)


def test_a_split_column_filled_for_some_rows_only_is_an_error():
    images = make_images(1, 1, split="train") + make_images(2, 1)[1:]
    with pytest.raises(SourceError, match="no split, while other rows have one"):
        assign_splits(images, 0.1, 0.1, seed=0)
