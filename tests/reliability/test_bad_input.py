"""Bad input, at the user's level: every case goes through `pvs` (in this process) and
gives one clear error (exit status 2, one `error:` message naming the file, field or
row and saying how to fix it, no traceback) or, where the input is acceptable, a
documented behaviour (skipped and listed in the manifest, a line in the summary).
A refused command leaves an existing data or run folder as it was. RELIABILITY.md
lists the cases and their messages."""

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO, image_bytes, write_csv, write_image
from PIL import Image

from pipeline.cli import EXIT_USER_ERROR, main
from tfrecords.manifest import ImageManifest, read_manifest

ALL_TRAIN = ("--val-fraction", "0", "--test-fraction", "0")
QUIET = ("--workers", "1", "--no-progress")


def refused(capsys, *argv) -> str:
    """Run `pvs ARGV`; check it fails with one user error and no traceback; the message."""
    code = main([str(arg) for arg in argv])
    printed = capsys.readouterr()
    assert code == EXIT_USER_ERROR, printed.out + printed.err
    assert printed.err.startswith("error: ") and printed.err.count("error: ") == 1, printed.err
    assert "Traceback" not in printed.err
    return printed.err.removeprefix("error: ").rstrip()


def accepted(capsys, *argv) -> str:
    """Run `pvs ARGV`; check it succeeds; what it printed."""
    code = main([str(arg) for arg in argv])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    return printed.out


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under `folder` with its mtime and sha256."""
    return {
        path.relative_to(folder).as_posix(): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def data_dir(ingested, tmp_path) -> Path:
    """A folder ingested before, that a refused `pvs ingest` into it must leave alone."""
    return Path(shutil.copytree(ingested, tmp_path / "data"))


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run folder with results, that a refused `pvs run` must leave alone."""
    folder = tmp_path / "run"
    (folder / "phases" / "01-top-0123").mkdir(parents=True)
    (folder / "scores.csv").write_text("phase,epoch,loss,mar_at_10\nbaseline,0,,0.1\ntop,1,2.3,0.2\n")
    (folder / "run.json").write_text("{}\n")
    (folder / "phases" / "01-top-0123" / "model.keras").write_bytes(os.urandom(256))
    return folder


# --- Config: `pvs run --config F`, refused before Prefect starts -------------------------
# Before Prefect is even imported, too: its logging set-up (dictConfig) closes TensorFlow's
# absl handler, whose stream is pytest's capture when TensorFlow was imported at collection,
# so an in-process `pvs run` that gets as far as Prefect must not run under capsys.

def demo_config(**edits) -> dict:
    """configs/demo.yaml as a dict; `edits` maps a path ('phases.1.unfreeze_from') to a value."""
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    for dotted, value in edits.items():
        *parents, last = [int(key) if key.isdigit() else key for key in dotted.split(".")]
        node = config
        for key in parents:
            node = node[key]
        node[last] = value
    return config


def weights_of_another_model(path: Path) -> Path:
    import keras

    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(path)
    return path


CONFIG_CASES = [
    pytest.param({"data.colour": "red"},
                 "data.colour: unknown key; the keys here are source, image_size, batch_size, shuffle_buffer, view_shuffle_buffer, ingest",
                 id="unknown key"),
    pytest.param({"data.batch_size": "many"},
                 "data.batch_size: Input should be a valid integer, unable to parse string as an integer",
                 id="wrong type"),
    pytest.param({"phases.0.learning_rate": -0.001},
                 "phases.top.learning_rate: Input should be greater than 0", id="negative learning rate"),
    pytest.param({"phases": []}, "phases: List should have at least 1 item after validation, not 0",
                 id="empty phase list"),
    pytest.param({"phases.1.unfreeze_from": "block9a"},
                 "phases.block7a.unfreeze_from: 'block9a' starts no layer of EfficientNetLite0; give one of stem, "
                 "block1a, block2a, block2b, block3a, block3b, block4a, block4b, block4c, block5a, block5b, block5c, "
                 "block6a, block6b, block6c, block6d, block7a, top (or a layer name inside one, e.g. "
                 "block7a_ and a layer's name)",
                 id="unknown unfreeze_from block"),
    pytest.param({"phases.3.margin_schedule.1.epochs": 0},
                 "phases.siamese.margin_schedule.1.epochs: Input should be greater than 0",
                 id="margin schedule step of zero epochs"),
    pytest.param({"data.image_size": 16}, "data.image_size: Input should be greater than or equal to 32",
                 id="image size below the model's minimum"),
]


