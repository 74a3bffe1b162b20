"""`pvs export`: a finished run's final embedder as a SavedModel, a TFLite model and a .keras
file, each embedding the run's final-split images as the run did (its preprocessing, EXIF
orientation and test-time augmentation inside), with a manifest listing what was written."""

import contextlib
import io
import json
import struct
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import write_yaml
from PIL import Image
from reliability.test_bad_input import refused
from reliability.test_photos import STORED, png, tagged_photo, upright_picture, with_tag
from test_pooling_and_views import images, tiny_model
from test_run import pvs_run
from test_search import TINY_RUN

from phases.exif import exif_orientation
from phases.serving import embedding_model  # also registers the export's layers, as a user's program would
from phases.tflite import tflite_embedder
from phases.views import embed_views
from pipeline.cli import main
from pipeline.export_checks import FinalSplit, cosine_distances
from tfrecords.embeddings import load_embeddings
from tfrecords.files import sha256_file
from tfrecords.images import orientation
from tfrecords.preprocess import prepare

TOLERANCE = 1e-4  # 1 - cos to the run's own embeddings


@pytest.fixture(scope="module")
def run_dir(ingested, tmp_path_factory) -> Path:
    """A finished `pvs run` of the search tests' one-phase run, with all six test-time views
    and a whitening: what an export must carry inside (the views) and beside it (the whitening)."""
    folder = tmp_path_factory.mktemp("export-run")
    config = {**TINY_RUN, "data": {**TINY_RUN["data"], "source": str(ingested)},
              "evaluation": {**TINY_RUN["evaluation"], "test_time_augmentation": "six_views",
                             "retrieval": {"whitening": {"dimensions": 8, "train_images": 24}}}}
    pvs_run(write_yaml(folder / "tiny.yaml", config), folder / "run")
    return folder / "run"


def export(out_dir: Path, *argv) -> str:
    """`pvs export ARGV --out OUT_DIR`, which must succeed; what it printed."""
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        code = main(["export", *map(str, argv), "--out", str(out_dir)])
    assert code == 0, errors.getvalue()
    return printed.getvalue()


@pytest.fixture(scope="module")
def savedmodel(run_dir, tmp_path_factory) -> Path:
    """A SavedModel export into a model folder that holds a version 1 already; the folder."""
    out = tmp_path_factory.mktemp("savedmodel") / "served"
    (out / "1").mkdir(parents=True)
    (out / "1" / "saved_model.pb").write_bytes(b"an earlier version")
    export(out, run_dir, "--format", "savedmodel")
    return out


@pytest.fixture(scope="module")
def served(savedmodel):
    """The SavedModel export loaded as TF Serving loads it (`.signatures`: its signatures by name)."""
    return tf.saved_model.load(str(savedmodel / "2"))


