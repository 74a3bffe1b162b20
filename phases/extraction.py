"""Final embeddings and the leaderboard-style submission.

The final model embeds the query and index images of the final split (`test`, else
`val`); the vectors are written as embedding shards, the queries are scored against
the index, and `submission.csv` lists for each query id its 10 nearest index ids,
space-separated, nearest first (the eProduct format; ids with a space are
percent-encoded there: `phases.submission`).

The pipeline does it in two units: `embed_shard` embeds one image shard of those sets
into a folder of its own (a task per shard, cached by the shard's and the model's
digests: a rerun redoes only the missing shards), then `merge` gathers those folders,
in shard order, into one embeddings folder (their files hard-linked in) and writes the
submission and the scores. `extract` does it all in one go over whole splits: the
reference the two units must equal (tests/test_extraction.py).

Row order: the submission and the scores take each set's images in the order the reader
yields the whole split (its shards interleaved: `tfrecords.reader.read_order`), as
`extract` does; the merged embeddings folder holds each set's rows shard after shard.
The vectors equal `extract`'s to float32 rounding, not always bit for bit: an image
embedded in a batch of another size (a shard's last batch is short; the whole split's
batches straddle shards) may go through another kernel (3e-7 apart on the test data,
which leaves every neighbour and score as they were). A shard's vectors do not depend on
the other shards: recomputing one reproduces it (with `runtime.deterministic`).
"""

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phases.checkpoints import load_model
from phases.config import PipelineConfig
from phases.retrieval import Whitening, retrieve
from phases.scoring import SplitEmbeddings, embedding_scores, whitening_for
from phases.submission import SUBMISSION_NAME, write_submission
from phases.views import embed_views
from tfrecords.embeddings import EmbeddingWriter, load_embeddings, merge_embeddings
from tfrecords.manifest import EmbeddingManifest, ImageManifest, ShardEntry, read_manifest
from tfrecords.options import ReadOptions
from tfrecords.reader import read_images, read_order

SUBMISSION_TOP = 10
WHITENING_NAME = "whitening.npz"
_loaded = threading.local()  # the final model last loaded by this thread: `final_model`


@dataclass
class ExtractionResult:
    split: str  # the group embedded: test or val
    embeddings_dir: Path
    submission_path: Path
    scores: dict
    whitening_path: Path | None = None  # `evaluation.retrieval.whitening`'s, learned by the final model


def final_group(config: PipelineConfig, manifest: ImageManifest) -> str:
    """The group embedded: `evaluation.final_split`, else `evaluation.split` when the final one has no queries."""
    group = config.evaluation.final_split
    return group if manifest.has_queries(group) else config.evaluation.split


def final_shards(config: PipelineConfig, data_dir: Path) -> tuple[str, list[ShardEntry]]:
    """The group embedded and its image shards: those of its query set, then of its index set."""
    manifest = read_manifest(data_dir, ImageManifest)
    group = final_group(config, manifest)
    return group, [*manifest.shards_of(f"{group}_query"), *manifest.shards_of(f"{group}_index")]


def final_model(model_path: Path, model_sha256: str):
    """The final model (compile=False, sha256 checked), loaded once per thread: the shard
    tasks a thread runs one after another share it, and its traced predict step; tasks
    running at once, in other threads, have their own copies."""
    key = (str(model_path), model_sha256)
    if getattr(_loaded, "key", None) != key:
        _loaded.key = _loaded.model = None  # the previous model goes before the next one loads
        _loaded.model = load_model(Path(model_path), model_sha256, compile=False)
        _loaded.key = key
    return _loaded.model


