"""`pvs search`: the index items most similar to images, found with a run's final model.

    pvs search --run runs/demo runs/demo/images/box/p0016/shot02.jpg --top 5 --sheet sheet.png

The index searched is what the run's extraction embedded: the index images of its final
split (`test`, else `val`; `RUN_DIR/run.json` names it), not its queries and not train.
Images given by the user go through the evaluation's preprocessing (`tfrecords.preprocess.
prepare`: decode, turn upright by its EXIF orientation, pad to square, resize) and the final model, loaded in Keras safe mode
after its sha256 is checked against run.json, with the run's test-time augmentation
(`evaluation.test_time_augmentation`, as its index was embedded); the index is searched as
the run retrieved when it scored (`evaluation.retrieval`: its whitening, saved by the
extraction, query expansion, re-ranking), so similarity is the cosine, as in scoring.
A query's true product is known when its path ends with the image id of an image of the
final split (e.g. a file of the run's own image folder): its matches are then marked.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from phases.retrieval import RetrievalOptions, Whitening, retrieve
from pipeline.run_root import CONFIG_NAME, recorded_config, recorded_path, run_command
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
    score: float  # cosine similarity of the query and the item as retrieved (whitened, expanded), in [-1, 1]
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
    # How the run retrieves (`evaluation.retrieval`) and the whitening its extraction learned.
    retrieval: RetrievalOptions = field(default_factory=RetrievalOptions)
    whitening: Whitening | None = None


@dataclass
class FinishedRun:
    """A run's index, and the final model (with its recorded sha256) that embeds queries for it."""

    index: SearchIndex
    model_path: Path
    model_sha256: str
    batch_size: int
    test_time_augmentation: str  # `evaluation.test_time_augmentation` of the run


def open_index(embeddings_dir: Path, split: str, data_dir: Path, finish_hint: str = "",
               retrieval: RetrievalOptions | None = None, whitening: Whitening | None = None) -> SearchIndex:
    """The index of `split` in an extraction's `embeddings_dir`, shards checked by sha256,
    searched with `retrieval` (and its `whitening`) as the run's scores and submission were."""
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
    return SearchIndex(split, data_dir, items, {number: name for name, number in products.items()}, known,
                       retrieval or RetrievalOptions(), whitening)


@dataclass
class RunModel:
    """What a finished run embeds and retrieves with: its final model (recorded sha256), its
    config's evaluation (batch, test-time augmentation, retrieval) and the whitening its
    extraction learned; and where its embeddings are, of which split."""

    run_dir: Path
    config: dict  # the run's resolved config, as run-config.yaml records it
    model_path: Path
    model_sha256: str
    batch_size: int
    test_time_augmentation: str  # `evaluation.test_time_augmentation` of the run
    retrieval: RetrievalOptions
    whitening: Whitening | None
    whitening_path: Path | None
    whitening_sha256: str | None  # as run.json records it (Whitening.load checked it)
    embeddings_dir: Path
    split: str

    @property
    def image_size(self) -> int:
        return self.config.get("data", {}).get("image_size", 224)


def open_run_model(run_dir: Path) -> RunModel:
    """A finished run's model and retrieval settings (files checked), or a RunNotSearchableError
    saying how to finish it. Reads no embeddings."""
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
    config = settings.get("config", {})
    evaluation = config.get("evaluation", {})
    retrieval = RetrievalOptions.model_validate(evaluation.get("retrieval") or {})  # absent: recorded before it existed
    whitening = whitening_path = whitening_sha256 = None
    if retrieval.whitening is not None:
        if not summary.get("whitening"):
            raise RunNotSearchableError(f"{run_dir}: run.json names no whitening, which its config asks for; {finish}")
        whitening_path = recorded_path(summary["whitening"], summary, run_dir)
        whitening_sha256 = summary["whitening_sha256"]
        whitening = Whitening.load(whitening_path, whitening_sha256)
    # Runs recorded before the setting existed embedded without test-time augmentation.
    return RunModel(run_dir, config, model_path, model_sha256, evaluation.get("batch_size", 64),
                    evaluation.get("test_time_augmentation", "none"), retrieval, whitening, whitening_path,
                    whitening_sha256, embeddings_dir, split)


def open_run(run_dir: Path) -> FinishedRun:
    """What `pvs search` needs of a run folder, or a RunNotSearchableError saying how to finish it."""
    model = open_run_model(run_dir)
    finish = f"finish the run with {run_command(model.run_dir)}"
    index = open_index(model.embeddings_dir, model.split, _data_dir(model.run_dir), finish, model.retrieval,
                       model.whitening)
    return FinishedRun(index, model.model_path, model.model_sha256, model.batch_size, model.test_time_augmentation)


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
        check_query(path)
        queries.append(Query(str(path), path, _known_product(path, index.products_by_image)))
    return queries


def check_query(path: Path) -> None:
    """An ImageError unless the file is an image that decodes within the pixel limit."""
    reason = check_image(path.read_bytes(), MAX_IMAGE_PIXELS).reason
    if reason:
        raise ImageError(f"{path}: {reason}; give JPEG or PNG images")


def _known_product(path: Path, products_by_image: dict[str, int]) -> int | None:
    """The product of the image id that `path` ends with (longest first), if any."""
    parts = path.resolve().parts
    for start in range(len(parts)):
        product = products_by_image.get(PurePosixPath(*parts[start:]).as_posix())
        if product is not None:
            return product
    return None


def embed(run: FinishedRun, queries: list[Query]) -> np.ndarray:
    """Embeddings [n, dim] of the queries by the run's final model (sha256 checked, safe mode),
    with the run's test-time augmentation, as the extraction embedded its index."""
    from phases.checkpoints import load_model
    from phases.views import embed_views

    model = load_model(run.model_path, run.model_sha256, compile=False)
    vectors = []
    for batch in query_images(queries, model.input_shape[1]).batch(run.batch_size):
        # Called eagerly, not through predict: tracing EfficientNet costs more seconds than a
        # search of a few images takes, and the model's output is the same.
        vectors.append(embed_views(model, batch, run.test_time_augmentation, eager=True)[0])
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
    """Each query's `top` best index items (fewer when the index is smaller), best first, as
    the run retrieves (`phases.retrieval.retrieve`: its post-processing, as it was scored)."""
    depth = min(top, len(index.items.vectors))
    positions, similarities = retrieve(vectors, index.items.vectors, index.retrieval, index.whitening, depth)
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
