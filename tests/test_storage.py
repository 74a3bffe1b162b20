"""Remote storage against real servers on 127.0.0.1, each test taking `bucket` for gs:// (a
Cloud Storage emulator) and for s3:// (moto's S3 server): run-folder mirrors pushed and
pulled, shards staged through the cache, remote sources, and the errors a missing bucket
or object gives. TensorFlow reads shards where they are from gs:// only (`read_shards: direct`)."""

import json
import os
import shutil
from pathlib import Path

import fsspec
import pytest

from pipeline.records import write_record
from pipeline.storage.remote import RemoteStorageError, download, holds, remote_listing
from pipeline.storage.run_store import RunRoot
from pipeline.storage.schemes import SCHEMES
from pipeline.storage.shard_cache import ShardCache, StorageSettings
from pipeline.storage.staging import check_locations, stage_file, stage_source
from tfrecords.manifest import ImageManifest, read_manifest


def settings(tmp_path: Path, cache_bytes: int | None = None) -> StorageSettings:
    return StorageSettings(tmp_path / "cache", cache_bytes, workers=4)


def bucket_files(url: str) -> dict[str, bytes]:
    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return {name[len(path) + 1:]: fs.cat_file(name) for name in fs.find(path)}


def upload_folder(folder: Path, url: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            fs.put_file(str(file), f"{path}/{file.relative_to(folder).as_posix()}")


def test_a_pushed_step_folder_is_pulled_on_another_machine_byte_for_byte(bucket, tmp_path):
    url = bucket.url("push-pull", "run")
    here = RunRoot(url, settings(tmp_path / "a"))
    step = here.local / "phases" / "01-top"
    (step / "checkpoints").mkdir(parents=True)
    (step / "checkpoints" / "epoch-0000.keras").write_bytes(os.urandom(300_000))
    (step / "model.keras").write_bytes(os.urandom(1000))
    write_record(step, "key-1", {"phase": "top"}, {"model": step / "model.keras"})

    assert here.push(step) == 3
    assert here.push(step) == 0  # nothing changed: nothing is copied again
    (here.local / "run.lock").touch()
    (here.local / "scores.csv").write_text("phase,epoch\n")
    here.push(here.local, recursive=False)
    assert "run.lock" not in bucket_files(url)  # the mirror's lock means nothing elsewhere

    there = RunRoot(url, settings(tmp_path / "b"))
    assert there.local != here.local
    assert there.pull_loose_files() == 1
    assert there.pull(there.local / "phases" / "01-top", "another key") == 3  # unfinished there: everything
    for file in step.rglob("*"):
        if file.is_file():
            assert (there.local / file.relative_to(here.local)).read_bytes() == file.read_bytes()


def test_pulling_a_finished_step_brings_only_what_its_record_lists(bucket, tmp_path):
    url = bucket.url("finished", "run")
    here = RunRoot(url, settings(tmp_path / "a"))
    step = here.local / "phases" / "01-top"
    (step / "checkpoints").mkdir(parents=True)
    (step / "checkpoints" / "epoch-0000.keras").write_bytes(b"checkpoint")
    (step / "model.keras").write_bytes(b"model")
    write_record(step, "key-1", {}, {"model": step / "model.keras"})
    here.push(step)

    there = RunRoot(url, settings(tmp_path / "b"))
    assert there.pull(there.local / "phases" / "01-top", "key-1") == 2  # the record and model.keras
    assert sorted(p.name for p in (there.local / "phases" / "01-top").rglob("*")) == ["model.keras", "result.json"]


def test_push_deletes_from_the_bucket_what_was_deleted_here(bucket, tmp_path):
    url = bucket.url("pruned", "run")
    root = RunRoot(url, settings(tmp_path))
    step = root.local / "phases" / "01-top" / "checkpoints"
    step.mkdir(parents=True)
    for epoch in range(3):
        (step / f"epoch-{epoch:04d}.keras").write_bytes(bytes([epoch]) * 10)
    root.push(root.local / "phases" / "01-top")
    (step / "epoch-0000.keras").unlink()  # pruned, as save_checkpoint does
    assert root.push(root.local / "phases" / "01-top") == 1
    assert sorted(bucket_files(url)) == ["phases/01-top/checkpoints/epoch-0001.keras",
                                         "phases/01-top/checkpoints/epoch-0002.keras"]


def test_shards_are_staged_through_the_cache_once_and_checked_against_the_manifest(bucket, ingested, tmp_path):
    url = bucket.url("staged", "data")
    upload_folder(ingested, url)
    manifest = read_manifest(ingested, ImageManifest)
    cache = ShardCache(settings(tmp_path))

    assert cache.stage(url, manifest.shards, tmp_path / "one") == len(manifest.shards)
    assert cache.stage(url, manifest.shards, tmp_path / "two") == 0  # another run: all from the cache
    for shard in manifest.shards:
        assert (tmp_path / "two" / shard.file).read_bytes() == (ingested / shard.file).read_bytes()
        assert os.path.samefile(tmp_path / "one" / shard.file, tmp_path / "two" / shard.file)  # links, not copies

    damaged = manifest.shards[0]
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{path}/{damaged.file}", b"x" * damaged.bytes)
    with pytest.raises(RemoteStorageError, match=f"{damaged.file}: sha256 .* its manifest says"):
        ShardCache(settings(tmp_path / "elsewhere")).stage(url, [damaged], tmp_path / "three")


def test_the_cache_evicts_the_least_recently_used_shards_beyond_its_size(bucket, ingested, tmp_path):
    url = bucket.url("evicted", "data")
    upload_folder(ingested, url)
    shards = read_manifest(ingested, ImageManifest).shards
    first, second = shards[:4], shards[4:8]
    limit = sum(shard.bytes for shard in second) + 1
    cache = ShardCache(settings(tmp_path, cache_bytes=limit))
    cache.stage(url, first, tmp_path / "first")
    cache.stage(url, second, tmp_path / "second")
    kept = {path.name for path in cache.folder.iterdir()}
    assert kept == {shard.sha256 for shard in second}  # the older ones went; the ones staged now stay
    assert all((tmp_path / "first" / shard.file).is_file() for shard in first)  # staged folders keep their links


def test_a_remote_csv_source_is_staged_with_the_images_it_names(bucket, demo_images, tmp_path):
    url = bucket.url("csv-source")
    images = sorted(path.relative_to(demo_images).as_posix() for path in demo_images.rglob("*.jpg"))[:6]
    fs, path = fsspec.core.url_to_fs(url)
    for name in images:
        fs.put_file(str(demo_images / name), f"{path}/{name}")
    rows = "path,product_id\n" + "".join(f"{name},{name.split('/')[1]}\n" for name in images)
    fs.pipe_file(f"{path}/products.csv", rows.encode())
    fs.pipe_file(f"{path}/not-named.jpg", b"not copied")

    staged = stage_source(f"{url}/products.csv", settings(tmp_path))
    copied = sorted(p.relative_to(staged.parent).as_posix() for p in staged.parent.rglob("*") if p.is_file())
    assert copied == sorted([*images, "products.csv"])

    fs.pipe_file(f"{path}/absolute.csv", b"path,product_id\ngs://other/a.jpg,p1\n")
    with pytest.raises(RemoteStorageError, match="relative to its own folder"):
        stage_source(f"{url}/absolute.csv", settings(tmp_path))
    fs.pipe_file(f"{path}/missing.csv", b"path,product_id\nnowhere/a.jpg,p1\n")
    with pytest.raises(RemoteStorageError, match="1 image.* not in .*nowhere/a.jpg"):
        stage_source(f"{url}/missing.csv", settings(tmp_path))


def test_a_missing_bucket_or_object_is_one_clear_error(bucket, tmp_path):
    with pytest.raises(RemoteStorageError, match=rf"^{bucket.scheme}://no-such-bucket: no such bucket"):
        RunRoot(f"{bucket.scheme}://no-such-bucket/runs/x", settings(tmp_path)).pull_loose_files()
    scheme = bucket.scheme
    with pytest.raises(RemoteStorageError, match=rf"^{scheme}://pvs-test/nothing/here.weights.h5: no such object"):
        stage_file(bucket.url("nothing", "here.weights.h5"), settings(tmp_path))
    with pytest.raises(RemoteStorageError, match=rf"^{scheme}://pvs-test/no-images: no such object"):
        stage_source(bucket.url("no-images"), settings(tmp_path))


def test_a_remote_file_is_downloaded_again_only_when_it_changed(bucket, tmp_path):
    url = bucket.url("weights", "backbone.weights.h5")
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(path, b"first")
    local, digest = stage_file(url, settings(tmp_path))
    assert local.read_bytes() == b"first"
    before = local.stat().st_mtime_ns
    assert stage_file(url, settings(tmp_path)) == (local, digest) and local.stat().st_mtime_ns == before
    fs.pipe_file(path, b"second")
    assert stage_file(url, settings(tmp_path))[0].read_bytes() == b"second"


def test_listing_names_objects_relative_to_the_folder(bucket, tmp_path):
    url = bucket.url("listing")
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{path}/a/b.txt", b"12345")
    listing = remote_listing(url)
    assert list(listing) == ["a/b.txt"] and listing["a/b.txt"]["size"] == 5
    json.dumps(listing)  # plain data
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_an_s3_object_written_in_parts_is_compared_by_the_sha256_stored_with_it(s3_server, tmp_path):
    """A multipart upload's ETag is not the file's MD5; pvs stores each file's sha256 with its
    upload (`schemes.S3`), and takes an object that has neither as different (copied again)."""
    url = s3_server.url("multipart")
    fs, path = fsspec.core.url_to_fs(url)
    file = tmp_path / "model.keras"
    file.write_bytes(os.urandom(11 << 20))
    fs.put_file(str(file), f"{path}/model.keras", chunksize=5 << 20)  # as another tool writes it: 3 parts
    entry = remote_listing(url)["model.keras"]
    assert entry["fingerprint"].endswith("-3") and not holds(file, f"{url}/model.keras", entry)
    assert download(f"{url}/model.keras", tmp_path / "copy", entry).read_bytes() == file.read_bytes()

    fs.put_file(str(file), f"{path}/model.keras", chunksize=5 << 20, **SCHEMES["s3"].upload_options(file))
    entry = remote_listing(url)["model.keras"]
    assert holds(file, f"{url}/model.keras", entry)
    file.write_bytes(os.urandom(11 << 20))  # the same size, other bytes
    assert not holds(file, f"{url}/model.keras", entry)


def ingest_in_a_flow(prefect_server, work, config) -> dict:
    """The pipeline's ingestion task, run in a flow on the session's Prefect server."""
    from prefect import flow
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipeline.tasks import ingest_data

    @flow(name="ingest-only")
    def ingest_only() -> dict:
        return ingest_data.with_options(refresh_cache=True)(work, config=config)

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        output = ingest_only()
        APILogWorker.drain_all(timeout=30)  # its logs sent now, not at exit, when the server is gone
    return output


def test_read_shards_direct_leaves_the_shards_in_the_bucket_and_stage_brings_them_back(
    storage_emulator, ingested, prefect_server, tmp_path
):
    from test_extraction import tiny_config

    from phases.config import PipelineConfig
    from pipeline.records import Work
    from tfrecords.reader import shard_paths

    url = storage_emulator.url("direct", "data")
    upload_folder(ingested, url)
    shards = read_manifest(ingested, ImageManifest).shards
    storage = {"cache_dir": str(tmp_path / "cache"), "workers": 4}
    direct = PipelineConfig.model_validate({**tiny_config(url), "storage": {**storage, "read_shards": "direct"}})
    folder = tmp_path / "run" / "data"

    output = ingest_in_a_flow(prefect_server, Work("ingest", "direct-" + tmp_path.name, folder), direct)
    assert sorted(path.name for path in folder.iterdir()) == ["manifest.json", "result.json", "shards-at.txt"]
    assert output.manifest == (folder / "manifest.json").resolve() and output.shards_at == (folder / "shards-at.txt").resolve()
    assert not (tmp_path / "cache" / "shards").exists() or not any((tmp_path / "cache" / "shards").iterdir())
    assert shard_paths(folder, "train") == [f"{url}/{shard.file}" for shard in shards if shard.split == "train"]

    # The same folder read with `stage` (the ingestion's key changes with read_shards): staged, no marker.
    staged = direct.model_copy(update={"storage": direct.storage.model_copy(update={"read_shards": "stage"})})
    ingest_in_a_flow(prefect_server, Work("ingest", "staged-" + tmp_path.name, folder), staged)
    assert not (folder / "shards-at.txt").exists()
    assert shard_paths(folder, "train") == [str(folder / shard.file) for shard in shards if shard.split == "train"]


def test_read_shards_direct_is_refused_for_a_source_that_is_not_an_ingested_bucket_folder(storage_emulator, ingested):
    from tfrecords.errors import UserError

    url = storage_emulator.url("direct-refused", "data")
    upload_folder(ingested, url)
    check_locations("", url, "none", "direct")  # an ingested folder in a bucket: fine
    csv = storage_emulator.url("direct-refused", "images", "products.csv")
    fs, path = fsspec.core.url_to_fs(csv)
    fs.pipe_file(path, b"image,product\n")
    for source in (str(ingested), csv):  # an ingested folder on this disk; images in a bucket
        with pytest.raises(UserError, match=f"data.source {source} is not one; ingest it into a bucket first"):
            check_locations("", source, "none", "direct")


def test_read_shards_direct_is_refused_for_an_s3_source_that_tensorflow_cannot_read(s3_server, ingested):
    from tfrecords.errors import UserError

    url = s3_server.url("direct-refused", "data")
    upload_folder(ingested, url)
    check_locations("", url, "none", "stage")  # staged: fine
    with pytest.raises(UserError, match="TensorFlow's own file systems, which read gs:// but not s3://"):
        check_locations("", url, "none", "direct")