@pytest.mark.parametrize(("edits", "problem"), CONFIG_CASES)
def test_invalid_config_is_one_error_naming_the_field_and_the_run_folder_is_untouched(
    capsys, tmp_path, ingested, run_dir, edits, problem
):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(demo_config(**{"data.source": str(ingested), **edits})))
    before = snapshot(run_dir)
    message = refused(capsys, "run", "--config", config, "--run-dir", run_dir)
    assert message == f"{config}: invalid config\n  {problem}"
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("weights", ["missing", "of another model"])
def test_weights_file_that_is_missing_or_does_not_fit_is_refused_before_the_run_starts(
    capsys, tmp_path, ingested, run_dir, weights
):
    path = tmp_path / "backbone.weights.h5"
    if weights == "of another model":
        weights_of_another_model(path)
    config = tmp_path / "weights.yaml"
    config.write_text(yaml.safe_dump(demo_config(**{"data.source": str(ingested), "model.weights": str(path)})))
    before = snapshot(run_dir)
    message = refused(capsys, "run", "--config", config, "--run-dir", run_dir)
    if weights == "missing":
        assert message == f"{config}: model.weights: {str(path)!r} is neither 'imagenet', 'none' nor an existing weights file"
    else:
        assert message.startswith(f"{config}: model.weights: {path} does not fit EfficientNetLite0 without its top (")
        assert message.endswith("give a .weights.h5 file saved from EfficientNetLite0(include_top=False), or 'imagenet' or 'none'")
        assert "\n" not in message and len(message) < 400
    assert snapshot(run_dir) == before


def test_yaml_with_a_python_tag_is_refused_and_nothing_runs(capsys, tmp_path):
    witness = tmp_path / "ran"
    config = tmp_path / "tagged.yaml"
    config.write_text(f"data: !!python/object/apply:os.system ['touch {witness}']\n")
    message = refused(capsys, "run", "--config", config)
    assert message == (
        f"{config}: line 1, column 7: not valid YAML for a config: could not determine a constructor for the tag "
        "'!!python/object/apply:os.system'; configs are read with a safe loader, which takes plain values, lists "
        "and mappings only: remove the tag"
    )
    assert not witness.exists()


def test_data_source_without_val_queries_is_refused_before_the_run_starts(capsys, tmp_path, run_dir):
    for product in range(8):
        write_image(tmp_path / "single" / f"p{product}" / "only.jpg", image_bytes(size=(40, 32)))
    config = tmp_path / "single.yaml"
    config.write_text(yaml.safe_dump(demo_config(**{"data.source": str(tmp_path / "single")})))
    before = snapshot(run_dir)
    message = refused(capsys, "run", "--config", config, "--run-dir", run_dir)
    assert message.startswith(f"{config}: data.source {tmp_path / 'single'} gives no val query image (")
    assert message.endswith(
        "a val product needs 2 or more images to give one), so evaluation.split 'val' cannot be scored; give val "
        "products more images, raise data.ingest.val_fraction, or set evaluation.split: test"
    )
    assert snapshot(run_dir) == before


def test_missing_data_source_is_refused_before_the_run_starts(capsys, tmp_path):
    config = tmp_path / "nowhere.yaml"
    config.write_text(yaml.safe_dump(demo_config(**{"data.source": str(tmp_path / "nowhere")})))
    message = refused(capsys, "run", "--config", config, "--run-dir", tmp_path / "run")
    assert message == (
        f"{config}: data.source: {tmp_path / 'nowhere'}: no such file or folder; give a CSV file or an image folder"
    )
    assert not (tmp_path / "run").exists()


