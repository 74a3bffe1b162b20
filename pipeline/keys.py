"""Cache keys: one digest of everything that decides a step's output.

A key covers the step kind and its version (`STEP_VERSIONS`), the step's own config
section, the content digest of what it reads (the source listing, the data manifest, the
parent phase's model sha256: fields of `pipeline/steps.py`'s outputs), and the run root it
writes to. Not the code: a comment edit or an upgrade that leaves a step's output alone
keeps every finished step, and an unfinished phase resumes from its checkpoints; a change
that alters what a step writes raises that step's version. Not the run id: a new run of
the same config finds the same keys and reuses every finished step. The root is part of
the key because two run roots with the same config hold two copies of the outputs; a gs://
root is named by its URL, so every machine (whatever its local mirror) computes the same keys.

Each part of a key is digested on its own and kept in the step's record (`key_parts`), so
that a later run can say which part changed (`reasons.py`).
"""

import hashlib
import json
from functools import cache
from pathlib import Path

from phases.config import NAMED_WEIGHTS, PipelineConfig
from pipeline.records import Work
from pipeline.steps import IngestedData, ModelFile, ShardEmbeddings
from pipeline.storage.remote import is_remote
from pipeline.storage.run_store import RunRoot
from pipeline.storage.shard_cache import StorageSettings
from pipeline.storage.staging import remote_ingested, source_listing_digest, stage_file
from tfrecords.files import sha256_file
from tfrecords.manifest import MANIFEST_NAME, ShardEntry
from tfrecords.sources import scan_source

# One version per step kind. Raise a step's version in the same commit as any change that
# alters what the step writes (its files or its record's output), e.g. another shard
# layout, a fixed bug in a loss, another scoring rule; a comment, a refactoring or a speed-up
# that writes the same bytes keeps it. Raising one reruns that step and every step after it
# (their keys hold its output's digests). tests/test_step_versions.py fails when a step's
# output changes and its version does not (`tests/step_fingerprints.json`).
STEP_VERSIONS = {
    "ingest": 1,  # the shards and manifest.json (tfrecords/: ingest, shard_writer, record_format, splits, images)
    "baseline": 2,  # the untrained model's score row (phases/: model, scoring, metrics, the reader); 2: final split's too
    "phase": 1,  # a phase's checkpoints (their format too: a resumed phase reads them), models and score rows
    "embed_shard": 1,  # one image shard's embeddings by the final model (phases/extraction.py, tfrecords/embeddings.py)
    "extraction": 1,  # the merged embeddings, submission.csv and the final split's scores
    "catalog_index": 1,  # a catalog index's assembled folder (pipeline/catalog/assemble.py, phases/retrieval/vector_index.py)
}


def part_digest(value) -> str:
    """sha256 of a JSON-able value (keys sorted; paths and other objects as text)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def step_key(kind: str, root: RunRoot, parts: dict[str, str]) -> str:
    """The key of a step of `kind` writing under `root`, from its parts' digests."""
    return part_digest({"kind": kind, "version": STEP_VERSIONS[kind], "folder": root.identity, "parts": parts})


def make_work(kind: str, root: RunRoot, name: str, folder, **parts) -> Work:
    """The Work of a step of `kind`: its key from `parts` (JSON-able values), its folder
    `folder(key)`."""
    digests = {part: part_digest(value) for part, value in parts.items()}
    key = step_key(kind, root, digests)
    return Work(name, key, folder(key), kind, STEP_VERSIONS[kind], digests)


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


def runtime_settings(config: PipelineConfig) -> dict:
    """The runtime section as far as it decides what a model computes: all of it but
    `checkpoint_every` (how often a phase saves, not what it trains)."""
    return config.runtime.model_dump(exclude={"checkpoint_every"})


def shared_settings(config: PipelineConfig) -> dict:
    """What every scored model depends on besides its own phase: model (and the weights
    file's content), inputs, runtime, evaluation."""
    return {
        "model": config.model.model_dump(),
        "weights_sha256": weights_digest(config),
        "inputs": config.data.model_dump(include={"image_size", "batch_size", "shuffle_buffer"}),
        "runtime": runtime_settings(config),
        "evaluation": config.evaluation.model_dump(exclude={"extraction_concurrency"}),  # how fast, not what
    }


