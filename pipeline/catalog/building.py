"""The steps of the `catalog-index` flow (flows.py): each source ingested, each of its image
shards embedded by the run's final model (the training flow's `embed_shard` task, cached
by the shard's and the model's digests), then the index assembled and index.json written.

    INDEX/request.json              what to build: the run, the sources, the settings (kept for add and update)
    INDEX/sources/NN/               source NN ingested (an ingested source is only recorded there)
    INDEX/embeddings/<shard>-<key>/ one image shard's embeddings
    INDEX/built-<key>/              the assembled index (assemble.py); older ones are removed once index.json names the new one
    INDEX/index.json                written last: index.py reads it
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger

from phases.config import PipelineConfig
from pipeline import keys
from pipeline.catalog.assemble import EmbeddedShard, assemble
from pipeline.catalog.index import INDEX_NAME, read_index_manifest, write_index_manifest
from pipeline.catalog.settings import CatalogSettings
from pipeline.records import Record, Work, write_record
from pipeline.running import embed_shard_jobs, run_step
from pipeline.search import RunModel
from pipeline.steps import IngestedData, ModelFile, ShardEmbeddings
from pipeline.storage.run_store import RunRoot
from pipeline.tasks import cached_task, ingest_data
from tfrecords.files import write_text_atomic
from tfrecords.manifest import ImageManifest, read_manifest

REQUEST_NAME = "request.json"


@dataclass(frozen=True)
class CatalogRequest:
    """What an index folder is built from: the run folder, its sources (paths or URLs, in
    order) and the settings. Saved as INDEX/request.json: `pvs index add` and `update` read it."""

    run_dir: str
    sources: tuple[str, ...]
    settings: CatalogSettings

    def save(self, folder: Path) -> None:
        record = {"run_dir": self.run_dir, "sources": list(self.sources), "settings": self.settings.model_dump()}
        write_text_atomic(Path(folder) / REQUEST_NAME, json.dumps(record, indent=1))

    @classmethod
    def load(cls, folder: Path) -> "CatalogRequest | None":
        try:
            record = json.loads((Path(folder) / REQUEST_NAME).read_text())
        except (OSError, ValueError):
            return None
        return cls(record["run_dir"], tuple(record["sources"]), CatalogSettings.model_validate(record["settings"]))


@dataclass(frozen=True)
class CatalogAssembly:
    """The assembled index: its folder's files (name -> path, sha256) and facts (count, recall, ...)."""

    folder: Path
    files: dict[str, tuple[Path, str]]
    facts: dict

    @classmethod
    def from_record(cls, record: Record) -> "CatalogAssembly":
        files = {name: (entry.path, entry.sha256) for name, entry in record.files.items()}
        return cls(files["items.npz"][0].parent, files, record.output)


@cached_task(CatalogAssembly)
def assemble_index(work: Work, shards: list[EmbeddedShard], run: RunModel, settings: CatalogSettings,
                   previous: Path | None) -> CatalogAssembly:
    """The catalog's embedded shards gathered into `work.folder` (assemble.py)."""
    assembly = assemble(shards, run.model_path, run.retrieval, run.whitening_path, run.whitening_sha256, settings,
                        work.folder, previous if previous != work.folder else None)
    facts = assembly.facts
    recall = f", recall@10 {facts['recall_at_10']:.4f} against the exact search" if facts["recall_at_10"] is not None else ""
    get_run_logger().info(f"index: {facts['count']} images of {facts['products']} products, {facts['kind']} "
                          f"({facts['mode']}){recall}")
    return CatalogAssembly.from_record(write_record(work.folder, work.key, facts, assembly.files, work.version,
                                                    work.key_parts))


def source_config(config: PipelineConfig, source: str) -> PipelineConfig:
    """The run's config reading `source`: its images ingested whole (no val or test share:
    a catalog is one set), with the run's other ingestion options; an ingested gs:// or s3://
    source staged on local disk (`storage.read_shards: stage`), where the index reads each
    image's record for its thumbnail."""
    ingest = config.data.ingest.model_copy(update={"val_fraction": 0.0, "test_fraction": 0.0})
    storage = config.storage.model_copy(update={"read_shards": "stage"})
    data = config.data.model_copy(update={"source": source, "ingest": ingest})
    return config.model_copy(update={"data": data, "storage": storage})


