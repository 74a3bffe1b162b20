"""`pvs search`: the index items most similar to images, found with a run's final model.

    pvs search --run runs/demo runs/demo/images/box/p0016/shot02.jpg --top 5 --sheet sheet.png

The index searched is what the run's extraction embedded: the index images of its final
split (`test`, else `val`; `RUN_DIR/run.json` names it), not its queries and not train.
Images given by the user go through the evaluation's preprocessing (`tfrecords.preprocess.
prepare`: decode, turn upright by its EXIF orientation, pad to square, resize) and the final model, loaded in Keras safe mode
after its sha256 is checked against run.json; similarity is the cosine, as in scoring.
A query's true product is known when its path ends with the image id of an image of the
final split (e.g. a file of the run's own image folder): its matches are then marked.
"""

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from phases.metrics import nearest_neighbours
from pipeline.reports import png_markdown
from pipeline.run_root import CONFIG_NAME, recorded_config, recorded_path, run_command
from pipeline.sheets import Cell, write_sheet
from tfrecords.embeddings import EmbeddingArrays, load_embeddings
from tfrecords.errors import ImageError, UserError
from tfrecords.images import check_image, image_format, orientation
from tfrecords.manifest import MANIFEST_NAME, EmbeddingManifest, ImageManifest, read_manifest, shard_problem
from tfrecords.options import IngestOptions

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
MAX_IMAGE_PIXELS = IngestOptions.model_fields["max_image_pixels"].default  # ingestion's limit, by default
SHEET_QUERIES = 4  # queries on the sheet a run draws at its end
SHEET_TOP = 5


class RunNotSearchableError(UserError):
    """A folder that is not a finished run: no run.json, or its model or embeddings missing or altered."""


