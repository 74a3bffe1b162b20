"""A built catalog index, opened for searching: `open_catalog`, then `search_catalog`.

`INDEX/index.json` (written last by a build, atomically) names the assembled folder and
every file in it with its sha256, the run and model it was built with, the retrieval
(whitening, DBA, QE, re-ranking) and the search structure with its measured recall@10.
Opening checks each file against it; a query model other than the index's is refused.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phases.retrieval import RetrievalOptions, Whitening, retrieve_prepared
from pipeline.catalog.assemble import ITEMS_NAME, MODEL_NAME, PREPARED_NAME, VECTORS_FOLDER, WHITENING_NAME
from tfrecords.errors import IntegrityError, UserError
from tfrecords.files import sha256_file, write_text_atomic

INDEX_NAME = "index.json"
INDEX_FORMAT = 1


class CatalogIndexError(UserError):
    """A folder that is not a built catalog index, or one built with another model than the query's."""


class CatalogIntegrityError(IntegrityError):
    """A file of a catalog index that differs from the sha256 index.json recorded for it."""


@dataclass
class CatalogIndex:
    """What a search needs: the items, their prepared vectors and search structure, and the
    model (with the run's batch and test-time augmentation) that embeds queries for them."""

    folder: Path
    manifest: dict
    image_ids: np.ndarray  # [n] bytes
    product_ids: np.ndarray  # [n] int64, rows of product_names
    product_names: np.ndarray  # [products] bytes, sorted
    prepared: np.ndarray  # [n, dim'] float32, memory-mapped
    vector_index: object | None  # a VectorIndex; None: the exact search
    retrieval: RetrievalOptions
    whitening: Whitening | None
    model_path: Path
    model_sha256: str
    batch_size: int
    test_time_augmentation: str

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    locations: dict  # shard_paths (resolved), shard and offset of each row's record

    def product_name(self, row: int) -> str:
        return self.product_names[self.product_ids[row]].decode()

    def image_bytes(self, row: int) -> bytes:
        """The encoded image of catalog row `row`, read from its record in the ingested shard
        (both CRCs checked): the bytes the source gave, as ingestion stored them."""
        from tfrecords.record_format import decode_example, read_record_at

        path = self.locations["shard_paths"][self.locations["shard"][row]]
        with open(path, "rb") as handle:
            return decode_example(read_record_at(handle, int(self.locations["offset"][row])))["image/encoded"]


def write_index_manifest(folder: Path, manifest: dict) -> Path:
    path = Path(folder) / INDEX_NAME
    write_text_atomic(path, json.dumps({"format": INDEX_FORMAT, **manifest}, indent=1))
    return path


def read_index_manifest(folder: Path) -> dict:
    """INDEX/index.json, or a CatalogIndexError saying what the folder is not."""
    path = Path(folder) / INDEX_NAME
    if not Path(folder).is_dir():
        raise CatalogIndexError(f"{folder}: no such folder; give an index folder written by `pvs index build`")
    try:
        manifest = json.loads(path.read_text())
    except OSError:
        raise CatalogIndexError(
            f"{folder}: not a built catalog index (no {INDEX_NAME}, written when a build ends); build it with "
            "`pvs index build --run RUN SOURCE --out FOLDER`, or run the same command again to finish it") from None
    except ValueError as error:
        raise CatalogIndexError(f"{path}: not valid JSON ({error}); build the index again") from None
    if manifest.get("format") != INDEX_FORMAT:
        raise CatalogIndexError(f"{path}: index format {manifest.get('format')!r}, this version reads {INDEX_FORMAT}; "
                                "build the index again")
    return manifest


def open_catalog(folder: Path, model_sha256: str | None = None) -> CatalogIndex:
    """The index in `folder`, every file checked by sha256 (a CatalogIntegrityError names an
    altered one); `model_sha256`, when given, must be the index's model (CatalogIndexError)."""
    folder = Path(folder)
    manifest = read_index_manifest(folder)
    model = manifest["model"]
    if model_sha256 is not None and model_sha256 != model["sha256"]:
        raise CatalogIndexError(
            f"{folder}: built with the model {model['sha256'][:12]} (run {manifest['run']}); this query's model is "
            f"{model_sha256[:12]}: embeddings of two models cannot be compared. Search with the index's own model, or "
            "build an index with this run (`pvs index build --run ...`)")
    files = {}
    for name, entry in manifest["files"].items():
        path = folder / entry["path"]
        if not path.is_file():
            raise CatalogIndexError(f"{path}: missing from the index; run `pvs index update {folder}` to rebuild it")
        if name.startswith(f"{VECTORS_FOLDER}/"):
            files[name] = path
            continue  # VectorIndex.load checks these, on the handle it then reads
        if sha256_file(path) != entry["sha256"]:
            raise CatalogIntegrityError(f"{path}: its sha256 differs from index.json's: the file was altered or "
                                        f"damaged; run `pvs index update {folder} --force` to rebuild it")
        files[name] = path
    with np.load(files[ITEMS_NAME], allow_pickle=False) as items:
        image_ids, product_ids, product_names = items["image_ids"], items["product_ids"], items["product_names"]
        built = files[ITEMS_NAME].parent
        locations = {"shard_paths": [(built / path.decode()).resolve() for path in items["shard_paths"]],
                     "shard": items["shard"], "offset": items["offset"]}
    prepared = np.load(files[PREPARED_NAME], mmap_mode="r", allow_pickle=False)
    vector_index = None
    if manifest["kind"] != "exact":
        from phases.retrieval.vector_index import VectorIndex

        vector_files = {name.removeprefix(f"{VECTORS_FOLDER}/"): entry["sha256"]
                        for name, entry in manifest["files"].items() if name.startswith(f"{VECTORS_FOLDER}/")}
        vector_index = VectorIndex.load(files[PREPARED_NAME].parent / VECTORS_FOLDER, vector_files)
    retrieval = RetrievalOptions.model_validate(manifest["retrieval"])
    whitening = Whitening.load(files[WHITENING_NAME], manifest["files"][WHITENING_NAME]["sha256"]) \
        if WHITENING_NAME in files else None
    return CatalogIndex(folder, manifest, image_ids, product_ids, product_names, prepared, vector_index, retrieval,
                        whitening, files[MODEL_NAME], model["sha256"], manifest["batch_size"],
                        manifest["test_time_augmentation"], locations)


def search_catalog(index: CatalogIndex, vectors: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query embedding's `top` best catalog rows (fewer when the catalog is smaller),
    best first, with their similarities: the run's retrieval on the prepared vectors, searched
    with the index's structure (`retrieve_prepared`)."""
    depth = min(top, len(index.prepared))
    search = None if index.vector_index is None else index.vector_index.search
    return retrieve_prepared(vectors, index.prepared, index.retrieval, index.whitening, depth, search=search)
