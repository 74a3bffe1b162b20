"""Ingestion writes shards whose records give back exactly what went in."""

import json
import os

from conftest import TINY_SHARD, read_records
from tfrecords.files import sha256_file
from tfrecords.ingest import ingest
from tfrecords.manifest import ImageManifest, read_manifest
from tfrecords.options import IngestOptions
from tfrecords.splits import SPLITS


def test_records_give_back_the_original_bytes_and_labels(demo_images, ingested):
    manifest = read_manifest(ingested, ImageManifest)
    product_names = {number: name for name, number in manifest.products.items()}
    category_names = {number: name for name, number in manifest.categories.items()}
    seen = set()
    for split in SPLITS:
        for record in read_records(ingested, split):
            image_id = record["image/id"].decode()
            source = demo_images / image_id
            assert record["image/encoded"] == source.read_bytes(), image_id  # not re-encoded
            category, product, _ = image_id.split("/")
            assert product_names[record["product/id"]] == product
            assert category_names[record["category/id"]] == category
            assert record["split"].decode() == split
            assert record["image/format"].decode() == ("png" if image_id.endswith(".png") else "jpeg")
            seen.add(image_id)
    assert seen == {p.relative_to(demo_images).as_posix() for p in demo_images.rglob("*.*")}


def test_manifest_counts_shards_and_digests_match_the_files(ingested):
    manifest = read_manifest(ingested, ImageManifest)
    assert manifest.schema_version == 1 and manifest.kind == "images"
    assert sum(manifest.counts.values()) == 24 * 4
    assert manifest.counts["val_query"] > 0 and manifest.counts["test_query"] > 0
    assert manifest.categories == {"bottle": 0, "box": 1, "can": 2}
    assert len(manifest.products) == 24 and manifest.skipped == []
    for shard in manifest.shards:
        path = ingested / shard.file
        assert shard.sha256 == sha256_file(path) and shard.bytes == path.stat().st_size
        assert shard.file.startswith(f"{shard.split}-")
    for split in SPLITS:
        shards = manifest.shards_of(split)
        assert sum(s.records for s in shards) == manifest.counts[split]
        assert [s.file for s in shards] == [f"{split}-{i:05d}-of-{len(shards):05d}.tfrecord" for i in range(len(shards))]


def test_shards_stay_near_the_target_size(ingested):
    manifest = read_manifest(ingested, ImageManifest)
    train = manifest.shards_of("train")
    assert len(train) > 3
    for shard in train:
        assert shard.bytes <= TINY_SHARD or shard.records == 1
    assert sum(s.bytes for s in train) > 0.7 * TINY_SHARD * len(train)  # and near it, not far below


def test_parallel_ingestion_writes_the_same_shards_as_serial(demo_images, ingested, tmp_path):
    options = IngestOptions(shard_size=TINY_SHARD, val_fraction=0.2, test_fraction=0.2, workers=2)
    parallel = ingest(demo_images, tmp_path / "parallel", options, progress=False)
    serial = read_manifest(ingested, ImageManifest)
    assert [(s.file, s.sha256) for s in parallel.shards] == [(s.file, s.sha256) for s in serial.shards]


def test_ingesting_again_rewrites_nothing(demo_images, tmp_path):
    options = IngestOptions(shard_size=TINY_SHARD, workers=1)
    ingest(demo_images, tmp_path / "out", options, progress=False)
    stamps = {p.name: os.stat(p).st_mtime_ns for p in (tmp_path / "out").glob("*.tfrecord")}
    ingest(demo_images, tmp_path / "out", options, progress=False)
    assert {p.name: os.stat(p).st_mtime_ns for p in (tmp_path / "out").glob("*.tfrecord")} == stamps


def test_new_options_replace_old_shards_and_leave_no_strays(demo_images, tmp_path):
    out = tmp_path / "out"
    ingest(demo_images, out, IngestOptions(shard_size=TINY_SHARD, workers=1), progress=False)
    manifest = ingest(demo_images, out, IngestOptions(shard_size=10**9, workers=1), progress=False)
    assert sorted(p.name for p in out.glob("*.tfrecord")) == sorted(s.file for s in manifest.shards)
    assert json.loads((out / "manifest.json").read_text())["options"]["shard_size"] == 10**9
