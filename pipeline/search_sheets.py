"""The contact sheets of searches: per query, the query and its matches from the index's
images, captioned and outlined (pipeline/sheets.py); and the sheet each run draws at its end."""

from pathlib import Path

import numpy as np

from phases.retrieval import RetrievalOptions, Whitening
from pipeline.search import SHEET_QUERIES, SHEET_TOP, Match, Query, SearchIndex, open_index, search
from pipeline.sheets import Cell, write_sheet
from tfrecords.embeddings import load_embeddings


def index_images(index: SearchIndex, image_ids: set[str], split: str | None = None) -> dict[str, bytes]:
    """The encoded bytes of these images of the index (or of `split`) from the data's shards
    (sha256 checked). Reads the split's shards until all are found: seconds per GB."""
    import tensorflow as tf

    from tfrecords.reader import parse_record, shard_paths

    found: dict[str, bytes] = {}
    records = tf.data.TFRecordDataset(shard_paths(index.data_dir, split or f"{index.split}_index")).map(parse_record)
    for record in records.as_numpy_iterator():
        image_id = record["image/id"].decode()
        if image_id in image_ids:
            found[image_id] = record["image/encoded"]
            if len(found) == len(image_ids):
                break
    return found


def draw(out: Path, queries: list[Query], results: list[list[Match]], index: SearchIndex) -> Path:
    """The contact sheet of these results (pipeline/sheets.py): per query, the query then its
    matches captioned with rank, score and product, outlined by whether the product is the query's."""
    thumbnails = index_images(index, {match.image_id for matches in results for match in matches})
    rows = []
    for query, matches in zip(queries, results):
        known = query.product_id is not None
        product = index.product_names[query.product_id] if known else "unknown"
        row = [Cell(query.encoded(), (query.name, f"query: {product}"), "query")]
        for match in matches:
            outline = "unknown" if not known else "match" if match.product_id == query.product_id else "other"
            caption = (f"#{match.rank}  {match.score:.3f}", index.product_names[match.product_id])
            row.append(Cell(thumbnails[match.image_id], caption, outline))
        rows.append(row)
    return write_sheet(out, rows)


def write_run_sheet(out: Path, extraction, data_dir: Path, retrieval: RetrievalOptions) -> Path:
    """The sheet a run draws at its end: the first SHEET_QUERIES queries of the extraction's
    split (by image id) searched with their extracted embeddings, as the run retrieves
    (`retrieval`, the extraction's whitening), so it shows what the submission ranked.
    `extraction`: the pipeline's Extraction step output."""
    embeddings_dir, split = extraction.embeddings, extraction.split
    whitening = None if extraction.whitening is None else Whitening.load(extraction.whitening, extraction.whitening_sha256)
    index = open_index(embeddings_dir, split, data_dir, retrieval=retrieval, whitening=whitening)
    stored = load_embeddings(embeddings_dir, f"{split}_query", verify=False)
    order = np.argsort(stored.image_ids, kind="stable")[:SHEET_QUERIES]
    ids = [stored.image_ids[row].decode() for row in order]
    encoded = index_images(index, set(ids), f"{split}_query")
    queries = [Query(image_id, encoded[image_id], int(stored.product_ids[row])) for image_id, row in zip(ids, order)]
    return draw(out, queries, search(index, stored.vectors[order], SHEET_TOP), index)


def sheet_caption() -> str:
    """What a run's search sheet shows, under it in the run's report."""
    return (f"One row per query (the first {SHEET_QUERIES} by image id), then its {SHEET_TOP} nearest index images "
            "with rank, cosine similarity and product: green the query's product, red another.")