@dataclass
class Query:
    """An image to search for: `name` is its path or image id; `source` its file or its bytes;
    `product_id` its true product when known (an image of the run's final split)."""

    name: str
    source: Path | bytes
    product_id: int | None = None

    def encoded(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else self.source.read_bytes()


@dataclass
class Match:
    rank: int  # 1 = nearest
    score: float  # cosine similarity, in [-1, 1]
    image_id: str
    product_id: int


@dataclass
class SearchIndex:
    """The final split's index embeddings of a run, with the names of their products and
    the product of every image id of the split (query and index), for marking matches."""

    split: str
    data_dir: Path
    items: EmbeddingArrays
    product_names: dict[int, str]
    products_by_image: dict[str, int]


@dataclass
class FinishedRun:
    """A run's index, and the final model (with its recorded sha256) that embeds queries for it."""

    index: SearchIndex
    model_path: Path
    model_sha256: str
    batch_size: int


def open_index(embeddings_dir: Path, split: str, data_dir: Path, finish_hint: str = "") -> SearchIndex:
    """The index of `split` in an extraction's `embeddings_dir`, shards checked by sha256."""
    manifest = read_manifest(embeddings_dir, EmbeddingManifest)
    for shard in manifest.shards:
        problem = shard_problem(embeddings_dir, shard)
        if problem:
            raise RunNotSearchableError(f"{embeddings_dir / shard.file}: {problem}; {finish_hint or 'extract again'}")
    items = load_embeddings(embeddings_dir, f"{split}_index", verify=False)
    queries = load_embeddings(embeddings_dir, f"{split}_query", verify=False)
    products = read_manifest(data_dir, ImageManifest).products
    known = {
        image_id.decode(): int(product)
        for part in (items, queries)
        for image_id, product in zip(part.image_ids, part.product_ids)
    }
    return SearchIndex(split, data_dir, items, {number: name for name, number in products.items()}, known)


def open_run(run_dir: Path) -> FinishedRun:
    """What `pvs search` needs of a run folder, or a RunNotSearchableError saying how to finish it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunNotSearchableError(
            f"{run_dir}: no such folder; give a run folder written by `pvs run` (e.g. runs/demo)"
        )
    if not (run_dir / "run.json").is_file() and not (run_dir / CONFIG_NAME).is_file():
        raise RunNotSearchableError(
            f"{run_dir}: not a run folder (no run.json or {CONFIG_NAME}); give a folder written by `pvs run`"
        )
    settings = recorded_config(run_dir)
    finish = f"finish the run with {run_command(run_dir)}"
    try:
        summary = json.loads((run_dir / "run.json").read_text())
        model_path, embeddings_dir = (recorded_path(summary[key], summary, run_dir) for key in ("final_model", "embeddings"))
        model_sha256, split = summary["final_model_sha256"], summary["final_split"]
    except (OSError, ValueError, KeyError):
        raise RunNotSearchableError(
            f"{run_dir}: the run has not finished its extraction (run.json, written at its end, is missing or "
            f"incomplete); {finish}"
        ) from None
    if not (embeddings_dir / MANIFEST_NAME).is_file():
        raise RunNotSearchableError(
            f"{run_dir}: the run's embeddings {embeddings_dir} are missing, so the run has not finished its "
            f"extraction; {finish}"
        )
    if not model_path.is_file():
        raise RunNotSearchableError(f"{run_dir}: the run's final model {model_path} is missing; {finish}")
    if read_manifest(embeddings_dir, EmbeddingManifest).metadata.get("model_sha256") != model_sha256:
        raise RunNotSearchableError(
            f"{embeddings_dir}: computed by another model than run.json's final model; {finish}"
        )
    index = open_index(embeddings_dir, split, _data_dir(run_dir), finish)
    batch_size = settings.get("config", {}).get("evaluation", {}).get("batch_size", 64)
    return FinishedRun(index, model_path, model_sha256, batch_size)


def _data_dir(run_dir: Path) -> Path:
    """The run's ingested images: RUN_DIR/data, or the already ingested source its ingestion recorded."""
    folder = run_dir / "data"
    try:
        manifest = json.loads((folder / "result.json").read_text())["files"]["manifest"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return folder
    return (folder / manifest).resolve().parent


def find_images(path: Path) -> list[Path]:
    """`path` itself when it is a file; else every image under it (by suffix or content,
    hidden files and folders left out), recursively, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ImageError(f"{path}: no such file or folder; give an image or a folder of images")
    images = sorted(
        file for file in path.rglob("*")
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(path).parts) and _is_image(file)
    )
    if not images:
        raise ImageError(f"{path}: no JPEG or PNG images in this folder or below it")
    return images


def _is_image(file: Path) -> bool:
    if file.suffix.lower() in IMAGE_SUFFIXES:
        return True
    with open(file, "rb") as handle:
        return image_format(handle.read(8)) is not None


def read_queries(paths: list[Path], index: SearchIndex) -> list[Query]:
    """Queries of image files, each checked to decode (ImageError naming the first that does not)."""
    queries = []
    for path in paths:
        reason = check_image(path.read_bytes(), MAX_IMAGE_PIXELS).reason
        if reason:
            raise ImageError(f"{path}: {reason}; give JPEG or PNG images")
        queries.append(Query(str(path), path, _known_product(path, index.products_by_image)))
    return queries


def _known_product(path: Path, products_by_image: dict[str, int]) -> int | None:
    """The product of the image id that `path` ends with (longest first), if any."""
    parts = path.resolve().parts
    for start in range(len(parts)):
        product = products_by_image.get(PurePosixPath(*parts[start:]).as_posix())
        if product is not None:
            return product
    return None


def embed(run: FinishedRun, queries: list[Query]) -> np.ndarray:
    """Embeddings [n, dim] of the queries by the run's final model (sha256 checked, safe mode)."""
    from phases.checkpoints import load_model

    model = load_model(run.model_path, run.model_sha256, compile=False)
    vectors = []
    for batch in query_images(queries, model.input_shape[1]).batch(run.batch_size):
        # Called eagerly, not through predict: tracing EfficientNet costs more seconds than a
        # search of a few images takes, and the model's output is the same.
        output = model(batch, training=False)
        vectors.append(np.asarray(output[0] if isinstance(output, (list, tuple)) else output, dtype=np.float32))
    return np.concatenate(vectors)


def query_images(queries: list[Query], size: int):
    """The queries as the model sees them, in order: a tf.data.Dataset of float32 [size, size, 3]
    in [0, 255], prepared as the reader prepares index images (`tfrecords.preprocess.prepare`,
    upright by the EXIF orientation read from each file's bytes)."""
    import tensorflow as tf

    from tfrecords.preprocess import prepare

    def encoded():
        for query in queries:
            data = query.encoded()
            yield data, orientation(data)

    signature = (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64))
    return tf.data.Dataset.from_generator(encoded, output_signature=signature).map(
        lambda data, exif_orientation: prepare(data, size, exif_orientation))


def search(index: SearchIndex, vectors: np.ndarray, top: int) -> list[list[Match]]:
    """Each query's `top` nearest index items (fewer when the index is smaller), nearest first."""
    positions, similarities = nearest_neighbours(vectors, index.items.vectors, k=min(top, len(index.items.vectors)))
    return [
        [Match(rank, float(score), index.items.image_ids[position].decode(), int(index.items.product_ids[position]))
         for rank, (position, score) in enumerate(zip(row, scores), start=1)]
        for row, scores in zip(positions, similarities)
    ]


def render(queries: list[Query], results: list[list[Match]], index: SearchIndex) -> str:
    """The printed result: per query a header line, then `rank  score  image_id  product_id`
    lines; `*` marks a match of the query's product when it is known."""
    blocks = []
    for query, matches in zip(queries, results):
        known = ""
        if query.product_id is not None:
            known = f" (product {index.product_names[query.product_id]}; * marks its matches)"
        width = max(len(match.image_id) for match in matches)
        lines = [f"query {query.name}{known}"]
        for match in matches:
            mark = "  *" if match.product_id == query.product_id else ""
            product = index.product_names[match.product_id]
            lines.append(f"{match.rank:>4}  {match.score:6.4f}  {match.image_id:<{width}}  {product}{mark}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


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


def write_run_sheet(out: Path, embeddings_dir: Path, split: str, data_dir: Path) -> Path:
    """The sheet a run draws at its end: its first SHEET_QUERIES queries of `split` (by image
    id) searched with their extracted embeddings, so it shows what the submission ranked."""
    index = open_index(embeddings_dir, split, data_dir)
    stored = load_embeddings(embeddings_dir, f"{split}_query", verify=False)
    order = np.argsort(stored.image_ids, kind="stable")[:SHEET_QUERIES]
    ids = [stored.image_ids[row].decode() for row in order]
    encoded = index_images(index, set(ids), f"{split}_query")
    queries = [Query(image_id, encoded[image_id], int(stored.product_ids[row])) for image_id, row in zip(ids, order)]
    return draw(out, queries, search(index, stored.vectors[order], SHEET_TOP), index)


def sheet_markdown(title: str, sheet: Path) -> str:
    """The run's markdown artifact of its sheet, the image embedded as a data URI."""
    return (
        f"# {title}\n\n{png_markdown('search sheet', sheet)}\n\n"
        f"One row per query (the first {SHEET_QUERIES} by image id), then its {SHEET_TOP} nearest index images "
        "with rank, cosine similarity and product: green the query's product, red another.\n"
    )
