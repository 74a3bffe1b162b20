"""Cache keys: one digest of everything that decides a task's output.

A key covers the task's own config section, the content digest of what it reads
(the source listing, the data manifest, the parent phase's model sha256), the
package version, a digest of the code in `phases/` and `tfrecords/`, and the
run root it writes to. Not the run id: a new run of the same config finds the same
keys and reuses every finished task. The root is part of the key because two run
roots with the same config hold two copies of the outputs; a gs:// root is named by
its URL, so every machine (whatever its local mirror) computes the same keys.
"""

import hashlib
import json
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import phases
import tfrecords
from phases.config import NAMED_WEIGHTS, PipelineConfig
from pipeline.records import Work
from pipeline.storage import RunRoot, StorageSettings, is_remote, remote_ingested, source_listing_digest, stage_file
from tfrecords.files import sha256_file
from tfrecords.manifest import MANIFEST_NAME, ShardEntry
from tfrecords.sources import scan_source

DISTRIBUTION = "product-visual-search"


@cache
def code_digest() -> str:
    """sha256 over the Python files of `phases/` and `tfrecords/` (names and contents)."""
    digest = hashlib.sha256()
    for package in (phases, tfrecords):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{package.__name__}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@cache
def package_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def digest(kind: str, root: RunRoot, **parts) -> str:
    """The key of a task of `kind` writing under `root`, from JSON-able `parts`."""
    document = {
        "kind": kind,
        "folder": root.identity,
        "version": package_version(),
        "code": code_digest(),
        **parts,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def source_digest(source: str | Path) -> str:
    """What ingestion reads: each image's id, labels, split, size and modification time.

    Cheap (one stat per image, no decoding); an image edited in place changes its
    size or mtime, so the key changes and ingestion runs again (rewriting only the
    shards whose images changed)."""
    listing = hashlib.sha256()
    for image in scan_source(source):
        stat = image.path.stat()
        listing.update(f"{image.image_id}\0{image.product}\0{image.category}\0{image.split}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return listing.hexdigest()


@cache
def _file_sha256(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """sha256 of a local file, hashed once per state in a process (the change time moves on
    every write or rename, even one that restores the modification time, as `cp -p` does)."""
    return sha256_file(path)


def weights_digest(config: PipelineConfig) -> str | None:
    """sha256 of the `model.weights` file (None for 'imagenet' and 'none'): a file replaced
    in place under the same name is other weights, so every key that depends on them changes.
    A gs:// file is staged (downloaded only when its MD5 changed) and its copy hashed."""
    weights = config.model.weights
    if weights in NAMED_WEIGHTS:
        return None
    if is_remote(weights):
        return stage_file(weights, StorageSettings.of(config))[1]
    stat = Path(weights).stat()
    return _file_sha256(str(Path(weights).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def shared_settings(config: PipelineConfig) -> dict:
    """What every scored model depends on besides its own phase: model (and the weights
    file's content), inputs, runtime, evaluation."""
    return {
        "model": config.model.model_dump(),
        "weights_sha256": weights_digest(config),
        "inputs": config.data.model_dump(include={"image_size", "batch_size", "shuffle_buffer"}),
        "runtime": config.runtime.model_dump(),
        "evaluation": config.evaluation.model_dump(exclude={"extraction_concurrency"}),  # how fast, not what
    }


def ingestion_work(config: PipelineConfig, root: RunRoot) -> Work:
    """Ingestion writes RUN_DIR/data (one copy of the shards per run root, resumed in
    place); an already ingested source is only verified and recorded there (a gs://
    one is staged there, or with `storage.read_shards: direct` only its manifest). A gs://
    source is known by its listing (names, sizes, MD5s)."""
    source = config.data.source
    if is_remote(source):
        read = {"remote": source_listing_digest(source)}
        if not remote_ingested(source):
            read["options"] = config.data.ingest.model_dump()
        elif config.storage.read_shards == "direct":
            read["read_shards"] = "direct"  # the folder holds the manifest and where the shards are, not the shards
    elif (Path(source) / MANIFEST_NAME).is_file():
        read = {"ingested": sha256_file(Path(source) / MANIFEST_NAME)}
    else:
        read = {"source": source_digest(source), "options": config.data.ingest.model_dump()}
    return Work("ingest", digest("ingest", root, **read), root.local / "data")


def baseline_work(config: PipelineConfig, root: RunRoot, data: dict) -> Work:
    key = digest("baseline", root, data=data["manifest_sha256"], settings=shared_settings(config))
    return Work("baseline", key, root.local / "phases" / f"00-baseline-{key[:12]}")


def phase_work(config: PipelineConfig, root: RunRoot, number: int, data: dict, previous: dict | None) -> Work:
    """Phase `number` (1-based): its config, the model it starts from, the shared settings, the data."""
    phase = config.phases[number - 1]
    key = digest(
        "phase",
        root,
        phase=phase.model_dump(),
        number=number,
        parent=previous["model_sha256"] if previous else None,
        settings=shared_settings(config),
        data=data["manifest_sha256"],
    )
    return Work(phase.name, key, root.local / "phases" / f"{number:02d}-{phase.name}-{key[:12]}")


def extraction_work(config: PipelineConfig, root: RunRoot, data: dict, final: dict) -> Work:
    """The extraction's last step: the embedding shards merged, the submission and the scores."""
    key = digest("extraction", root, model=final["model_sha256"], settings=shared_settings(config), data=data["manifest_sha256"])
    return Work("extraction", key, root.local / f"extraction-{key[:12]}")


def vector_settings(config: PipelineConfig) -> dict:
    """What an image's embedding depends on besides the model file: the model config, the
    image size, the inference batch and the runtime (precision, determinism, ...)."""
    return {
        "model": config.model.model_dump(),
        "image_size": config.data.image_size,
        "batch_size": config.evaluation.batch_size,
        "runtime": config.runtime.model_dump(),
    }


def shard_work(config: PipelineConfig, root: RunRoot, shard: ShardEntry, final: dict) -> Work:
    """The embeddings of one image shard of the final split: RUN_DIR/embeddings/<shard>-<key>,
    outside the extraction's folder: the same final model reuses them whatever else changed
    (the evaluation's other options, another shard of the split), a new one reuses none."""
    key = digest("embed_shard", root, shard=shard.sha256, set=shard.split, model=final["model_sha256"],
                 settings=vector_settings(config))
    stem = shard.file.removesuffix(".tfrecord")
    return Work(f"embed {stem}", key, root.local / "embeddings" / f"{stem}-{key[:12]}")
