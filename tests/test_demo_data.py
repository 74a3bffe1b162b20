"""The generated demo dataset: deterministic, ingestible, products alike within a category, varied shots."""

import hashlib
import io
import itertools

import numpy as np
import pytest
from PIL import Image

from tfrecords.demo_data import CATEGORIES, DemoOptions, write_demo_data
from tfrecords.demo_products import BUILDERS
from tfrecords.demo_render import Light
from tfrecords.demo_traits import Traits
from tfrecords.sources import scan_source

STUDIO_LIGHT = Light(np.array([0.3, 0.5, 0.81]) / np.linalg.norm([0.3, 0.5, 0.81]), ambient=0.4, strength=0.8)


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.*")}


def pixels(path, side=None):
    image = Image.open(io.BytesIO(path.read_bytes())).convert("RGB")
    return np.asarray(image.resize((side, side)) if side else image, dtype=np.float32)


def canonical_view(category: int, number: int, similarity: float, yaw: float = 0.3) -> np.ndarray:
    """Product `number` of a category in one fixed pose and light on grey, [32, 32, 3]: no shot's variation."""
    traits = Traits(0, category, np.random.default_rng(number), similarity, shared={})
    layer, _ = BUILDERS[CATEGORIES[category]](traits).render(40, yaw, 0.2, STUDIO_LIGHT)
    alpha = layer[..., 3:]
    image = layer[..., :3] * alpha + 0.5 * (1 - alpha)
    return np.asarray(Image.fromarray((image * 255).astype(np.uint8)).resize((32, 32), Image.BILINEAR), np.float32)


def mean_distance(pairs) -> float:
    return float(np.mean([np.abs(a - b).mean() for a, b in pairs]))


def test_same_options_write_the_same_files(tmp_path):
    options = DemoOptions(products=6, shots=3, categories=2, image_size=32, seed=11)
    write_demo_data(tmp_path / "a", options)
    write_demo_data(tmp_path / "b", options)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    write_demo_data(tmp_path / "c", DemoOptions(products=6, shots=3, categories=2, image_size=32, seed=12))
    assert digests(tmp_path / "a") != digests(tmp_path / "c")


def test_layout_is_category_product_shot_with_jpegs_and_pngs(tmp_path):
    count = write_demo_data(tmp_path, DemoOptions(products=10, shots=4, categories=5, image_size=32))
    images = scan_source(tmp_path)
    assert count == len(images) == 40
    assert len({i.category for i in images}) == 5 and len({i.product for i in images}) == 10
    assert {i.image_id.rsplit(".", 1)[1] for i in images} == {"jpg", "png"}


def test_sixteen_categories_at_sixteen_pixels_and_the_longer_side_is_the_image_size(tmp_path):
    write_demo_data(tmp_path, DemoOptions(products=16, shots=3, categories=16, image_size=16))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CATEGORIES) and len(CATEGORIES) == 16
    sizes = {Image.open(p).size for p in tmp_path.rglob("*.*")}
    assert {max(size) for size in sizes} == {16} and any(width != height for width, height in sizes)


@pytest.mark.parametrize(
    "wrong", [dict(categories=17), dict(categories=0), dict(image_size=8), dict(similarity=1.5), dict(clutter=-0.1)]
)
def test_options_out_of_range_are_refused_by_name(tmp_path, wrong):
    with pytest.raises(ValueError, match=next(iter(wrong))):
        write_demo_data(tmp_path, DemoOptions(**{**dict(products=2, shots=1), **wrong}))


def test_shots_of_one_product_differ_in_backdrop_and_pose(tmp_path):
    write_demo_data(tmp_path, DemoOptions(products=1, shots=6, categories=1, image_size=48, seed=1))
    shots = [pixels(p, 48) for p in sorted(tmp_path.rglob("*.*"))]
    for a, b in itertools.combinations(shots, 2):
        assert np.abs(a - b).mean() > 10  # new backdrop, pose, light and camera each time
        assert np.abs(a[:6] - b[:6]).mean() > 5  # the top rows: backdrop only, most of the time
    front, turned = canonical_view(0, 0, 0.6, yaw=0.0), canonical_view(0, 0, 0.6, yaw=1.0)
    assert np.abs(front - turned).mean() > 3  # turning a bottle shows another part of its label


def test_products_of_one_category_are_more_alike_than_products_of_different_categories():
    views = {(c, n): canonical_view(c, n, similarity=DemoOptions.similarity) for c in range(5) for n in range(4)}
    same = [(views[c, a], views[c, b]) for c in range(5) for a, b in itertools.combinations(range(4), 2)]
    different = [(views[c, n], views[d, n]) for c, d in itertools.combinations(range(5), 2) for n in range(4)]
    assert mean_distance(same) < 0.7 * mean_distance(different)


def test_similarity_makes_the_products_of_a_category_alike_but_never_identical():
    def within(similarity):
        views = [[canonical_view(category, number, similarity) for number in range(4)] for category in range(5)]
        return [np.abs(a - b).mean() for products in views for a, b in itertools.combinations(products, 2)]

    assert np.mean(within(1.0)) < 0.6 * np.mean(within(0.0))
    assert min(within(1.0)) > 1  # brand, logo and small print are each product's own
