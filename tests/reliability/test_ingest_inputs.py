"""Inputs of `pvs ingest` that used to go wrong quietly: ids a submission could not hold,
one image under two names or in two splits, output files only their owner could read,
two ingestions into one folder, and an output folder inside its source. Each refused
case is one `error:` line and leaves the disk as it was (RELIABILITY.md, Bad input)."""

import csv
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, image_bytes, read_records, write_csv, write_image

from phases.submission import read_submission, submission_id, write_submission
from reliability.test_bad_input import (  # noqa: F401  (data_dir: a fixture)
    ALL_TRAIN,
    QUIET,
    accepted,
    data_dir,
    refused,
    snapshot,
)
from tfrecords import copies
from tfrecords.errors import FolderInUseError, SourceError
from tfrecords.ingest import LOCK_NAME, ingest
from tfrecords.locks import hold_lock
from tfrecords.manifest import ImageManifest, read_manifest
from tfrecords.options import IngestOptions
from tfrecords.sources import SourceImage

# File names a submission must carry: separators of its format, of CSV, and of lines.
AWKWARD_NAMES = ["shot 03.png", "a,b.jpg", 'say "cheese".jpg', "100% cotton.jpg", "café/ß 1.jpg", "日本.png",
                 "tab\there.jpg", "line\nbreak.jpg", "plain.jpg"]


def distinct_image(number: int) -> bytes:
    """A small JPEG whose bytes differ from every other number's (a copy across splits is refused)."""
    return image_bytes(size=(24, 16), colour=(200, 7 * number % 256, 60))


# --- Ids in submission.csv ----------------------------------------------------------------

def awkward_source(folder: Path) -> Path:
    """A CSV source in `folder` naming AWKWARD_NAMES, all of product p1: three test queries, the rest their index."""
    listed = []
    for number, name in enumerate(AWKWARD_NAMES):
        write_image(folder / "p1" / name, distinct_image(number))
        listed.append({"path": f"p1/{name}", "product_id": "p1", "split": "test_query" if number < 3 else "test_index"})
    return write_csv(folder / "list.csv", listed)


def test_awkward_image_ids_go_through_ingestion_and_back_out_of_a_submission(tmp_path):
    ingest(awkward_source(tmp_path / "src"), tmp_path / "data", IngestOptions(workers=1), progress=False)
    queries, index = ([record["image/id"].decode() for record in read_records(tmp_path / "data", split)]
                      for split in ("test_query", "test_index"))
    assert sorted(queries + index) == sorted(f"p1/{name}" for name in AWKWARD_NAMES)

    ranked = {query: index[::-1] for query in queries}
    written = write_submission(tmp_path / "submission.csv", ranked.items())
    assert read_submission(written) == ranked
    text = written.read_text(encoding="utf-8")
    assert text.startswith("query_id,index_ids\n") and text.count("\n") == 1 + len(queries)  # one line a query
    spelled = {token for row in list(csv.reader(io.StringIO(text)))[1:] for field in row for token in field.split(" ")}
    assert spelled == {"p1/shot%2003.png", "p1/100%25%20cotton.jpg", "p1/tab%09here.jpg", "p1/line%0Abreak.jpg",
                       "p1/café/ß%201.jpg", 'p1/say%20"cheese".jpg',  # the csv module quotes commas and quotes
                       "p1/a,b.jpg", "p1/日本.png", "p1/plain.jpg"}


def test_ordinary_ids_are_written_as_they_are_and_only_separators_are_percent_encoded():
    assert submission_id("shoes/p1/a-1_b~c.JPG") == "shoes/p1/a-1_b~c.JPG"
    assert submission_id("café/日本 1.png") == "café/日本%201.png"
    assert submission_id("100% cotton\n.jpg") == "100%25%20cotton%0A.jpg"
    assert submission_id("nbsp\u00a0and\u2028line") == "nbsp%C2%A0and%E2%80%A8line"  # split() splits on both


# --- One image twice ------------------------------------------------------------------------

@pytest.mark.parametrize("second", ["{folder}/a.jpg", "sub/../a.jpg", "link.jpg", "hard-link.jpg"])
def test_one_image_under_two_spellings_is_refused_as_a_repeated_row(capsys, tmp_path, data_dir, second):  # noqa: F811
    folder = tmp_path / "src"
    write_image(folder / "a.jpg", distinct_image(1))
    write_image(folder / "b.jpg", distinct_image(2))
    (folder / "sub").mkdir()
    (folder / "link.jpg").symlink_to(folder / "a.jpg")
    os.link(folder / "a.jpg", folder / "hard-link.jpg")
    spelled = second.format(folder=folder)
    csv_path = write_csv(folder / "list.csv", [
        {"path": path, "product_id": product} for path, product in (("a.jpg", "p1"), (spelled, "p2"), ("b.jpg", "p1"))
    ])
    before = snapshot(data_dir)
    assert refused(capsys, "ingest", csv_path, data_dir, *QUIET) == (
        f"{csv_path}: row 3 repeats the image 'a.jpg' of row 2 as {spelled!r} (the same file); "
        "each image may be listed once: delete one of the two rows")
    assert snapshot(data_dir) == before