# --- Data: `pvs ingest SOURCE OUT` ------------------------------------------------------------

def large_png() -> bytes:
    """65.6 megapixels (over the 64 MP limit) of one grey: 80 kB as a PNG, 197 MB decoded as RGB."""
    buffer = io.BytesIO()
    Image.new("L", (8100, 8100), 128).save(buffer, format="PNG")
    return buffer.getvalue()


UNUSABLE_IMAGES = [
    pytest.param("corrupt.jpg", lambda: image_bytes(size=(48, 32))[:300], "cannot decode jpeg", id="corrupt jpeg"),
    pytest.param("empty.jpg", lambda: b"", "empty file (0 bytes)", id="zero-byte file"),
    pytest.param("huge.png", large_png, "too large: 8100x8100 pixels is over the limit of 64000000", id="huge image"),
]


@pytest.mark.parametrize(("name", "content", "reason"), UNUSABLE_IMAGES)
def test_unusable_image_is_skipped_and_listed_and_the_rest_ingested(capsys, tmp_path, name, content, reason):
    source, out = tmp_path / "src", tmp_path / "out"
    for good in ("a.jpg", "b.jpg"):
        write_image(source / "p1" / good, image_bytes(size=(48, 32)))
    write_image(source / "p1" / name, content())
    printed = accepted(capsys, "ingest", source, out, *ALL_TRAIN, *QUIET)
    manifest = read_manifest(out, ImageManifest)
    assert manifest.counts["train"] == 2
    ((image_id, why),) = [(item.image_id, item.reason) for item in manifest.skipped]
    assert image_id == f"p1/{name}" and why.startswith(reason)
    assert f"skipped 1 file(s) (1 {reason.split(':')[0]}); listed in manifest.json" in printed


def test_corrupt_jpeg_in_strict_mode_is_one_error_naming_the_file(capsys, tmp_path):
    write_image(tmp_path / "src" / "p1" / "a.jpg", image_bytes(size=(48, 32)))
    write_image(tmp_path / "src" / "p1" / "corrupt.jpg", image_bytes(size=(48, 32))[:300])
    message = refused(capsys, "ingest", tmp_path / "src", tmp_path / "out", "--strict", *ALL_TRAIN, *QUIET)
    assert message.startswith(f"{tmp_path / 'src' / 'p1' / 'corrupt.jpg'}: cannot decode jpeg")
    assert message.endswith("(run without --strict to skip it)")


@pytest.mark.parametrize("mode", [pytest.param("RGBA", id="png with alpha"), pytest.param("L", id="grayscale png")])
def test_png_with_alpha_or_grey_is_ingested_and_read_as_rgb(capsys, tmp_path, mode):
    source, out = tmp_path / "src", tmp_path / "out"
    write_image(source / "p1" / "a.jpg", image_bytes(size=(48, 32)))
    write_image(source / "p1" / "b.png", image_bytes("PNG", mode=mode, size=(48, 32)))
    assert "2 images of 1 products" in accepted(capsys, "ingest", source, out, *ALL_TRAIN, *QUIET)
    assert read_manifest(out, ImageManifest).skipped == []
    accepted(capsys, "preview", out, "--image-size", "32")  # the reader decodes both to RGB for the figure


def rows(*items: tuple) -> list[dict]:
    columns = ("path", "product_id", "category", "split")
    return [dict(zip(columns, item)) for item in items]


