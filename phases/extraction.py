"""Final embeddings and the leaderboard-style submission.

The final model embeds the query and index images of the final split (`test`,
else `val`); the vectors are written as embedding shards, the queries are scored
against the index, and `submission.csv` lists for each query id its 10 nearest
index ids, space-separated, nearest first (the eProduct format).
"""

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from phases.checkpoints import load_model
from phases.config import PipelineConfig
from phases.metrics import nearest_neighbours
from phases.scoring import embed_split, embedding_scores
from tfrecords.embeddings import EmbeddingWriter
from tfrecords.files import write_text_atomic
from tfrecords.manifest import ImageManifest, read_manifest

SUBMISSION_TOP = 10


@dataclass
class ExtractionResult:
    split: str  # the group embedded: test or val
    embeddings_dir: Path
    submission_path: Path
    scores: dict


def extract(model_path: Path, model_sha256: str, config: PipelineConfig, data_dir: Path, out_dir: Path) -> ExtractionResult:
    """Embed the final split's queries and index with the final model; write shards and submission."""
    manifest = read_manifest(data_dir, ImageManifest)
    group = config.evaluation.final_split
    if not manifest.has_queries(group):
        group = config.evaluation.split
    model = load_model(model_path, model_sha256, compile=False)
    size, batch = config.data.image_size, config.evaluation.batch_size
    query = embed_split(model, data_dir, f"{group}_query", size, batch)
    index = embed_split(model, data_dir, f"{group}_index", size, batch)
    embeddings_dir = out_dir / "embeddings"
    with EmbeddingWriter(embeddings_dir, dim=query.vectors.shape[1], metadata={"model_sha256": model_sha256}) as writer:
        for name, part in ((f"{group}_query", query), (f"{group}_index", index)):
            writer.add(name, part.vectors, part.image_ids, part.product_ids, part.category_ids)
    neighbours, _ = nearest_neighbours(query.vectors, index.vectors, k=min(SUBMISSION_TOP, len(index.vectors)))
    text = io.StringIO()
    table = csv.writer(text, lineterminator="\n")
    table.writerow(["query_id", "index_ids"])
    for query_id, row in zip(query.image_ids, neighbours):
        table.writerow([query_id.decode(), " ".join(index.image_ids[i].decode() for i in row)])
    submission = out_dir / "submission.csv"
    write_text_atomic(submission, text.getvalue())
    scores = embedding_scores(
        query.vectors, query.product_ids, index.vectors, index.product_ids, config.evaluation.triplet_sample
    )
    return ExtractionResult(split=group, embeddings_dir=embeddings_dir, submission_path=submission, scores=scores)