def test_a_copy_in_train_and_test_is_refused_naming_both_files_and_their_splits(
    capsys, tmp_path, data_dir  # noqa: F811
):
    folder = tmp_path / "src"
    for number, name in enumerate(("a.jpg", "b.jpg", "c.jpg", "d.jpg")):
        write_image(folder / name, distinct_image(number))
    write_image(folder / "copy-of-a.jpg", distinct_image(0))
    csv_path = write_csv(folder / "list.csv", [
        {"path": name, "product_id": product, "split": split}
        for name, product, split in (("a.jpg", "p1", "train"), ("b.jpg", "p1", "train"), ("c.jpg", "p2", "test"),
                                     ("d.jpg", "p2", "test"), ("copy-of-a.jpg", "p2", "test"))
    ])
    before = snapshot(data_dir)
    assert refused(capsys, "ingest", csv_path, data_dir, *QUIET) == (
        f"{csv_path}: 'a.jpg' (row 2, train) and 'copy-of-a.jpg' (row 6, test_index) are the same file, byte for "
        "byte; a copy in two splits lets evaluation find an image the model trained on, or a query its own copy: "
        "delete one of the two, or put both in one product and split")
    assert snapshot(data_dir) == before


def test_a_query_with_a_copy_in_its_own_index_is_refused(capsys, tmp_path):
    """One product's two shots, byte for byte: one becomes the val query, the other its index item."""
    for product in range(3):
        write_image(tmp_path / "src" / f"p{product}" / "1.jpg", distinct_image(product))
        write_image(tmp_path / "src" / f"p{product}" / "2.jpg", distinct_image(product))
    message = refused(capsys, "ingest", tmp_path / "src", tmp_path / "out", "--val-fraction", "0.99",
                      "--test-fraction", "0", *QUIET)
    assert "are the same file, byte for byte (2 more such group(s));" in message
    assert "val_query" in message and "val_index" in message
    assert not (tmp_path / "out").exists()


def test_copies_within_one_split_are_ingested(capsys, tmp_path):
    """In train a copy weighs an image twice; nothing leaks, so it is accepted (and not looked for)."""
    for product in ("p1", "p2"):
        for shot in ("1.jpg", "2.jpg"):
            write_image(tmp_path / "src" / product / shot, distinct_image(0))
    printed = accepted(capsys, "ingest", tmp_path / "src", tmp_path / "out", *ALL_TRAIN, *QUIET)
    assert "4 images of 2 products" in printed


def test_a_file_is_read_whole_only_when_its_size_and_first_16_kib_meet_another_split(tmp_path, monkeypatch):
    heads, wholes = [], []
    head_digest, whole_digest = copies._head_digest, copies.sha256_file
    monkeypatch.setattr(copies, "_head_digest", lambda path: heads.append(path.name) or head_digest(path))
    monkeypatch.setattr(copies, "sha256_file", lambda path: wholes.append(path.name) or whole_digest(path))
    same, head = os.urandom(20_000), os.urandom(copies.HEAD_BYTES)
    contents = {  # name: (bytes, split)
        "train-copy.jpg": (same, "train"), "test-copy.jpg": (same, "test_index"),
        "train-same-size.jpg": (os.urandom(20_000), "train"), "test-same-size.jpg": (os.urandom(20_000), "test_query"),
        "train-same-head.jpg": (head + b"a" * 9, "train"), "test-same-head.jpg": (head + b"b" * 9, "test_index"),
        "test-own-size.jpg": (os.urandom(12_345), "test_index"),
    }
    images = []
    for name, (data, _) in contents.items():
        (tmp_path / name).write_bytes(data)
        images.append(SourceImage(path=tmp_path / name, image_id=name, product=name))
    with pytest.raises(SourceError, match=r"^S: 'train-copy.jpg' \(train\) and 'test-copy.jpg' \(test_index\) are"):
        copies.check_no_copies_across_splits(images, [split for _, split in contents.values()], 2, "S")
    assert sorted(heads) == sorted(name for name in contents if "own-size" not in name)
    assert sorted(wholes) == sorted(name for name in contents if "copy" in name or "same-head" in name)


