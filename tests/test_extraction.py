"""The extraction per image shard: merged, it equals the whole-split extraction, and a rerun
of the flow embeds only the shards whose folders are missing."""

import json
import os
import re
import shutil

import numpy as np
import pytest
import yaml
from test_run import pvs_run
from test_search import TINY_RUN as SEARCH_RUN

from phases.config import PipelineConfig
from tfrecords.manifest import EmbeddingManifest, ImageManifest, read_manifest

# One Siamese phase of one epoch at 32 px: the cheapest run with a real embedder (test_search's).
TINY_RUN = {**SEARCH_RUN, "description": "sharded extraction test"}


def tiny_config(ingested, **evaluation) -> dict:
    return {**TINY_RUN, "data": {**TINY_RUN["data"], "source": str(ingested)},
            "evaluation": {**TINY_RUN["evaluation"], **evaluation}}


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    """An untrained embedder (backbone and a 16-d projection) saved as the final model: (path, sha256)."""
    import keras

    from phases.checkpoints import save_model
    from phases.config import ModelConfig
    from phases.model import build_backbone, build_embedder, build_projection

    keras.utils.set_random_seed(3)
    model = build_embedder(build_backbone(ModelConfig(weights="none"), 32), build_projection(1280, 16))
    path = tmp_path_factory.mktemp("embedder") / "embedder.keras"
    return path, save_model(model, path)


def test_read_order_is_the_order_of_the_reader(ingested):
    """The reader interleaves a split's shards (8 at a time): `read_order` says where each record comes."""
    import tensorflow as tf

    from tfrecords.options import ReadOptions
    from tfrecords.reader import parse_record, read_images, read_order

    shards = read_manifest(ingested, ImageManifest).shards_of("train")
    assert len(shards) > 8 and len({shard.records for shard in shards}) > 1  # a full cycle, then the rest
    per_shard = [[record["image/id"] for record in tf.data.TFRecordDataset([str(ingested / shard.file)]).map(parse_record)
                  .as_numpy_iterator()] for shard in shards]
    read = read_images(ingested, "train", ReadOptions(image_size=8, deterministic=True)).map(lambda image: image["image_id"])
    assert list(read.as_numpy_iterator()) == [per_shard[shard][record] for shard, record in read_order([s.records for s in shards])]
    one = read_images(ingested, "train", ReadOptions(image_size=8, deterministic=True), shard_files=[shards[3].file])
    assert [image["image_id"] for image in one.as_numpy_iterator()] == per_shard[3]


def extract_in_one_pass(model_path, model_sha256: str, config, data_dir, out_dir):
    """The reference the per-shard extraction must equal: the final split's queries and index
    embedded whole, in one process, then written, scored and ranked as `merge` does."""
    from phases.checkpoints import load_model
    from phases.extraction import final_group, submission_and_scores
    from phases.scoring import embed_split
    from tfrecords.embeddings import EmbeddingWriter

    group = final_group(config, read_manifest(data_dir, ImageManifest))
    model = load_model(model_path, model_sha256, compile=False)
    size, batch = config.data.image_size, config.evaluation.batch_size
    query = embed_split(model, data_dir, f"{group}_query", size, batch)
    index = embed_split(model, data_dir, f"{group}_index", size, batch)
    embeddings_dir = out_dir / "embeddings"
    with EmbeddingWriter(embeddings_dir, dim=query.vectors.shape[1], metadata={"model_sha256": model_sha256}) as writer:
        for name, part in ((f"{group}_query", query), (f"{group}_index", index)):
            writer.add(name, part.vectors, part.image_ids, part.product_ids, part.category_ids)
    return submission_and_scores(group, query, index, config, embeddings_dir, out_dir)


def extract(model_path, model_sha256: str, config, data_dir, out_dir):
    """The pipeline's extraction, without Prefect: each image shard of the final split
    embedded on its own (`embed_shard`), then merged, scored and ranked (`merge`)."""
    from phases.extraction import embed_shard, final_shards, merge

    group, shards = final_shards(config, data_dir)
    parts = [out_dir / "shards" / shard.file for shard in shards]
    for shard, part in zip(shards, parts):
        embed_shard(model_path, model_sha256, config, data_dir, shard, part)
    return merge(parts, model_path, model_sha256, config, data_dir, group, out_dir / "merged")


