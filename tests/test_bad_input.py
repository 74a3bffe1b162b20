"""Bad images are skipped and listed (or fail in strict mode); bad shards are named."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import image_bytes, read_records, write_csv, write_image
from tfrecords.errors import ImageError, ShardIntegrityError
from tfrecords.ingest import ingest, summary
from tfrecords.manifest import ImageManifest, read_manifest, verify_shards
from tfrecords.options import IngestOptions, ReadOptions
from tfrecords.reader import read_images

ALL_TRAIN = dict(val_fraction=0.0, test_fraction=0.0, workers=1)


def folder_with_bad_images(root):
    good = image_bytes()
    write_image(root / "p1" / "good.jpg", good)
    write_image(root / "p1" / "truncated.jpg", good[: len(good) // 2])
    write_image(root / "p1" / "garbage.jpg", b"\xff\xd8\xff" + bytes(range(256)) * 4)
    write_image(root / "p1" / "empty.jpg", b"")
    write_image(root / "p1" / "animation.gif", image_bytes("GIF"))
    write_image(root / "p1" / "notes.txt", b"not an image")
    return root


def test_corrupt_files_are_skipped_counted_and_listed(tmp_path):
    source = folder_with_bad_images(tmp_path / "src")
    manifest = ingest(source, tmp_path / "out", IngestOptions(**ALL_TRAIN), progress=False)
    reasons = {item.image_id: item.reason for item in manifest.skipped}
    assert set(reasons) == {"p1/truncated.jpg", "p1/garbage.jpg", "p1/empty.jpg", "p1/animation.gif", "p1/notes.txt"}
    assert reasons["p1/empty.jpg"] == "empty file (0 bytes)"
    assert reasons["p1/truncated.jpg"].startswith("cannot decode jpeg")
    assert reasons["p1/animation.gif"].startswith("not a JPEG or PNG")
    assert manifest.counts["train"] == 1
    assert [r["image/id"].decode() for r in read_records(tmp_path / "out", "train")] == ["p1/good.jpg"]
    assert "skipped 5 file(s)" in summary(manifest)


def test_strict_mode_fails_naming_the_file(tmp_path):
    source = folder_with_bad_images(tmp_path / "src")
    with pytest.raises(ImageError, match="truncated.jpg|garbage.jpg|empty.jpg|animation.gif|notes.txt"):
        ingest(source, tmp_path / "out", IngestOptions(strict=True, **ALL_TRAIN), progress=False)
    assert list((tmp_path / "out").glob("*.tfrecord")) == []


def test_missing_file_named_by_csv_is_skipped_and_listed(tmp_path):
    write_image(tmp_path / "a.jpg")
    source = write_csv(tmp_path / "list.csv", [{"path": "a.jpg", "product_id": "p"}, {"path": "gone.jpg", "product_id": "p"}])
    manifest = ingest(source, tmp_path / "out", IngestOptions(**ALL_TRAIN), progress=False)
    assert [(s.image_id, s.reason) for s in manifest.skipped] == [("gone.jpg", "missing file")]


def test_image_over_the_pixel_limit_is_skipped(tmp_path):
    write_image(tmp_path / "src" / "p" / "big.png", image_bytes("PNG", size=(300, 200)))
    manifest = ingest(tmp_path / "src", tmp_path / "out", IngestOptions(max_image_pixels=10_000, **ALL_TRAIN), progress=False)
    assert manifest.skipped[0].reason.startswith("too large: 300x200 pixels")


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "P"])
def test_png_with_alpha_grey_or_palette_is_read_as_rgb(tmp_path, mode):
    write_image(tmp_path / "src" / "p" / "x.png", image_bytes("PNG", mode=mode, size=(20, 10)))
    ingest(tmp_path / "src", tmp_path / "out", IngestOptions(**ALL_TRAIN), progress=False)
    (element,) = read_images(tmp_path / "out", "train", ReadOptions(image_size=16)).as_numpy_iterator()
    assert element["image"].shape == (16, 16, 3)
    assert element["image"].dtype == np.float32


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "delete"])
def test_damaged_shard_is_named_by_verify_and_by_the_reader(ingested, tmp_path, damage):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(ingested, data)
    victim = read_manifest(data, ImageManifest).shards_of("train")[1]
    path = data / victim.file
    content = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(content[:-100]))
    elif damage == "flip a byte":
        content[len(content) // 2] ^= 0x01
        path.write_bytes(bytes(content))
    else:
        path.unlink()
    with pytest.raises(ShardIntegrityError, match=victim.file):
        verify_shards(data, read_manifest(data, ImageManifest).shards)
    with pytest.raises(ShardIntegrityError, match=victim.file):
        read_images(data, "train", ReadOptions(image_size=16))
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(data)], capture_output=True, text=True)
    assert result.returncode == 2
    assert victim.file in result.stderr and "Traceback" not in result.stderr


def test_cli_user_errors_print_one_message_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "ingest", str(tmp_path / "missing"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'missing'}: no such file or folder; give a CSV file or an image folder"
    bad_option = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "ingest", str(tmp_path), str(tmp_path / "o"), "--val-fraction", "0.7", "--test-fraction", "0.5"],
        capture_output=True,
        text=True,
    )
    assert bad_option.returncode == 2
    assert "val_fraction + test_fraction = 1.2" in bad_option.stderr and "Traceback" not in bad_option.stderr
