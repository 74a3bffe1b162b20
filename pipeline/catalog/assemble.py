"""The assembled catalog index: the embedded shards of its sources gathered into what a search loads.

`assemble` writes, into a folder of its own (the `catalog_index` step's):
  * `items.npz`: image_ids ('S' bytes), product_ids (int64, numbered over every source by
    product name), product_names ('S'), source (int32, the source each image came from),
    and where each image's record is: shard_paths ('S', image shards relative to this
    folder), shard (int32, a row of shard_paths) and offset (int64, the record's byte offset);
  * `prepared.npy`: float32 [n, dim'], the vectors searched: the catalog's embeddings
    whitened and augmented (DBA) as the run's retrieval prepares an index
    (`phases.retrieval.prepare_index`), memory-mappable;
  * the vector index's files when the kind is approximate (phases/retrieval/vector_index.py);
  * `model.keras` and `whitening.npz`: the run's, linked (or copied) in, so that the index
    answers queries on its own, the run folder gone.
No pickles: NumPy arrays of numbers and bytes, loaded with allow_pickle=False.

Additions are cheap where they can be: when the previous assembly of the same index (same
model, retrieval, kind and parameters) holds a subset of the new images, unchanged, and
the retrieval has no DBA (which changes every item's vector as neighbours arrive), its rows
keep their positions, the new ones are appended and the vector index only adds them
(no retraining of its clusters). Otherwise, removed images or DBA, it is built anew.
"""

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from phases.exact_search import inverse_norms
from phases.retrieval import RetrievalOptions, Whitening, prepare_index
from phases.retrieval.vector_index import VectorIndex, measure_recall, set_faiss_threads
from pipeline.catalog.settings import CatalogSettings
from tfrecords.embeddings import load_embeddings
from tfrecords.errors import UserError
from tfrecords.files import atomic_writer, link_into_place
from tfrecords.manifest import ImageManifest, read_manifest
from tfrecords.record_format import record_offsets

ITEMS_NAME = "items.npz"
PREPARED_NAME = "prepared.npy"
MODEL_NAME = "model.keras"
WHITENING_NAME = "whitening.npz"
VECTORS_FOLDER = "vectors"


class CatalogSourceError(UserError):
    """Sources that cannot make one catalog: an image id in two of them."""


@dataclasses.dataclass(frozen=True)
class EmbeddedShard:
    """One image shard (`image_shard`, a TFRecord file of `data_dir`, the ingested data of
    source number `source`, which names its products) and its embeddings (`folder`, set `split`)."""

    source: int
    data_dir: Path
    image_shard: Path
    folder: Path
    split: str


@dataclasses.dataclass
class Assembly:
    """What `assemble` wrote: files by name (paths in `folder`), and facts for the manifest."""

    files: dict[str, Path]
    facts: dict


def assemble(shards: list[EmbeddedShard], model_path: Path, retrieval: RetrievalOptions, whitening_path: Path | None,
             whitening_sha256: str | None, settings: CatalogSettings, folder: Path,
             previous: Path | None = None) -> Assembly:
    """Gather the shards' embeddings (in the given order) into `folder`; see the module docstring.
    `previous`: the folder of this index's last assembly, reused for an addition when it can be."""
    began = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    if settings.kind != "exact":
        set_faiss_threads(settings.threads)
    image_ids, names, sources, vectors, locations = _gather(shards)
    whitening = Whitening.load(whitening_path, whitening_sha256) if whitening_path else None
    product_names = np.array(sorted(set(names)), dtype=bytes)
    product_ids = np.searchsorted(product_names, np.array(names, dtype=bytes)).astype(np.int64)

    prepared = prepare_index(vectors, retrieval, whitening)
    reused = _reusable(previous, retrieval, settings, whitening_sha256, image_ids, prepared)
    if reused is not None:  # the previous rows first, in their positions; the new ones after them
        order, old_count, index = reused
        image_ids, sources, product_ids, prepared = image_ids[order], sources[order], product_ids[order], prepared[order]
        locations = {name: values[order] for name, values in locations.items()}
        if index is not None and len(prepared) > old_count:
            index.add(unit(prepared[old_count:]))
        mode = f"extended: {old_count} items kept, {len(prepared) - old_count} added"
    else:
        index = None if settings.kind == "exact" else VectorIndex.build(
            unit(prepared), settings.kind, settings.parameters, seed=settings.seed)
        mode = "built"

    files = {ITEMS_NAME: folder / ITEMS_NAME, PREPARED_NAME: folder / PREPARED_NAME}
    with atomic_writer(files[ITEMS_NAME]) as handle:
        np.savez(handle, image_ids=image_ids, product_ids=product_ids, product_names=product_names, source=sources,
                 shard_paths=np.array([os.path.relpath(shard.image_shard, folder) for shard in shards], dtype=bytes),
                 **locations)
    with atomic_writer(files[PREPARED_NAME]) as handle:
        np.save(handle, prepared)
    recall, vector_files = None, {}
    if index is not None:
        vector_files = index.save(folder / VECTORS_FOLDER)
        for name in vector_files:
            files[f"{VECTORS_FOLDER}/{name}"] = folder / VECTORS_FOLDER / name
        recall = measure_recall(index, unit(prepared), settings.recall_queries, seed=settings.seed)
    files[MODEL_NAME] = folder / MODEL_NAME
    link_into_place(model_path, files[MODEL_NAME])
    if whitening_path is not None:
        files[WHITENING_NAME] = folder / WHITENING_NAME
        link_into_place(whitening_path, files[WHITENING_NAME])
    facts = {
        "count": len(prepared), "dim": int(prepared.shape[1]), "products": len(product_names),
        "kind": settings.kind, "parameters": index.options.model_dump() if index is not None else {},
        "recall_at_10": recall, "recall_queries": min(settings.recall_queries, len(prepared)) if recall is not None else 0,
        "mode": mode, "seconds": round(time.perf_counter() - began, 3),
        # What an addition checks before extending this assembly (`_reusable`).
        "settings": settings.model_dump(), "retrieval": retrieval.model_dump(), "whitening_sha256": whitening_sha256,
        "vector_files": vector_files,
    }
    return Assembly(files, facts)


