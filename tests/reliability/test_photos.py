"""Photos as phones and scanners make them: EXIF-rotated JPEGs and long thin images.

Orientation: a photo whose pixels are stored turned or mirrored, with the EXIF tag that
says how to stand it upright, reaches the model upright on every path (ingest and the
reader, `pvs search` queries, `pvs preview`), as PIL's `ImageOps.exif_transpose` shows
it; the shard keeps the file's bytes as they were. Long thin images are prepared with
the values of padding to a square and resizing, without that square's memory.
"""

import io
import os
import subprocess
import sys
import textwrap

import matplotlib.axes
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, read_records, write_image
from PIL import Image, ImageOps

from pipeline.preview import write_preview
from pipeline.search import Query, query_images
from tfrecords.images import MAX_SIDE, ORIENTATION_TAG, check_image, orientation
from tfrecords.ingest import ingest
from tfrecords.options import IngestOptions, ReadOptions
from tfrecords.preprocess import prepare
from tfrecords.reader import parse_record, read_images
from tfrecords.record_format import encode_example

UPRIGHT_SIZE = (48, 32)  # width, height: wider than high, so a photo left sideways has the wrong shape
# How to store an upright picture so that EXIF orientation N stands it up again: the inverse of
# the transform PIL's exif_transpose applies for N (2-5 and 7 are their own inverses).
STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
JPEG_TOLERANCE = 6  # grey levels: TensorFlow's and PIL's JPEG decoders round differently
SIZE = UPRIGHT_SIZE[0]  # prepared at the longer side: padding, and no resampling to blur a mistake


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def upright_picture() -> Image.Image:
    """An asymmetric picture: red grows to the right, green downwards, a blue block top left."""
    width, height = UPRIGHT_SIZE
    rows, columns = np.mgrid[0:height, 0:width]
    pixels = np.stack([columns * 255 // (width - 1), rows * 255 // (height - 1), np.zeros_like(rows)], axis=-1)
    pixels[:8, :16, 2] = 255  # on JPEG's 8 x 8 blocks in every orientation: no ringing around it
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def tagged_photo(tag: int, kind: str = "JPEG") -> bytes:
    """The upright picture stored as a camera would for EXIF orientation `tag`, with the tag."""
    picture = upright_picture()
    return with_tag(picture if STORED[tag] is None else picture.transpose(STORED[tag]), tag, kind)


def with_tag(picture: Image.Image, tag: int, kind: str = "JPEG") -> bytes:
    """`picture` encoded (a JPEG at quality 95, full colour resolution) with EXIF orientation `tag`."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = tag
    buffer = io.BytesIO()
    picture.save(buffer, format=kind, exif=exif, **({"quality": 95, "subsampling": 0} if kind == "JPEG" else {}))
    return buffer.getvalue()


def reference_prepare(pixels: np.ndarray, size: int) -> np.ndarray:
    """The definition `prepare` keeps (the seed recipe as first written): pad the image to a
    square of its longer side, centred, filled with its border's mean colour, then resize
    the square (bilinear, antialiased) and clip to [0, 255]. Builds the full square."""
    image = pixels.astype(np.float32)
    height, width = image.shape[:2]
    side = max(height, width)
    fill = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).mean(axis=0)
    square = np.broadcast_to(fill, (side, side, 3)).copy()
    top, left = (side - height) // 2, (side - width) // 2
    square[top:top + height, left:left + width] = image
    resized = tf.image.resize(square, [size, size], method="bilinear", antialias=True).numpy()
    return np.clip(resized, 0.0, 255.0)


def as_pil_shows_it(data: bytes) -> np.ndarray:
    """The expected model input: the bytes stood upright by PIL, then the recipe."""
    with Image.open(io.BytesIO(data)) as image:
        return reference_prepare(np.asarray(ImageOps.exif_transpose(image).convert("RGB")), SIZE)


def assert_upright(prepared: np.ndarray, data: bytes, tag: int) -> None:
    expected = as_pil_shows_it(data)
    np.testing.assert_allclose(prepared, expected, atol=JPEG_TOLERANCE, err_msg=f"orientation {tag}")
    if tag != 1:  # and far from the image left as stored: the check can tell
        with Image.open(io.BytesIO(data)) as image:
            as_stored = reference_prepare(np.asarray(image.convert("RGB")), SIZE)
        assert np.abs(as_stored - expected).mean() > 20


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of the upright picture under every orientation, p<N>/photo.jpg, and its ingestion."""
    root = tmp_path_factory.mktemp("photos")
    files = {tag: write_image(root / "src" / f"p{tag}" / "photo.jpg", tagged_photo(tag)) for tag in STORED}
    ingest(root / "src", root / "data", IngestOptions(val_fraction=0, test_fraction=0, workers=1), progress=False)
    return files, root / "data"


def test_the_test_photos_stand_upright_in_pil_only_through_their_tag():
    upright = np.asarray(upright_picture(), np.float32)
    for tag in STORED:
        data = tagged_photo(tag)
        assert orientation(data) == tag
        with Image.open(io.BytesIO(data)) as image:
            shown = np.asarray(ImageOps.exif_transpose(image), np.float32)
        np.testing.assert_allclose(shown, upright, atol=JPEG_TOLERANCE, err_msg=f"orientation {tag}")


def test_ingest_keeps_each_photos_bytes_and_records_its_orientation(photos):
    files, data_dir = photos
    records = {record["image/id"].decode(): record for record in read_records(data_dir, "train")}
    assert len(records) == len(STORED)
    for tag, path in files.items():
        record = records[f"p{tag}/photo.jpg"]
        assert record["image/encoded"] == path.read_bytes()
        assert record["image/orientation"] == tag


def test_the_reader_stands_every_orientation_upright(photos):
    files, data_dir = photos
    elements = read_images(data_dir, "train", ReadOptions(image_size=SIZE)).as_numpy_iterator()
    prepared = {element["image_id"].decode(): element["image"] for element in elements}
    for tag, path in files.items():
        assert_upright(prepared[f"p{tag}/photo.jpg"], path.read_bytes(), tag)


def test_search_stands_every_query_upright_from_a_file_or_bytes(photos):
    files, _ = photos
    queries = [Query(str(path), path) for path in files.values()] + [Query("bytes", tagged_photo(6))]
    prepared = list(query_images(queries, SIZE).as_numpy_iterator())
    for (tag, path), image in zip(files.items(), prepared):
        assert_upright(image, path.read_bytes(), tag)
    assert_upright(prepared[-1], tagged_photo(6), 6)


def test_preview_draws_every_photo_upright(photos, tmp_path, monkeypatch):
    files, data_dir = photos
    drawn = []
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", lambda axis, image, **_: drawn.append(image))
    write_preview(data_dir, tmp_path / "preview.png", image_size=SIZE)
    upright = reference_prepare(np.asarray(upright_picture()), SIZE)
    assert len(drawn) == 12  # a row of six train images, then the six views of the first
    for image in drawn[:6]:  # every file holds the same upright picture, whichever the reader gave first
        np.testing.assert_allclose(image, upright, atol=JPEG_TOLERANCE + 1)  # + 1: the preview's uint8 cast


def test_a_tagged_png_stands_upright_too():
    data = tagged_photo(6, kind="PNG")
    assert orientation(data) == 6
    assert_upright(prepare(tf.constant(data), SIZE, orientation(data)).numpy(), data, 6)


@pytest.mark.parametrize("data", [b"not an image", tagged_photo(6)[:20], with_tag(upright_picture(), 9),
                                  with_tag(upright_picture(), 0), png(np.zeros((4, 4, 3), np.uint8))],
                         ids=["garbage", "truncated", "tag 9", "tag 0", "png without exif"])
def test_a_missing_unreadable_or_unknown_orientation_counts_as_upright(data):
    assert orientation(data) == 1


def test_a_record_written_before_orientations_were_stored_reads_as_stored():
    record = encode_example({"image/encoded": b"", "image/format": "jpeg", "image/id": "old.jpg",
                             "product/id": 0, "category/id": -1, "split": "train"})
    assert parse_record(tf.constant(record))["image/orientation"].numpy() == 1


@pytest.mark.parametrize("height, width", [(50, 50), (96, 128), (128, 96), (33, 17), (17, 33), (1, 40), (40, 1),
                                           (1, 1), (3, 300), (300, 3), (224, 225)])
@pytest.mark.parametrize("size", [32, 224])
def test_prepare_equals_padding_to_a_square_then_resizing(height, width, size):
    pixels = np.random.default_rng(height * 1000 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    prepared = prepare(tf.constant(png(pixels)), size, 1).numpy()
    assert prepared.shape == (size, size, 3)
    np.testing.assert_allclose(prepared, reference_prepare(pixels, size), atol=1e-3)


def test_an_image_with_a_side_over_65535_pixels_is_refused_whatever_its_pixel_count():
    """The canvas grows with the longer side (see MAX_SIDE), which the pixel limit does not bound."""
    assert check_image(png(np.zeros((1, MAX_SIDE), np.uint8)), max_pixels=64_000_000).reason is None
    assert check_image(png(np.zeros((MAX_SIDE + 1, 1), np.uint8)), max_pixels=64_000_000).reason == (
        f"too large: 1x{MAX_SIDE + 1} pixels has a side over the limit of {MAX_SIDE}")


MEMORY_PROBE = textwrap.dedent("""
    import io, resource
    import numpy as np, tensorflow as tf
    from PIL import Image
    from tfrecords.preprocess import prepare

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def prepare_png(height, width):
        pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        images = tf.data.Dataset.from_tensors(buffer.getvalue()).map(lambda data: prepare(data, 224, 1))
        assert next(iter(images)).shape == (224, 224, 3)

    prepare_png(96, 128)  # TensorFlow's own start-up and the pipeline's first run
    before = peak_mb()
    prepare_png(10000, 3)
    prepare_png(3, 10000)
    print(peak_mb() - before)
""")


@pytest.mark.slow  # ~5 s: TensorFlow starts in a fresh process, whose peak memory is measured
def test_long_thin_images_are_prepared_in_bounded_memory():
    """10000 x 3 and 3 x 10000 pixels (90 KB each): padding them to a square first took
    ~3.7 GB; now the peak grows by the canvas of 10000 x 224 pixels and its fill (~55 MB)."""
    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE], cwd=REPO, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert probe.returncode == 0, probe.stderr[-3000:]
    growth_mb = float(probe.stdout.split()[-1])
    assert growth_mb < 200, f"the peak memory grew by {growth_mb:.0f} MB"