def embed_shard(model_path: Path, model_sha256: str, config: PipelineConfig, data_dir: Path, shard: ShardEntry,
                out_dir: Path) -> EmbeddingManifest:
    """Embed one image shard (of the final split's query or index set) into `out_dir`: an
    embeddings folder of set `shard.split`, its rows in the shard's record order, each file
    written atomically, the manifest (metadata: the model's and the image shard's sha256) last.
    With test-time augmentation, each row is the mean of its image's views (phases/views.py)."""
    model = final_model(model_path, model_sha256)
    options = ReadOptions(image_size=config.data.image_size, batch_size=config.evaluation.batch_size, deterministic=True)
    metadata = {"model_sha256": model_sha256, "image_shard": shard.file, "image_shard_sha256": shard.sha256}
    writer = None
    for batch in read_images(data_dir, shard.split, options, shard_files=[shard.file]).as_numpy_iterator():
        vectors, _ = embed_views(model, batch["image"], config.evaluation.test_time_augmentation)  # as embed_split
        writer = writer or EmbeddingWriter(out_dir, dim=vectors.shape[1], metadata=metadata)
        writer.add(shard.split, vectors, batch["image_id"], batch["product_id"], batch["category_id"])
    if writer is None:
        raise ValueError(f"{Path(data_dir) / shard.file}: no images to embed")
    return writer.close()


def merge(parts: list[Path], model_path: Path, model_sha256: str, config: PipelineConfig, data_dir: Path, group: str,
          out_dir: Path) -> ExtractionResult:
    """The folders of `embed_shard` for `group`'s shards (in `final_shards` order) as one
    embeddings folder, then the submission and the scores as `extract` writes them. When
    `evaluation.retrieval.whitening` asks for one, the final model learns it here (on train
    images, `whitening_for`) and it is saved as `whitening.npz`, for the submission, the
    scores and `pvs search`."""
    embeddings_dir = out_dir / "embeddings"
    merge_embeddings(parts, embeddings_dir, metadata={"model_sha256": model_sha256})
    records: dict[str, list[int]] = {}  # per set, the rows of each part
    for part in parts:
        manifest = read_manifest(part, EmbeddingManifest)
        for split in dict.fromkeys(shard.split for shard in manifest.shards):
            records.setdefault(split, []).append(sum(shard.records for shard in manifest.shards_of(split)))
    query, index = (in_reader_order(embeddings_dir, f"{group}_{kind}", records.get(f"{group}_{kind}", []))
                    for kind in ("query", "index"))
    whitening = whitening_for(final_model(model_path, model_sha256), config, data_dir, verify=False)
    result = submission_and_scores(group, query, index, config, embeddings_dir, out_dir, whitening)
    if whitening is not None:
        result.whitening_path = out_dir / WHITENING_NAME
        whitening.save(result.whitening_path)
    return result


def in_reader_order(folder: Path, split: str, records: list[int]) -> SplitEmbeddings:
    """Set `split` of a merged folder (parts of `records` rows each, one after the other)
    in the order the reader yields the whole split, which `extract` embeds."""
    stored = load_embeddings(folder, split, verify=False)  # merge_embeddings checked its parts
    if sum(records) != len(stored.vectors):
        raise ValueError(f"{folder}: {len(stored.vectors)} rows of {split}, its parts hold {sum(records)}")
    order = read_order(records)
    rows = np.cumsum([0, *records[:-1]], dtype=np.int64)[order[:, 0]] + order[:, 1]
    return SplitEmbeddings(vectors=stored.vectors[rows], product_ids=stored.product_ids[rows],
                           category_ids=stored.category_ids[rows], image_ids=stored.image_ids[rows])


def submission_and_scores(group: str, query: SplitEmbeddings, index: SplitEmbeddings, config: PipelineConfig,
                          embeddings_dir: Path, out_dir: Path, whitening: Whitening | None = None) -> ExtractionResult:
    """submission.csv (each query's SUBMISSION_TOP index ids by `phases.retrieval.retrieve`, as
    scored) and the scores of `group`."""
    retrieval = config.evaluation.retrieval
    neighbours, _ = retrieve(query.vectors, index.vectors, retrieval, whitening, min(SUBMISSION_TOP, len(index.vectors)))
    ranked = ((query_id.decode(), [index.image_ids[i].decode() for i in row])
              for query_id, row in zip(query.image_ids, neighbours))
    submission = write_submission(out_dir / SUBMISSION_NAME, ranked)
    scores = embedding_scores(query.vectors, query.product_ids, index.vectors, index.product_ids,
                              config.evaluation.triplet_sample, retrieval, whitening)
    return ExtractionResult(split=group, embeddings_dir=embeddings_dir, submission_path=submission, scores=scores)