def unit(vectors: np.ndarray) -> np.ndarray:
    """The rows L2-normalised (zero rows stay zero), as a faiss index takes them: the prepared
    vectors keep their norms (the exact search and re-ranking compare by cosine either way)."""
    return vectors * inverse_norms("index", vectors)[:, None]


def _gather(shards: list[EmbeddedShard]) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, dict]:
    """image ids ('S'), product names, source numbers and vectors of every shard, in order,
    and where each image's record is: {"shard": its shard's number in `shards`, "offset": the
    record's byte offset in it} (embed_shard embeds a shard in record order); a
    CatalogSourceError when an image id comes twice."""
    image_ids, names, sources, vectors, shard_numbers, offsets = [], [], [], [], [], []
    named: dict[Path, dict[int, str]] = {}
    for shard in shards:
        if shard.data_dir not in named:
            products = read_manifest(shard.data_dir, ImageManifest).products
            named[shard.data_dir] = {number: name for name, number in products.items()}
        part = load_embeddings(shard.folder, shard.split, verify=False)  # the step's record checked its files
        image_ids.append(part.image_ids.astype(bytes))
        names += [named[shard.data_dir][int(product)] for product in part.product_ids]
        sources.append(np.full(len(part.image_ids), shard.source, dtype=np.int32))
        vectors.append(part.vectors)
        with open(shard.image_shard, "rb") as handle:
            found = record_offsets(handle)
        if len(found) != len(part.image_ids):
            raise CatalogSourceError(f"{shard.image_shard}: {len(found)} records, but {len(part.image_ids)} embeddings "
                                     f"in {shard.folder}: embed it again (`pvs index update INDEX --force`)")
        offsets.append(np.array(found, dtype=np.int64))
        shard_numbers.append(np.full(len(found), len(shard_numbers), dtype=np.int32))
    if not vectors:
        raise CatalogSourceError("the sources hold no images to index")
    ids = np.concatenate(image_ids)
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        twice = unique[counts > 1][0].decode()
        raise CatalogSourceError(
            f"image id {twice!r} comes {counts.max()} times in the catalog's sources: an image id (its path in "
            "its source) must be unique across the sources of one index; rename the folder of one source")
    locations = {"shard": np.concatenate(shard_numbers), "offset": np.concatenate(offsets)}
    return ids, names, np.concatenate(sources), np.concatenate(vectors).astype(np.float32), locations


def _reusable(previous: Path | None, retrieval: RetrievalOptions, settings: CatalogSettings, whitening_sha256,
              image_ids: np.ndarray, prepared: np.ndarray):
    """When `previous` can be extended: (the order of the new rows that puts the previous
    assembly's images first, in its order; how many those are; its vector index, None for
    exact); else None. Without DBA an item's prepared vector depends on it alone, so the
    previous rows must come back as they were."""
    if previous is None or retrieval.database_augmentation is not None or not (previous / ITEMS_NAME).is_file():
        return None
    from pipeline.records import peek_record

    record = peek_record(previous)
    facts = record.output if record is not None else None
    if facts is None or facts.get("kind") != settings.kind or facts.get("settings") != settings.model_dump() \
            or facts.get("whitening_sha256") != whitening_sha256 or facts.get("retrieval") != retrieval.model_dump():
        return None
    with np.load(previous / ITEMS_NAME, allow_pickle=False) as items:
        old_ids = items["image_ids"]
    position = {image_id: row for row, image_id in enumerate(image_ids)}
    if any(image_id not in position for image_id in old_ids):
        return None  # images were removed: built anew
    kept = np.array([position[image_id] for image_id in old_ids], dtype=np.int64)
    if not np.array_equal(prepared[kept], np.load(previous / PREPARED_NAME, mmap_mode="r", allow_pickle=False)):
        return None  # re-embedded differently (another machine's kernels): built anew
    order = np.concatenate([kept, np.setdiff1d(np.arange(len(image_ids)), kept, assume_unique=True)])
    index = None if settings.kind == "exact" else VectorIndex.load(previous / VECTORS_FOLDER, facts["vector_files"])
    return order, len(kept), index
