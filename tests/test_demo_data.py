"""The generated demo dataset: deterministic, laid out as an ingestible folder, varied shots."""

import hashlib
import io

import numpy as np
from PIL import Image

from tfrecords.demo_data import DemoOptions, write_demo_data
from tfrecords.sources import scan_source


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.*")}


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


def test_shots_of_one_product_differ(tmp_path):
    write_demo_data(tmp_path, DemoOptions(products=1, shots=4, categories=1, image_size=48))
    shots = [np.asarray(Image.open(io.BytesIO(p.read_bytes())).convert("RGB").resize((48, 48)), dtype=np.float32) for p in sorted(tmp_path.rglob("*.*"))]
    for a in range(len(shots)):
        for b in range(a + 1, len(shots)):
            assert np.abs(shots[a] - shots[b]).mean() > 10  # new background, pose and light each time
