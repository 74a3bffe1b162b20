"""`pvs index build | add | update` and `pvs search --index`: a run's model searching a catalog.

The catalog is the tiny demo images (those the run trained on, in two sources of disjoint
products), so every index vector can be checked against the run's own extraction."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_search import run_dir  # noqa: F401  (the module's finished tiny run)

from pipeline.catalog.index import CatalogIndexError, CatalogIntegrityError, open_catalog, search_catalog
from tfrecords.embeddings import load_embeddings

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("catalog")]  # one worker builds the module's run and index once


def pvs(*arguments, server: str, check: bool = True) -> subprocess.CompletedProcess:
    """`pvs ARGUMENTS` in its own process, on the session's Prefect server."""
    environment = {**os.environ, "PREFECT_API_URL": server}
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, arguments)], capture_output=True,
                            text=True, timeout=600, env=environment)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def sources(demo_images, tmp_path_factory) -> tuple[Path, Path]:
    """The demo images in two folders of disjoint categories: the catalog, then an addition."""
    folder = tmp_path_factory.mktemp("catalog")
    categories = sorted(path.name for path in demo_images.iterdir() if path.is_dir())
    first, second = folder / "first", folder / "second"
    for number, category in enumerate(categories):
        shutil.copytree(demo_images / category, (first if number % 2 == 0 else second) / category)
    return first, second


@pytest.fixture(scope="module")
def built(run_dir, sources, prefect_server, tmp_path_factory) -> Path:  # noqa: F811
    """An exact index of both sources."""
    index = tmp_path_factory.mktemp("index") / "both"
    pvs("index", "build", "--run", run_dir, *sources, "--out", index, server=prefect_server)
    return index


def run_vectors(run_dir: Path) -> dict[str, np.ndarray]:
    """The run's extracted embeddings by image id (the final split's query and index images)."""
    summary = json.loads((run_dir / "run.json").read_text())
    vectors = {}
    for group in ("query", "index"):
        part = load_embeddings(summary["embeddings"], f"{summary['final_split']}_{group}")
        vectors.update({image_id.decode(): vector for image_id, vector in zip(part.image_ids, part.vectors)})
    return vectors