def ingestion_work(config: PipelineConfig, root: RunRoot, folder: Path | None = None, name: str = "ingest") -> Work:
    """Ingestion writes RUN_DIR/data (one copy of the shards per run root, resumed in
    place); an already ingested source is only verified and recorded there (a gs://
    one is staged there, or with `storage.read_shards: direct` only its manifest). A gs://
    source is known by its listing (names, sizes, MD5s). A catalog index ingests each of its
    sources into a `folder` of its own."""
    source = config.data.source
    if is_remote(source):
        parts = {"remote": source_listing_digest(source)}
        if not remote_ingested(source):
            parts["options"] = config.data.ingest.model_dump()
        elif config.storage.read_shards == "direct":
            parts["read_shards"] = "direct"  # the folder holds the manifest and where the shards are, not the shards
    elif (Path(source) / MANIFEST_NAME).is_file():
        parts = {"ingested": sha256_file(Path(source) / MANIFEST_NAME)}
    else:
        parts = {"source": source_digest(source), "options": config.data.ingest.model_dump()}
    return make_work("ingest", root, name, lambda key: folder or root.local / "data", **parts)


def baseline_work(config: PipelineConfig, root: RunRoot, data: IngestedData) -> Work:
    return make_work("baseline", root, "baseline", lambda key: root.local / "phases" / f"00-baseline-{key[:12]}",
                     data=data.manifest_sha256, settings=shared_settings(config))


def phase_work(config: PipelineConfig, root: RunRoot, number: int, data: IngestedData, previous: ModelFile | None) -> Work:
    """Phase `number` (1-based): its config, the model it starts from (`previous`, the
    phase before's model), the shared settings, the data."""
    phase = config.phases[number - 1]
    return make_work(
        "phase", root, phase.name, lambda key: root.local / "phases" / f"{number:02d}-{phase.name}-{key[:12]}",
        phase=phase.model_dump(),
        number=number,
        parent=previous.sha256 if previous else None,
        settings=shared_settings(config),
        data=data.manifest_sha256,
    )


def extraction_work(config: PipelineConfig, root: RunRoot, data: IngestedData, final: ModelFile,
                    shards: list[ShardEmbeddings]) -> Work:
    """The extraction's last step: the embedding shards merged, the submission and the scores.
    `shards` (their manifests' digests) are in its key: embeddings made anew (a raised
    `embed_shard` version) are merged anew."""
    return make_work("extraction", root, "extraction", lambda key: root.local / f"extraction-{key[:12]}",
                     model=final.sha256, settings=shared_settings(config), data=data.manifest_sha256,
                     shards=[shard.manifest_sha256 for shard in shards])


def vector_settings(config: PipelineConfig) -> dict:
    """What an image's embedding depends on besides the model file: the model config, the
    image size, the inference batch, the test-time augmentation (the views averaged) and the
    runtime (precision, determinism, ...)."""
    return {
        "model": config.model.model_dump(),
        "image_size": config.data.image_size,
        "batch_size": config.evaluation.batch_size,
        "test_time_augmentation": config.evaluation.test_time_augmentation,
        "runtime": runtime_settings(config),
    }


def shard_work(config: PipelineConfig, root: RunRoot, shard: ShardEntry, final: ModelFile) -> Work:
    """The embeddings of one image shard of the final split: RUN_DIR/embeddings/<shard>-<key>,
    outside the extraction's folder: the same final model reuses them whatever else changed
    (the evaluation's other options, another shard of the split), a new one reuses none."""
    stem = shard.file.removesuffix(".tfrecord")
    return make_work("embed_shard", root, f"embed {stem}", lambda key: root.local / "embeddings" / f"{stem}-{key[:12]}",
                     shard=shard.sha256, set=shard.split, model=final.sha256, settings=vector_settings(config))