def refused_source(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A source that ingestion refuses, and the message it must give."""
    csv_path = tmp_path / "src" / "list.csv"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(tmp_path / "src" / name, image_bytes(size=(40, 32)))
    if case == "csv with missing columns":
        write_csv(csv_path, [{"path": "a.jpg", "sku": "p1"}])
        return csv_path, (f"{csv_path}: missing column(s) product_id; found path, sku. "
                          "Needed: path, product_id (optional: category, split)")
    if case == "duplicate rows":
        write_csv(csv_path, rows(("a.jpg", "p1"), ("a.jpg", "p1"), ("b.jpg", "p1")), ["path", "product_id"])
        return csv_path, (f"{csv_path}: row 3 repeats the image 'a.jpg' of row 2; each image may be listed once: "
                          "delete one of the two rows")
    if case == "product in train and val":
        write_csv(csv_path, rows(("a.jpg", "p1", "", "train"), ("b.jpg", "p1", "", "val"), ("c.jpg", "p1", "", "val")),
                  ["path", "product_id", "split"])
        return csv_path, (f"{csv_path}: product 'p1' is in 'train' (row 2) and in 'val' (row 3); a product must stay "
                          "in one split, or evaluation would search for images the model was trained on: give all its "
                          "rows one split")
    if case == "val product with one image":
        write_csv(csv_path, rows(("a.jpg", "p1", "", "train"), ("b.jpg", "p1", "", "train"), ("c.jpg", "p2", "", "val")),
                  ["path", "product_id", "split"])
        return csv_path, (f"{csv_path}: row 4: product 'p2' has one image in split 'val', so it cannot be both a "
                          "query and an index item; give it more images, move it to train, or mark it val_index to "
                          "keep it as a distractor")
    assert case == "file name not utf-8"
    folder = tmp_path / "folder"
    write_image(folder / "p1" / "a.jpg", image_bytes(size=(40, 32)))
    try:
        with open(os.fsencode(folder / "p1") + b"/caf\xe9.jpg", "wb") as handle:  # Latin-1, not UTF-8
            handle.write(image_bytes(size=(40, 32)))
    except OSError:
        pytest.skip("this file system refuses file names that are not UTF-8")
    return folder, (f"{folder}: 1 file name(s) are not UTF-8 (p1/caf\\xe9.jpg); image ids are UTF-8 text in records "
                    f"and submissions: rename them, e.g. `convmv -r -f latin1 -t utf-8 --notest {folder}`")


@pytest.mark.parametrize(
    "case",
    ["csv with missing columns", "duplicate rows", "product in train and val", "val product with one image",
     "file name not utf-8"],
)
def test_bad_source_is_one_error_naming_the_file_and_row_and_the_data_folder_is_untouched(
    capsys, tmp_path, data_dir, case
):
    source, expected = refused_source(tmp_path, case)
    before = snapshot(data_dir)
    assert refused(capsys, "ingest", source, data_dir, *QUIET) == expected
    assert snapshot(data_dir) == before


def test_output_folder_that_is_a_file_is_refused(capsys, tmp_path):
    write_image(tmp_path / "src" / "p1" / "a.jpg")
    (tmp_path / "out").write_text("my notes")
    message = refused(capsys, "ingest", tmp_path / "src", tmp_path / "out", *QUIET)
    assert message == f"{tmp_path / 'out'}: exists and is not a folder; give a folder for the shards (new or ingested before)"
    assert (tmp_path / "out").read_text() == "my notes"


def test_eval_split_of_single_image_products_is_ingested_with_a_warning(capsys, tmp_path):
    for product in range(6):  # images that differ: a copy in two splits is refused
        only = image_bytes(size=(40, 32), colour=(200, 10 * product, 60))
        write_image(tmp_path / "src" / f"p{product}" / "only.jpg", only)
    printed = accepted(capsys, "ingest", tmp_path / "src", tmp_path / "out", "--val-fraction", "0.5",
                       "--test-fraction", "0", *QUIET)
    manifest = read_manifest(tmp_path / "out", ImageManifest)
    assert manifest.counts["val_index"] > 0 and manifest.counts["val_query"] == 0
    assert f"{manifest.counts['val_index']} single-image eval products kept as index distractors" in printed
    assert ("warning: val has index images but no query (no val product has 2 or more images); "
            "a run cannot score val") in printed


def test_category_only_in_eval_is_allowed_and_listed(capsys, tmp_path):
    for number, name in enumerate(("s1.jpg", "s2.jpg", "s3.jpg", "b1.jpg", "b2.jpg")):
        write_image(tmp_path / "src" / name, image_bytes(size=(40, 32), colour=(200, 10 * number, 60)))
    csv_path = write_csv(tmp_path / "src" / "list.csv", rows(
        ("s1.jpg", "shoe1", "shoes", "train"), ("s2.jpg", "shoe1", "shoes", "train"),
        ("s3.jpg", "shoe2", "shoes", "train"), ("b1.jpg", "bag1", "bags", "val"), ("b2.jpg", "bag1", "bags", "val"),
    ))
    printed = accepted(capsys, "ingest", csv_path, tmp_path / "out", *QUIET)
    assert "1 category only in val/test, never trained on (allowed: retrieval is open-set): bags" in printed
    manifest = read_manifest(tmp_path / "out", ImageManifest)
    assert manifest.eval_only_categories == ["bags"]
    assert (manifest.counts["val_query"], manifest.counts["val_index"]) == (1, 1)


# --- Paths given to the commands ------------------------------------------------------------

MISSING_PATHS = [
    pytest.param(("ingest", "{missing}", "{tmp}/out"), "{missing}: no such file or folder; give a CSV file or an image folder",
                 id="ingest"),
    pytest.param(("verify", "{missing}"), "{missing}: no such folder; give a folder written by `pvs ingest`", id="verify"),
    pytest.param(("preview", "{missing}"), "{missing}: no such folder; give a folder written by `pvs ingest`",
                 id="preview"),
    pytest.param(("run", "--config", "{missing}"), "{missing}: no such config file or library config; `pvs configs` lists the library",
                 id="run --config"),
    pytest.param(("report", "{missing}"), "{missing}: no such folder; give a run folder written by `pvs run` (e.g. runs/demo)",
                 id="report"),
    pytest.param(("search", "--run", "{missing}", "{tmp}"),
                 "{missing}: no such folder; give a run folder written by `pvs run` (e.g. runs/demo)", id="search --run"),
]


@pytest.mark.parametrize(("argv", "expected"), MISSING_PATHS)
def test_missing_path_is_one_error_naming_it(capsys, tmp_path, argv, expected):
    names = {"missing": tmp_path / "missing", "tmp": tmp_path}
    assert refused(capsys, *(arg.format(**names) for arg in argv)) == expected.format(**names)


@pytest.mark.parametrize("command", ["report", "verify"])
def test_folder_that_is_not_a_run_or_data_folder_is_one_error_saying_what_it_should_be(capsys, tmp_path, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    expected = {
        "report": f"{empty / 'scores.csv'}: no such file; is {empty} a run folder (written by `pvs run`)?",
        "verify": f"{empty / 'manifest.json'}: no manifest; is {empty} a folder written by `pvs ingest`?",
    }
    assert refused(capsys, command, empty) == expected[command]
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("state", ["killed before its extraction", "embeddings deleted"])
def test_search_on_a_run_without_embeddings_is_one_error_saying_how_to_finish_it_and_writes_nothing(
    capsys, tmp_path, run_dir, state
):
    record = {"config_file": "configs/demo.yaml", "overrides": {}, "config": {}}
    (run_dir / "run-config.yaml").write_text(yaml.safe_dump(record))
    if state == "killed before its extraction":
        (run_dir / "run.json").unlink()
        problem = "the run has not finished its extraction (run.json, written at its end, is missing or incomplete)"
    else:
        embeddings = run_dir / "extraction-0123" / "embeddings"  # deleted, as by a clean-up
        (run_dir / "run.json").write_text(json.dumps({
            "final_model": str(run_dir / "phases" / "01-top-0123" / "model.keras"), "final_model_sha256": "0" * 64,
            "embeddings": str(embeddings), "final_split": "test",
        }))
        problem = f"the run's embeddings {embeddings} are missing, so the run has not finished its extraction"
    photo = write_image(tmp_path / "photo.jpg")
    before = snapshot(run_dir)
    message = refused(capsys, "search", "--run", run_dir, photo, "--sheet", tmp_path / "sheet.png")
    finish = f"finish the run with `pvs run --config configs/demo.yaml --run-dir {run_dir}`"
    assert message == f"{run_dir}: {problem}; {finish}"
    assert snapshot(run_dir) == before
    assert not (tmp_path / "sheet.png").exists()