@pytest.mark.slow
def test_shards_embedded_one_by_one_and_merged_equal_the_whole_split_extraction(ingested, embedder, tmp_path):
    from phases.checkpoints import load_model
    from phases.extraction import embed_shard, final_shards, in_reader_order, merge
    from phases.scoring import embed_split

    path, sha256 = embedder
    # Batches of 4: the whole split's straddle its shards, and a shard's last one is short.
    config = PipelineConfig.model_validate(tiny_config(ingested, batch_size=4))
    whole = extract_in_one_pass(path, sha256, config, ingested, tmp_path / "whole")

    group, shards = final_shards(config, ingested)
    assert group == "test" and [shard.split for shard in shards].count("test_index") == 3
    parts = []
    for number, shard in enumerate(shards):
        part = embed_shard(path, sha256, config, ingested, shard, tmp_path / "parts" / str(number))
        assert part.count == shard.records and part.metadata["image_shard_sha256"] == shard.sha256
        parts.append(tmp_path / "parts" / str(number))
    merged = merge(parts, path, sha256, config, ingested, group, tmp_path / "merged")

    assert merged.submission_path.read_bytes() == whole.submission_path.read_bytes()
    assert merged.scores == whole.scores and merged.split == whole.split
    model = load_model(path, sha256, compile=False)
    for kind in ("query", "index"):
        name = f"{group}_{kind}"
        expected = embed_split(model, ingested, name, 32, config.evaluation.batch_size)  # what the whole-split extraction embeds
        got = in_reader_order(merged.embeddings_dir, name, [shard.records for shard in shards if shard.split == name])
        # The same rows in the same order; the vectors to float32 rounding: a row embedded in a batch of
        # another size (a shard's last batch is short, the whole split's batches straddle shards) may take
        # another kernel path, e.g. 3e-7 apart here. Not enough to move a neighbour or a score above.
        np.testing.assert_allclose(got.vectors, expected.vectors, rtol=0, atol=1e-5)
        for column in ("image_ids", "product_ids", "category_ids"):
            np.testing.assert_array_equal(getattr(got, column), getattr(expected, column))

    # The layout `pvs search` and load_embeddings read; the parts' files linked in, shard after shard.
    manifest = read_manifest(merged.embeddings_dir, EmbeddingManifest)
    assert [shard.file for shard in manifest.shards] == ["test_query-00000.tfrecord", *(f"test_index-0000{i}.tfrecord" for i in range(3))]
    assert manifest.metadata == {"model_sha256": sha256} and manifest.dim == 16
    assert manifest.count == read_manifest(whole.embeddings_dir, EmbeddingManifest).count
    assert os.path.samefile(merged.embeddings_dir / "test_index-00002.tfrecord", parts[3] / "test_index-00000.tfrecord")


@pytest.mark.slow
def test_image_ids_with_spaces_commas_and_non_ascii_come_back_from_an_extraction_submission(embedder, tmp_path):
    from reliability.test_ingest_inputs import AWKWARD_NAMES, awkward_source

    from phases.submission import read_submission
    from tfrecords.ingest import ingest
    from tfrecords.options import IngestOptions

    data = tmp_path / "data"
    ingest(awkward_source(tmp_path / "src"), data, IngestOptions(workers=1), progress=False)
    path, sha256 = embedder
    result = extract(path, sha256, PipelineConfig.model_validate(tiny_config(data)), data, tmp_path / "out")
    ranked = read_submission(result.submission_path)
    ids = {f"p1/{name}" for name in AWKWARD_NAMES}
    assert len(ranked) == 3 and set(ranked) <= ids
    for neighbours in ranked.values():  # the whole index (6 < 10 images), each image once
        assert sorted(neighbours) == sorted(ids - set(ranked))


def shard_states(output: str) -> dict[str, str]:
    """{image shard: final state} of the flow's embed_shard task runs, from its log."""
    return dict(re.findall(r"Task run 'embed ([^']+)' - Finished in state (\w+)", output))


@pytest.mark.slow
def test_a_rerun_embeds_only_the_shard_whose_folder_was_deleted(ingested, tmp_path, prefect_server):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(ingested)))
    run_dir = tmp_path / "run"
    # Two shards at a time (two threads, a model each); the rerun: one at a time, the same keys.
    first = pvs_run(config, run_dir, "--set", "evaluation.extraction_concurrency=2", server=prefect_server)
    shards = [shard.file.removesuffix(".tfrecord") for split in ("test_query", "test_index")
              for shard in read_manifest(ingested, ImageManifest).shards_of(split)]
    assert shard_states(first) == dict.fromkeys(shards, "Completed")
    assert f"extraction: {len(shards)} embedding shard(s) of test: 0 reused, {len(shards)} computed" in first
    submission = (run_dir / "submission.csv").read_bytes()
    summary = json.loads((run_dir / "run.json").read_text())
    folders = {path.name: path.stat().st_ino for path in (run_dir / "embeddings").iterdir()}
    assert sorted(name[:-13] for name in folders) == sorted(shards)  # <shard>-<12 hex of its key>

    deleted = next(name for name in folders if name.startswith("test_index-00001-"))
    kept = {name: inode for name, inode in folders.items() if name != deleted}
    parts = {name: (run_dir / "embeddings" / name / "test_index-00000.tfrecord").stat().st_ino
             for name in kept if name.startswith("test_index")}
    shutil.rmtree(run_dir / "embeddings" / deleted)
    shutil.rmtree(next(run_dir.glob("extraction-*")))  # so the merge runs again, on the recomputed shard

    again = pvs_run(config, run_dir, server=prefect_server)
    assert "Task run 'siamese' - Finished in state Cached" in again
    assert shard_states(again) == {**dict.fromkeys(shards, "Cached"), deleted[:-13]: "Completed"}
    assert f"extraction: {len(shards)} embedding shard(s) of test: {len(shards) - 1} reused, 1 computed" in again
    assert "Task run 'extraction' - Finished in state Completed" in again
    assert (run_dir / "submission.csv").read_bytes() == submission
    assert json.loads((run_dir / "run.json").read_text())["final_scores"] == summary["final_scores"]
    assert {name: (run_dir / "embeddings" / name / "test_index-00000.tfrecord").stat().st_ino for name in parts} == parts
    assert (run_dir / "embeddings" / deleted / "result.json").is_file()