def build_catalog(request: CatalogRequest, run: RunModel, config: PipelineConfig, root: RunRoot, forced: set[str]) -> dict:
    """Every step of a build into `root`; returns index.json's content."""
    logger = get_run_logger()
    final = ModelFile(run.model_path, run.model_sha256)
    jobs, sources = [], []
    for number, source in enumerate(request.sources, start=1):
        inputs = source_config(config, source)
        work = keys.ingestion_work(inputs, root, root.local / "sources" / f"{number:02d}", f"ingest source {number}")
        data: IngestedData = run_step(ingest_data, work, forced, root, config=inputs)
        manifest = read_manifest(data.data_dir, ImageManifest)
        sources.append({"source": source, "images": sum(manifest.counts.values()), "data": str(data.data_dir)})
        for shard in manifest.shards:
            jobs.append((keys.shard_work(config, root, shard, final), data, shard))
    outputs, computed = embed_shard_jobs(config, root, "embed" in forced, final, jobs,
                                         config.evaluation.extraction_concurrency)
    logger.info(f"embeddings: {len(jobs)} image shard(s): {len(jobs) - computed} reused, {computed} computed")
    shards = [EmbeddedShard(number, data.data_dir, data.data_dir / shard.file, output.folder, output.split)
              for (_, data, shard), output, number in zip(jobs, outputs, _source_numbers(jobs, sources))]
    previous = _previous_assembly(root.local)
    work = catalog_work(config, root, request.settings, run, outputs)
    assembly: CatalogAssembly = run_step(assemble_index, work, forced, root, shards=shards, run=run,
                                         settings=request.settings, previous=previous)
    manifest = {
        "run": str(run.run_dir), "model": _entry(root.local, *assembly.files["model.keras"]),
        "image_size": run.image_size, "batch_size": run.batch_size, "test_time_augmentation": run.test_time_augmentation,
        "retrieval": run.retrieval.model_dump(), "built": assembly.folder.name,
        **{name: assembly.facts[name] for name in ("kind", "parameters", "count", "dim", "products", "recall_at_10",
                                                    "recall_queries", "mode", "seconds")},
        "sources": [{"source": entry["source"], "images": entry["images"]} for entry in sources],
        "files": {name: _entry(root.local, path, sha256) for name, (path, sha256) in assembly.files.items()},
    }
    write_index_manifest(root.local, manifest)
    for stale in root.local.glob("built-*"):  # earlier assemblies: index.json no longer names them
        if stale.is_dir() and stale != assembly.folder:
            shutil.rmtree(stale)
    return manifest


def catalog_work(config: PipelineConfig, root: RunRoot, settings: CatalogSettings, run: RunModel,
                 shards: list[ShardEmbeddings]) -> Work:
    """The assembly: its shards (their manifests' digests, in order), the model, the retrieval and the settings."""
    return keys.make_work("catalog_index", root, "index", lambda key: root.local / f"built-{key[:12]}",
                          shards=[shard.manifest_sha256 for shard in shards], model=run.model_sha256,
                          retrieval=run.retrieval.model_dump(), settings=settings.model_dump(),
                          whitening=run.whitening_sha256,
                          vectors=keys.vector_settings(config))


def _source_numbers(jobs, sources) -> list[int]:
    data_dirs = [entry["data"] for entry in sources]
    return [data_dirs.index(str(data.data_dir)) + 1 for _, data, _ in jobs]


def _previous_assembly(folder: Path) -> Path | None:
    """The assembled folder the index's current index.json names, if any."""
    if not (folder / INDEX_NAME).is_file():
        return None
    from pipeline.catalog.index import CatalogIndexError

    try:
        built = folder / read_index_manifest(folder)["built"]
    except (CatalogIndexError, KeyError, TypeError):  # an unreadable or older index: built anew
        return None
    return built if built.is_dir() else None


def _entry(root: Path, path: Path, sha256: str) -> dict:
    return {"path": Path(path).resolve().relative_to(root.resolve()).as_posix(), "sha256": sha256}


def resolve_request(index_dir: Path, run_dir: str | None, sources: list[str] | None, settings: dict | None,
                    add: bool) -> CatalogRequest:
    """The request of a build (`run_dir` and `sources` given), an addition (`add`: the
    index's request with `sources` appended) or an update (neither: the index's request).
    A folder built with another run's model is refused: its embeddings cannot be mixed."""
    from pipeline.catalog.index import CatalogIndexError

    existing = CatalogRequest.load(index_dir)
    if (add or not sources) and existing is None:
        raise CatalogIndexError(f"{index_dir}: no index was built here (no {REQUEST_NAME}); build one first: "
                                f"`pvs index build --run RUN SOURCE --out {index_dir}`")
    if not add and sources:
        request = CatalogRequest(str(run_dir), tuple(sources), CatalogSettings.model_validate(settings or {}))
    elif add:
        added = tuple(source for source in sources or () if source not in existing.sources)
        request = CatalogRequest(existing.run_dir, existing.sources + added, existing.settings)
    else:
        request = existing
    if existing is not None and (add or sources):
        _check_same_model(index_dir, existing.run_dir, run_dir or existing.run_dir)
    return request


def _check_same_model(index_dir: Path, recorded_run: str, run_dir: str) -> None:
    from pipeline.catalog.index import CatalogIndexError
    from pipeline.search import open_run_model

    if not (Path(index_dir) / INDEX_NAME).is_file():
        return  # nothing built yet: any run may (re)start it
    built = read_index_manifest(index_dir)["model"]["sha256"]
    model = open_run_model(Path(run_dir)).model_sha256
    if model != built:
        raise CatalogIndexError(
            f"{index_dir}: built with the final model {built[:12]} of {recorded_run}; {run_dir}'s final model is "
            f"{model[:12]}: one index holds the embeddings of one model. Give another --out, or delete {index_dir}")