def test_a_built_index_holds_every_catalog_image_embedded_as_the_run_embeds_it(built, run_dir, sources):  # noqa: F811
    index = open_catalog(built)
    images = sorted(path.relative_to(source).as_posix() for source in sources for path in source.rglob("*.*"))
    assert sorted(image_id.decode() for image_id in index.image_ids) == images
    extracted = run_vectors(run_dir)
    rows = {image_id.decode(): row for row, image_id in enumerate(index.image_ids)}
    shared = sorted(set(extracted) & set(rows))
    assert len(shared) >= 10
    # Batched otherwise than the run's shards were: other kernels, the same embedding to float32 rounding.
    np.testing.assert_allclose(np.stack([index.prepared[rows[i]] for i in shared]),
                               np.stack([extracted[i] for i in shared]), atol=1e-4)
    # Each item's image, for thumbnails, is read back from its record: the source's own bytes.
    for row in (0, len(images) // 2, len(images) - 1):
        image_id = index.image_ids[row].decode()
        source = next(source for source in sources if (source / image_id).is_file())
        assert index.image_bytes(row) == (source / image_id).read_bytes()
    manifest = json.loads((built / "index.json").read_text())
    assert manifest["count"] == len(images) and manifest["kind"] == "exact" and manifest["recall_at_10"] is None
    assert [entry["images"] for entry in manifest["sources"]] == [
        sum(1 for _ in source.rglob("*.*")) for source in sources]


def test_searching_the_index_with_a_catalog_image_finds_that_image_first(built, sources, prefect_server):
    image = sorted(sources[1].rglob("*.jpg"))[0]
    result = pvs("search", "--index", built, image, "--top", "3", server=prefect_server)
    first = result.stdout.split(f"query {image}\n")[1].splitlines()[0].split()
    assert first[0] == "1" and float(first[1]) == pytest.approx(1.0, abs=1e-4)
    assert first[2] == image.relative_to(sources[1]).as_posix()


def test_adding_a_source_embeds_only_its_shards_and_equals_a_build_of_both(run_dir, sources, built, prefect_server,  # noqa: F811
                                                                            tmp_path):
    index = tmp_path / "grown"
    pvs("index", "build", "--run", run_dir, sources[0], "--out", index, server=prefect_server)
    before = open_catalog(index)
    added = pvs("index", "add", index, sources[1], server=prefect_server)
    log = added.stdout + added.stderr
    assert "extended: " in log
    reused = f"{len(list((index / 'sources' / '01').glob('*.tfrecord')))} reused"
    assert reused in log and "reused, 0 computed" not in log
    grown, both = open_catalog(index), open_catalog(built)
    # The first source's rows keep their positions; the whole equals the build of both.
    assert list(grown.image_ids[: len(before.image_ids)]) == list(before.image_ids)
    order = {image_id: row for row, image_id in enumerate(both.image_ids)}
    rows = [order[image_id] for image_id in grown.image_ids]
    np.testing.assert_array_equal(np.asarray(grown.prepared), np.asarray(both.prepared)[rows])
    assert [both.product_names[p] for p in both.product_ids[rows]] == [grown.product_names[p] for p in grown.product_ids]


def test_an_update_drops_the_images_removed_from_a_source(run_dir, sources, prefect_server, tmp_path):  # noqa: F811
    source = tmp_path / "catalog"
    shutil.copytree(sources[0], source)
    index = tmp_path / "index"
    pvs("index", "build", "--run", run_dir, source, "--out", index, server=prefect_server)
    removed = sorted(source.rglob("*.jpg"))[:2]
    for path in removed:
        path.unlink()
    pvs("index", "update", index, server=prefect_server)
    ids = {image_id.decode() for image_id in open_catalog(index).image_ids}
    assert not ids & {path.relative_to(source).as_posix() for path in removed}
    assert len(ids) == sum(1 for _ in source.rglob("*.*"))
    assert len(list(index.glob("built-*"))) == 1  # the earlier assembly is gone


def test_an_hnsw_index_measures_its_recall_and_ranks_as_the_exact_one(run_dir, sources, built, prefect_server,  # noqa: F811
                                                                       tmp_path):
    index = tmp_path / "hnsw"
    result = pvs("index", "build", "--run", run_dir, *sources, "--out", index, "--kind", "hnsw",
                 "--param", "ef_search=64", "--recall-queries", "50", server=prefect_server)
    assert "recall@10" in result.stdout
    manifest = json.loads((index / "index.json").read_text())
    assert manifest["kind"] == "hnsw" and manifest["parameters"]["ef_search"] == 64
    assert manifest["recall_at_10"] == pytest.approx(1.0) and manifest["recall_queries"] == 50
    approximate, exact = open_catalog(index), open_catalog(built)
    queries = np.asarray(exact.prepared[:20])
    np.testing.assert_array_equal(search_catalog(approximate, queries, 5)[0], search_catalog(exact, queries, 5)[0])


def test_an_altered_index_file_and_another_model_are_refused(built, tmp_path, prefect_server, sources):
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    with pytest.raises(CatalogIndexError, match="embeddings of two models cannot be compared"):
        open_catalog(copy, model_sha256="0" * 64)
    prepared = next(copy.glob("built-*/prepared.npy"))
    data = bytearray(prepared.read_bytes())
    data[-1] ^= 1
    prepared.write_bytes(bytes(data))
    with pytest.raises(CatalogIntegrityError, match="prepared.npy: its sha256 differs"):
        open_catalog(copy)
    refused = pvs("search", "--index", copy, sorted(sources[0].rglob("*.jpg"))[0], server=prefect_server, check=False)
    assert refused.returncode == 2 and "its sha256 differs" in refused.stderr


def test_a_catalog_in_cloud_storage_is_indexed_as_the_same_images_on_disk(run_dir, sources, built, storage_emulator,  # noqa: F811
                                                                          prefect_server, tmp_path):
    """A gs:// image folder is staged and ingested as a run's source is: the same items and vectors."""
    from test_storage import upload_folder

    url = f"gs://{storage_emulator.bucket}/catalog-{tmp_path.name}"
    upload_folder(sources[1], url)
    index = tmp_path / "remote"
    pvs("index", "build", "--run", run_dir, url, "--out", index, server=prefect_server)
    remote, local = open_catalog(index), open_catalog(built)
    assert json.loads((index / "index.json").read_text())["sources"][0]["source"] == url
    rows = {image_id: row for row, image_id in enumerate(local.image_ids)}
    assert sorted(remote.image_ids) == sorted(image_id.relative_to(sources[1]).as_posix().encode()
                                              for image_id in sources[1].rglob("*.*"))
    np.testing.assert_allclose(np.asarray(remote.prepared),
                               np.asarray(local.prepared)[[rows[image_id] for image_id in remote.image_ids]], atol=1e-5)
    assert remote.image_bytes(0) == (sources[1] / remote.image_ids[0].decode()).read_bytes()