@pytest.fixture(scope="module")
def tflite(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tflite") / "lite"
    export(out, run_dir, "--format", "tflite")
    return out


@pytest.fixture(scope="module")
def int8(run_dir, tmp_path_factory) -> tuple[Path, str]:
    """An int8 TFLite export calibrated on 16 train images: its folder and what it printed."""
    out = tmp_path_factory.mktemp("int8") / "lite"
    return out, export(out, run_dir, "--format", "tflite", "--quantize", "int8", "--calibration-images", 16)


@pytest.fixture(scope="module")
def keras_export(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("keras") / "exported"
    export(out, run_dir, "--format", "keras")
    return out


def manifest_of(out_dir: Path) -> dict:
    return json.loads((out_dir / "export.json").read_text())


def final_sets(run_dir: Path) -> list:
    """The run's embeddings of its final split: the query set's, the index set's."""
    summary = json.loads((run_dir / "run.json").read_text())
    return [load_embeddings(summary["embeddings"], f"{summary['final_split']}_{kind}") for kind in ("query", "index")]


def final_split_images(run_dir: Path, demo_images: Path) -> tuple[list[bytes], np.ndarray]:
    """The original files of the run's final split (query and index sets) and the run's embeddings of them."""
    sets = final_sets(run_dir)
    image_ids = [image_id.decode() for part in sets for image_id in part.image_ids]
    return [(demo_images / image_id).read_bytes() for image_id in image_ids], np.concatenate([s.vectors for s in sets])


def prepared(encoded: list[bytes], size: int) -> np.ndarray:
    """Images prepared as the pipeline's reader and `pvs search` prepare them (EXIF orientation by PIL)."""
    return np.stack([prepare(tf.constant(data), size, orientation(data)).numpy() for data in encoded])


@pytest.mark.slow
def test_the_savedmodel_embeds_image_files_as_the_run_did_and_its_prepared_signature_agrees(savedmodel, served,
                                                                                             run_dir, demo_images):
    encoded, expected = final_split_images(run_dir, demo_images)
    signatures = served.signatures
    from_bytes = signatures["serving_default"](images=tf.constant(encoded))["embeddings"].numpy()
    assert cosine_distances(from_bytes, expected).max() < TOLERANCE
    np.testing.assert_allclose(np.linalg.norm(from_bytes, axis=1), 1.0, atol=1e-5)
    assert max(manifest_of(savedmodel)["parity"]["max_cosine_distance"].values()) < TOLERANCE  # its own check
    size = manifest_of(savedmodel)["image_size"]
    from_floats = signatures["embed_prepared"](images=tf.constant(prepared(encoded, size)))["embeddings"].numpy()
    assert cosine_distances(from_floats, from_bytes).max() < 1e-6


@pytest.mark.parametrize("augmentation", ["none", "flip", "six_views"])
@pytest.mark.parametrize("classes", [0, 5], ids=["embedder", "scorer"])
def test_the_exported_model_averages_the_views_as_the_pipeline_does(augmentation, classes):
    model, batch = tiny_model(classes=classes), images(count=5)
    expected, _ = embed_views(model, batch, augmentation, eager=True)
    exported = np.asarray(embedding_model(model, augmentation)(batch))
    np.testing.assert_allclose(exported, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)


def jpeg(**options) -> bytes:
    """The upright test picture as a JPEG, saved with PIL's `options` (exif=, xmp=, icc_profile=)."""
    buffer = io.BytesIO()
    upright_picture().save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def exif_block(order: str, kind: int, value: int) -> bytes:
    """An EXIF block (PIL's `exif=`) in byte order `order` ("<" little-endian "II", ">" big-endian
    "MM": PIL writes the latter) whose IFD0 holds the orientation `value` as TIFF type `kind`
    (3 SHORT; 1 BYTE, which PIL reads as no orientation)."""
    value_field = (struct.pack(order + "H", value) if kind == 3 else bytes([value])).ljust(4, b"\0")
    entry = struct.pack(order + "HHI", 0x0112, kind, 1) + value_field
    return b"Exif\0\0" + (b"II" if order == "<" else b"MM") + struct.pack(order + "HIH", 42, 8, 1) + entry + bytes(4)


EXIF_CASES = {
    **{f"jpeg tagged {tag}": tagged_photo(tag) for tag in STORED},
    **{f"png tagged {tag}": tagged_photo(tag, "PNG") for tag in STORED},
    "jpeg without exif": jpeg(),
    "png without exif": png(np.zeros((4, 4, 3), np.uint8)),
    "little-endian exif": jpeg(exif=exif_block("<", 3, 6)),
    "big-endian exif": jpeg(exif=exif_block(">", 3, 5)),
    "after a 70 kB icc profile": jpeg(exif=exif_block(">", 3, 7), icc_profile=bytes(70_000)),
    "xmp only": jpeg(xmp=b'<rdf:Description tiff:Orientation="8"/>'),
    "exif tag of another type, xmp ignored": jpeg(exif=exif_block("<", 1, 6), xmp=b'tiff:Orientation="8"'),
    "tag 9": with_tag(upright_picture(), 9),
    "not an image": b"not an image",
    "truncated": tagged_photo(6)[:20],
}


# Traced once, as a SavedModel holds it: no Python runs between the bytes and the orientation.
READ_IN_GRAPH = tf.function(exif_orientation, input_signature=[tf.TensorSpec([], tf.string)])


@pytest.mark.parametrize("data", EXIF_CASES.values(), ids=EXIF_CASES.keys())
def test_the_exif_orientation_read_in_the_graph_is_the_one_pil_reads(data):
    assert int(READ_IN_GRAPH(tf.constant(data))) == orientation(data)


@pytest.mark.slow
def test_a_rotated_photo_embeds_as_its_upright_twin_through_the_savedmodel(served):
    serve = served.signatures["serving_default"]
    photos = [tagged_photo(tag, "PNG") for tag in STORED]  # lossless: upright, the pixels are the same
    embeddings = serve(images=tf.constant(photos))["embeddings"].numpy()
    upright = np.broadcast_to(embeddings[0], embeddings.shape)
    assert cosine_distances(embeddings, upright).max() < 1e-6
    with Image.open(io.BytesIO(photos[5])) as sideways:  # tag 6 dropped: the photo left as stored
        untagged = io.BytesIO()
        sideways.save(untagged, format="PNG")
    left_sideways = serve(images=tf.constant([untagged.getvalue()]))["embeddings"].numpy()
    assert cosine_distances(left_sideways, embeddings[[0]])[0] > 1e-4  # the check can tell


@pytest.mark.slow
def test_a_float32_tflite_model_embeds_as_the_run_did(tflite, run_dir, demo_images):
    encoded, expected = final_split_images(run_dir, demo_images)
    embed = tflite_embedder((tflite / "model.tflite").read_bytes())
    embeddings = embed(prepared(encoded, manifest_of(tflite)["image_size"]))
    assert cosine_distances(embeddings, expected).max() < TOLERANCE
    assert manifest_of(tflite)["parity"]["max_cosine_distance"]["model.tflite"] < TOLERANCE


@pytest.mark.slow
def test_an_int8_export_prints_and_stores_mar_at_10_of_both_and_their_top_10_agreement(int8, tflite, run_dir):
    out, printed = int8
    costs = manifest_of(out)["quantisation"]
    assert costs["precision"] == "int8" and costs["calibration_images"] == 16
    assert costs["images"] == sum(len(part.image_ids) for part in final_sets(run_dir))
    assert costs["mar_at_10"]["float32"] == pytest.approx(json.loads((run_dir / "run.json").read_text())
                                                          ["final_scores"]["mar_at_10"])
    assert 0 <= costs["mar_at_10"]["quantised"] <= 1 and 0 <= costs["recall_at_10_against_float32"] <= 1
    assert manifest_of(out)["parity"]["tolerance"] is None  # measured, not checked
    assert (f"MAR@10 {costs['mar_at_10']['quantised']:.4f} ({costs['mar_at_10']['float32']:.4f} in float32), "
            f"recall@10 against float32 {costs['recall_at_10_against_float32']:.4f}") in printed
    assert (out / "model.tflite").stat().st_size < (tflite / "model.tflite").stat().st_size / 3  # 8 bits, not 32


@pytest.mark.slow
def test_the_keras_export_loads_in_safe_mode_and_embeds_as_the_run_did(keras_export, run_dir, demo_images):
    encoded, expected = final_split_images(run_dir, demo_images)
    model = keras.saving.load_model(keras_export / "model.keras", safe_mode=True)
    embeddings = np.asarray(model(prepared(encoded, model.input_shape[1]), training=False))
    assert cosine_distances(embeddings, expected).max() < TOLERANCE


@pytest.mark.slow
def test_export_json_lists_every_file_written_with_its_sha256_and_the_run_it_came_from(
        savedmodel, tflite, int8, keras_export, run_dir):
    summary = json.loads((run_dir / "run.json").read_text())
    for out in (savedmodel, tflite, int8[0], keras_export):
        manifest = manifest_of(out)
        written = {path.relative_to(out).as_posix() for path in out.rglob("*")
                   if path.is_file() and not path.name.startswith(".") and path.name != "export.json"}
        if manifest["format"] == "savedmodel":
            written = {name for name in written if name.startswith("2/")}  # version 1 was there before
        assert set(manifest["files"]) == written
        assert all(sha256_file(out / name) == digest for name, digest in manifest["files"].items())
        assert manifest["final_model_sha256"] == summary["final_model_sha256"]
        assert manifest["test_time_augmentation"] == "six_views" and manifest["embedding_dim"] == 16
        assert manifest["retrieval"]["whitening"]["dimensions"] == 8
        assert manifest["files"][manifest["whitening"]] == summary["whitening_sha256"]


@pytest.mark.slow
def test_a_savedmodel_export_adds_the_next_version_and_keeps_the_earlier_one(savedmodel):
    assert manifest_of(savedmodel)["version"] == 2
    assert (savedmodel / "1" / "saved_model.pb").read_bytes() == b"an earlier version"
    assert (savedmodel / "2" / "assets.extra" / "whitening.npz").is_file()


@pytest.mark.slow
def test_an_existing_export_is_kept_without_force_and_a_folder_holds_one_format(capsys, keras_export, run_dir):
    assert "model.keras exists already; give --force" in refused(
        capsys, "export", run_dir, "--format", "keras", "--out", keras_export)
    assert "holds a keras export" in refused(capsys, "export", run_dir, "--format", "tflite", "--out", keras_export)


@pytest.mark.slow
def test_an_export_that_breaks_parity_fails_and_leaves_the_previous_export_as_it_was(capsys, keras_export, run_dir,
                                                                                     monkeypatch):
    before = {path.name: sha256_file(path) for path in keras_export.iterdir() if path.is_file()}
    shifted = FinalSplit.vectors_of
    monkeypatch.setattr(FinalSplit, "vectors_of", lambda self, ids: np.roll(shifted(self, ids), 1, axis=1))
    message = refused(capsys, "export", run_dir, "--format", "keras", "--out", keras_export, "--force")
    assert message.startswith("model.keras: embeds") and "nothing was written" in message
    assert {path.name: sha256_file(path) for path in keras_export.iterdir() if path.is_file()} == before
    assert not list(keras_export.glob(".export-*"))


def test_a_folder_that_is_not_a_finished_run_is_refused_in_one_line(capsys, tmp_path):
    (tmp_path / "not-a-run").mkdir()
    message = refused(capsys, "export", tmp_path / "not-a-run", "--format", "keras", "--out", tmp_path / "out")
    assert "not a run folder" in message
    assert not (tmp_path / "out").exists()


def test_quantising_anything_but_a_tflite_export_is_refused(capsys, tmp_path):
    message = refused(capsys, "export", tmp_path, "--format", "keras", "--quantize", "int8", "--out", tmp_path / "out")
    assert "only a tflite export is quantised" in message