# --- Permissions -------------------------------------------------------------------------------

@pytest.mark.parametrize(("umask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_ingested_files_and_folders_have_the_modes_the_umask_gives(tmp_path, umask, file_mode, folder_mode):
    write_image(tmp_path / "src" / "p1" / "a.jpg", distinct_image(1))
    previous = os.umask(umask)
    try:
        ingest(tmp_path / "src", tmp_path / "out", IngestOptions(val_fraction=0, test_fraction=0, workers=1),
               progress=False)
    finally:
        os.umask(previous)
    written = sorted(path for path in (tmp_path / "out").rglob("*"))
    assert {path.name for path in written} >= {"manifest.json", "train-00000-of-00001.tfrecord", ".parts", LOCK_NAME}
    modes = {path.relative_to(tmp_path).as_posix(): stat.S_IMODE(path.stat().st_mode) for path in written}
    assert modes == {name: folder_mode if (tmp_path / name).is_dir() else file_mode for name in modes}


# --- Two ingestions into one folder -------------------------------------------------------

def without_lock(files: dict) -> dict:
    """A snapshot less the lock file, which the test itself writes as it takes and gives back the lock."""
    return {name: entry for name, entry in files.items() if name != LOCK_NAME}


def test_a_second_ingestion_into_a_busy_folder_stops_at_once_and_writes_nothing(tmp_path, data_dir):  # noqa: F811
    """The test holds the folder as a running ingestion would; `pvs ingest` runs as a real process."""
    write_image(tmp_path / "src" / "p1" / "a.jpg", distinct_image(1))
    before = snapshot(data_dir)
    with hold_lock(data_dir / LOCK_NAME, FolderInUseError):
        held, holder = snapshot(data_dir), (data_dir / LOCK_NAME).read_text().strip()
        second = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "ingest", str(tmp_path / "src"), str(data_dir), *QUIET],
            cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        assert snapshot(data_dir) == held  # the lock file too: the second process wrote nothing at all
    assert second.returncode == 2, second.stderr
    assert second.stderr == (f"error: {data_dir}: another ingestion is using this folder ({holder}); wait for it to "
                             "end, or give this ingestion another output folder\n")
    assert holder.startswith(f"pid {os.getpid()} on ")
    assert without_lock(snapshot(data_dir)) == without_lock(before)


def test_the_lock_file_leaves_verify_and_the_manifest_alone(capsys, tmp_path):
    write_image(tmp_path / "src" / "p1" / "a.jpg", distinct_image(1))
    for _ in range(2):
        accepted(capsys, "ingest", tmp_path / "src", tmp_path / "out", *ALL_TRAIN, *QUIET)
    assert (tmp_path / "out" / LOCK_NAME).read_text() == ""  # released, and kept after a rerun
    shards = read_manifest(tmp_path / "out", ImageManifest).shards
    assert [shard.file for shard in shards] == ["train-00000-of-00001.tfrecord"]
    assert accepted(capsys, "verify", tmp_path / "out").startswith("ok: 1 shards, 1 records")


# --- Output folder and source -------------------------------------------------------------

@pytest.mark.parametrize("out", ["{src}/data", "{src}", "{link}/data", "{src}/p1/../data"])
def test_an_output_folder_inside_the_source_folder_is_refused_and_nothing_is_written(capsys, tmp_path, out):
    source = tmp_path / "images"
    write_image(source / "p1" / "a.jpg", distinct_image(1))
    (tmp_path / "link").symlink_to(source)
    out = out.format(src=source, link=tmp_path / "link")
    before = snapshot(source)
    message = refused(capsys, "ingest", source, out, *QUIET)
    if Path(out).resolve() == source.resolve():
        assert message == f"{out}: the output folder is the source folder itself; give a folder outside {source}"
    else:
        assert message == (f"{out}: the output folder is inside the source folder {source}, so a later ingestion of "
                           f"{source} would take the files written there for images; give a folder outside {source}")
    assert snapshot(source) == before and not (source / "data").exists()


def test_a_source_inside_the_output_folder_is_ingested(capsys, tmp_path):
    """Harmless: ingestion deletes only shard names (`*.tfrecord`) and temporaries at the top of its folder."""
    write_image(tmp_path / "data" / "images" / "p1" / "a.jpg", distinct_image(1))
    for _ in range(2):
        accepted(capsys, "ingest", tmp_path / "data" / "images", tmp_path / "data", *ALL_TRAIN, *QUIET)
    assert (tmp_path / "data" / "images" / "p1" / "a.jpg").read_bytes() == distinct_image(1)
